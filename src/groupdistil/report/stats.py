"""Summary statistics over seeds: mean, sample standard deviation, percentile-bootstrap interval."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Fixed so that the same runs always give the same report.
BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 10_000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    """A metric over seeds. ``std`` is the sample standard deviation (ddof=1), None with one value;
    ``mean`` is None when no seed had a value (e.g. a metric a split could not define)."""

    values: tuple[float, ...]
    mean: float | None
    std: float | None

    @property
    def n(self) -> int:
        return len(self.values)


def summarise(values: Sequence[float | None]) -> Summary:
    """Mean and sample std of the values that are not None."""
    present = tuple(float(v) for v in values if v is not None)
    if not present:
        return Summary((), None, None)
    arr = np.asarray(present)
    std = float(arr.std(ddof=1)) if arr.size > 1 else None
    return Summary(present, float(arr.mean()), std)


def bootstrap_mean_ci(
    values: Sequence[float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean: resample the values with replacement.

    With one value the interval is that value (there is nothing to resample). With few seeds the
    interval is narrow and optimistic; it describes seed-to-seed variation only.

    Args:
        values: (n,) one value per seed, n >= 1.
        resamples: number of bootstrap resamples.
        confidence: the interval's nominal coverage, in (0, 1).
        seed: seed of the resampling RNG (fixed: deterministic reports).

    Returns:
        (low, high) percentiles of the resampled means.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"values: expected a non-empty 1-d sequence, got shape {arr.shape}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a number in (0, 1), got {confidence!r}")
    if arr.size == 1 or np.all(arr == arr[0]):
        return float(arr[0]), float(arr[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(resamples, arr.size))
    means = arr[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)
