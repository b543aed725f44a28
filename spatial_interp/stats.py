"""Uncertainty of the means the report states: percentile-bootstrap confidence intervals.

Example:
    >>> import numpy as np
    >>> low, mean, high = bootstrap_mean_ci(np.array([0.0, 1.0, 1.0, 1.0]), seed=0)
    >>> float(mean), bool(0.0 <= low <= mean <= high <= 1.0)
    (0.75, True)
"""

from __future__ import annotations

import numpy as np

N_RESAMPLES = 2000
LEVEL = 0.95


def bootstrap_mean_ci(values: np.ndarray, *, axis: int = -1, level: float = LEVEL, n_resamples: int = N_RESAMPLES,
                      seed: int = 0, clip: tuple[float, float] | None = (0.0, 1.0)
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(low, mean, high)`` of the mean along ``axis``: a seeded percentile bootstrap over that axis.

    The interval is clipped to ``clip`` (a probability's or an accuracy's range by default; ``None``
    for unbounded metrics), because a resampled mean can never leave the range of the values and a
    band drawn outside it reads as a value the metric cannot take. With one sample the interval is
    the point itself (no spread to resample).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    data = np.moveaxis(np.asarray(values, dtype=float), axis, -1)
    n = data.shape[-1]
    if n == 0:
        raise ValueError("bootstrap_mean_ci needs at least one sample along the axis")
    mean = data.mean(-1)
    if n == 1:
        low = high = mean
    else:
        picks = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
        resampled = data[..., picks].mean(-1)  # (..., n_resamples)
        tail = (1 - level) / 2
        low, high = np.quantile(resampled, [tail, 1 - tail], axis=-1)
    if clip is not None:
        low, high = np.clip(low, *clip), np.clip(high, *clip)
    return low, mean, high


def wilson_interval(correct: int, n: int, *, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``correct / n`` (exact at 0 and n, unlike the normal one).

    >>> [round(x, 3) for x in wilson_interval(8, 10)]
    [0.49, 0.943]
    """
    if n <= 0:
        raise ValueError(f"wilson_interval needs n > 0, got {n}")
    if not 0 <= correct <= n:
        raise ValueError(f"correct must lie in [0, n={n}], got {correct}")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
