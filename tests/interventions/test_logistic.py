"""The ``"logreg"`` probe's Newton solver against scikit-learn's objective, minimised independently."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.linear_model import LogisticRegression

from spatial_interp.interventions import logistic
from spatial_interp.interventions.logistic import fit_logistic
from spatial_interp.interventions.probes import Probe


def _objective(X, y, W, b, C):  # noqa: N803
    """scikit-learn's LogisticRegression objective, written out: C · Σ CE + ½‖W‖²."""
    classes, index = np.unique(y, return_inverse=True)
    z = X.astype(np.float64) @ W + b
    if W.shape[1] == 1:
        t = (index == 1)
        return C * np.sum(np.logaddexp(0, z[:, 0]) - t * z[:, 0]) + 0.5 * np.sum(W ** 2)
    return C * np.sum(logsumexp(z, axis=1) - z[np.arange(len(y)), index]) + 0.5 * np.sum(W ** 2)


def _tight_sklearn(X, y, C):  # noqa: N803
    model = LogisticRegression(C=C, tol=1e-12, max_iter=100_000).fit(X.astype(np.float64), y)
    return model.coef_.T, model.intercept_


def _blobs(n=240, d=6, k=3, spread=1.0, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    X = rng.normal(size=(k, d))[y] * 2 + rng.normal(size=(n, d)) * spread
    return X.astype(np.float32), y


@pytest.mark.parametrize("k", [2, 3, 4])
def test_newton_reaches_the_minimum_scikit_learn_converges_to(k):
    X, y = _blobs(k=k)
    fit = fit_logistic(X, y, C=0.5)
    W, b = _tight_sklearn(X, y, 0.5)
    assert fit.solver == "newton" and fit.converged and fit.W.shape == W.shape
    np.testing.assert_allclose(fit.W, W, atol=1e-5)
    if k == 2:
        np.testing.assert_allclose(fit.b, b, atol=1e-5)
    else:  # the intercepts are free up to a common shift; both fits keep it at zero
        np.testing.assert_allclose(fit.b - fit.b.mean(), b - b.mean(), atol=1e-5)
    assert abs(_objective(X, y, fit.W, fit.b, 0.5) - _objective(X, y, W, b, 0.5)) < 1e-8


def test_newton_beats_default_lbfgs_on_badly_scaled_near_separable_rows():
    # Probe-like rows: large norms, classes almost separable (where L-BFGS on float32 stops early).
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, size=300)
    X = (rng.normal(size=(3, 32))[y] * 6 + rng.normal(size=(300, 32)) * np.geomspace(0.1, 40, 32)).astype(np.float32)
    fit = fit_logistic(X, y, C=1.0)
    default = LogisticRegression(C=1.0, max_iter=2000).fit(X, y)
    ours = _objective(X, y, fit.W, fit.b, 1.0)
    theirs = _objective(X, y, default.coef_.T, default.intercept_, 1.0)
    assert fit.converged and ours <= theirs + 1e-9
    # The minimum, checked by its gradient written out by hand: C Xᵀ(P − Y) + W and C Σ(P − Y).
    z = X.astype(np.float64) @ fit.W + fit.b
    probs = np.exp(z - logsumexp(z, axis=1, keepdims=True))
    residual = probs - np.eye(3)[y]
    assert np.abs(X.T.astype(np.float64) @ residual + fit.W).max() < 1e-5
    assert np.abs(residual.sum(0)).max() < 1e-6


def test_missing_classes_are_left_out_of_the_fit_and_of_the_probe():
    X, y = _blobs(k=3)
    y = np.where(y == 1, 3, y)  # classes 0, 2, 3 of four
    probe = Probe.fit((X, y, np.arange(len(y)) // 4), classes=["a", "b", "c", "d"])
    assert np.all(probe.W[:, 1] == 0) and probe.b[1] == 0 and probe.config["solver"] == "newton"
    assert probe.report.accuracy > 0.8


def test_wide_sites_fall_back_to_lbfgs_on_the_same_objective(monkeypatch):
    monkeypatch.setattr(logistic, "NEWTON_MAX_PARAMS", 8)
    X, y = _blobs(k=3)
    fit = fit_logistic(X, y, C=0.5)
    W, b = _tight_sklearn(X, y, 0.5)
    assert fit.solver == "lbfgs" and fit.W.shape == W.shape
    tight = _objective(X, y, W, b, 0.5)
    assert tight <= _objective(X, y, fit.W, fit.b, 0.5) <= tight * (1 + 1e-5)


def test_bad_inputs_say_what_to_fix():
    X, _ = _blobs()
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_logistic(X, np.zeros(len(X), dtype=int), C=1.0)
    with pytest.raises(ValueError, match="C must be > 0"):
        fit_logistic(X, np.arange(len(X)) % 3, C=0.0)


def test_rows_equal_up_to_float32_rounding_carry_no_signal_but_small_real_differences_do():
    # Blank-canvas tokens: one row repeated, plus a class-dependent wobble at float32 rounding size.
    rng = np.random.default_rng(0)
    y = np.arange(300) % 3
    base = np.tile(rng.normal(size=16) * 20, (300, 1))
    rounding = base + np.eye(3)[y] @ rng.normal(size=(3, 16)) * 20 * 2e-7
    fit = fit_logistic(rounding.astype(np.float32), y, C=1.0)
    assert np.all(fit.W == 0) and np.allclose(fit.b, 0, atol=1e-9)  # balanced classes: the prior is flat
    signal = base + np.eye(3)[y] @ rng.normal(size=(3, 16)) * 20 * 1e-3
    learned = fit_logistic(signal.astype(np.float32), y, C=1.0)
    z = signal @ learned.W + learned.b
    assert (z.argmax(1) == y).mean() == 1.0
