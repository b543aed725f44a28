"""L2-regularised logistic regression solved exactly, by Newton's method: the ``"logreg"`` probe's solver.

The objective is scikit-learn's ``LogisticRegression(C=C)``: ``C · Σ cross-entropy + ½‖W‖²`` over the
classes present (intercepts unpenalised), multinomial with one weight vector per class, or the
binary logistic with one vector when two classes are present. It is strictly convex in ``W``, so it
has one minimiser; the solver only decides how close to it a fit ends.

Probe activations are badly conditioned (residual norms in the tens, near-separable classes), and there
scikit-learn's L-BFGS on float32 features stops at its iteration cap or its tolerance well above the
minimum (measured on an organism's vision-depth and verdict probes: up to 1.4 s a fit, 900–2000
iterations on the badly conditioned ones, objective up to 5 % above the minimum). Newton's method is
affine invariant, so conditioning does not slow it: at most 13 iterations to a Newton decrement of
1e-10, 1.6 s against 9.5 s over the same 42 fits. Each iteration builds the ``(d+1)·k`` square Hessian,
which is cheap for the organisms' widths and not for a 7B model's (d = 3584: 10⁸ entries), so above
:data:`NEWTON_MAX_PARAMS` parameters the fit falls back to scikit-learn's L-BFGS in float64.

Example:
    >>> import numpy as np
    >>> from spatial_interp.interventions.logistic import fit_logistic
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(90, 4)); y = np.argmax(X[:, :3], 1)
    >>> fit = fit_logistic(X, y, C=1.0)
    >>> fit.W.shape, fit.b.shape, fit.solver, fit.converged
    ((4, 3), (3,), 'newton', True)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from jaxtyping import Float, Int
from scipy import linalg
from scipy.special import expit, logsumexp

log = logging.getLogger(__name__)

NEWTON_MAX_PARAMS = 2048
"""Largest ``(d+1)·k`` solved by Newton's method (its Hessian is that size squared); L-BFGS above."""
FLAT = 1e-5
"""A column whose spread is under this share of the largest feature is float32 rounding, not signal."""
TOLERANCE = 1e-10
"""Stop when half the squared Newton decrement falls below this share of the objective."""


@dataclass(frozen=True)
class LogisticFit:
    """Weights over the present classes: ``W`` (d, k), ``b`` (k,); binary fits have one column (class 1)."""

    W: np.ndarray
    b: np.ndarray
    classes: np.ndarray
    solver: str
    iterations: int
    converged: bool


def fit_logistic(X: Float[np.ndarray, "n d"], y: Int[np.ndarray, " n"], *, C: float,  # noqa: N803
                 max_iter: int = 100) -> LogisticFit:
    """Minimise ``C · Σ CE + ½‖W‖²`` (scikit-learn's objective) over the classes present in ``y``."""
    classes, index = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"a logistic probe needs training rows of at least 2 classes; these are all class "
                         f"{classes.tolist()}: label more cells, or give more training items")
    if not C > 0:
        raise ValueError(f"C must be > 0 (the inverse L2 strength), got {C!r}")
    X = np.asarray(X, np.float64)
    n, d = X.shape
    k = 1 if len(classes) == 2 else len(classes)
    # Columns whose rows differ only by float32 rounding carry no signal, yet an exact solver would
    # read it: identical blank canvases give tokens that differ by ~1e-6 of their size, a deterministic
    # function of position, and a probe fitted to the minimum decodes that rounding (measured: 0.61 on
    # three bands). Such columns are constant to the fit (their weight is 0, as a constant's is).
    live = np.flatnonzero(np.ptp(X, axis=0) > FLAT * max(float(np.abs(X).max()), np.finfo(np.float64).tiny))
    if (len(live) + 1) * k > NEWTON_MAX_PARAMS:
        return _lbfgs(X, y, classes, C=C, max_iter=max(max_iter, 2000))
    features = np.hstack([X[:, live], np.ones((n, 1))])
    d = len(live)
    penalty = np.ones(d + 1)
    penalty[-1] = 0.0  # the intercept is not penalised
    if k == 1:
        target = (index == 1).astype(np.float64)[:, None]
    else:
        target = np.zeros((n, k))
        target[np.arange(n), index] = 1.0

    def objective(theta: np.ndarray) -> float:
        z = features @ theta
        if k == 1:
            data = np.sum(np.logaddexp(0.0, z) - target * z)
        else:
            data = np.sum(logsumexp(z, axis=1) - z[np.arange(n), index])
        return float(C * data + 0.5 * np.sum(penalty[:, None] * theta * theta))

    theta = np.zeros((d + 1, k))
    value = objective(theta)
    converged = False
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        z = features @ theta
        probs = expit(z) if k == 1 else np.exp(z - logsumexp(z, axis=1, keepdims=True))
        gradient = C * features.T @ (probs - target) + penalty[:, None] * theta
        step = -_solve(_hessian(features, probs, C, penalty), gradient.T.reshape(-1)).reshape(k, d + 1).T
        decrement = -float(np.sum(gradient * step))
        if decrement / 2 <= TOLERANCE * max(1.0, abs(value)):
            converged = True
            break
        # Backtracking (Armijo) keeps every step a descent, so the iteration converges from zero.
        scale = 1.0
        while (trial := objective(theta + scale * step)) > value - 0.25 * scale * decrement and scale > 1e-12:
            scale *= 0.5
        if trial >= value:  # no representable decrease is left: this is the minimum in float64
            converged = True
            break
        theta, value = theta + scale * step, trial
    if not converged:
        log.warning("logistic probe: Newton's method stopped at max_iter=%d before converging", max_iter)
    weights = np.zeros((X.shape[1], k))
    weights[live] = theta[:-1]
    return LogisticFit(weights, theta[-1].copy(), classes, "newton", iterations, converged)


def _hessian(features: np.ndarray, probs: np.ndarray, C: float, penalty: np.ndarray) -> np.ndarray:  # noqa: N803
    """Blocks ``C · Xᵀ diag(p_a (δ_ac − p_c)) X`` of the softmax cross-entropy, plus the penalty."""
    n, width = features.shape
    k = probs.shape[1]
    if k == 1:
        weights = (probs * (1.0 - probs))[:, 0]
        return C * (features * weights[:, None]).T @ features + np.diag(penalty)
    hessian = np.zeros((k * width, k * width))
    for a in range(k):
        for c in range(a, k):
            weights = probs[:, a] * ((a == c) - probs[:, c])
            block = C * (features * weights[:, None]).T @ features
            hessian[a * width:(a + 1) * width, c * width:(c + 1) * width] = block
            hessian[c * width:(c + 1) * width, a * width:(a + 1) * width] = block.T
    hessian[np.diag_indices_from(hessian)] += np.tile(penalty, k)
    # A common shift of every intercept changes no probability, so the Hessian is singular along it;
    # the gradient has no part along that shift either, so adding it back fixes the step's shift at 0.
    intercepts = np.arange(k) * width + width - 1
    hessian[np.ix_(intercepts, intercepts)] += 1.0
    return hessian


def _solve(hessian: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    try:
        return linalg.solve(hessian, gradient, assume_a="pos")
    except (linalg.LinAlgError, ValueError):
        return linalg.lstsq(hessian, gradient)[0]


def _lbfgs(X: np.ndarray, y: np.ndarray, classes: np.ndarray, *, C: float, max_iter: int) -> LogisticFit:  # noqa: N803
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    model = LogisticRegression(C=C, max_iter=max_iter)
    # Probe-sized problems gain nothing from BLAS threads, and beside torch's own threads they fight
    # for the cores: measured 4x slower §4 probes on 2 cores with OpenBLAS's default threads.
    with threadpool_limits(limits=1, user_api="blas"):
        model.fit(np.asarray(X, np.float64), y)
    converged = bool(np.all(model.n_iter_ < max_iter))
    if not converged:
        log.warning("logistic probe: L-BFGS stopped at max_iter=%d before converging", max_iter)
    return LogisticFit(model.coef_.T.copy(), model.intercept_.copy(), classes, "lbfgs", int(np.max(model.n_iter_)),
                       converged)
