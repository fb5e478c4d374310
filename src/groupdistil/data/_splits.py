"""Seeded, stratified index splits shared by the readers that derive their own splits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stratified_split(
    strata: np.ndarray, fractions: Sequence[float], names: Sequence[str], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Split indices 0..N-1 into parts with the given fractions inside every stratum.

    Items of each stratum are shuffled with ``rng`` and cut so that every part gets its share of the
    stratum up to one item, and the parts' totals over all strata are exact: the cuts are rounded on
    the running total across strata, so small strata (a few patients) take turns getting the
    remainders instead of all rounding val away.

    Args:
        strata: (N,) stratum key per item (e.g. the class).
        fractions: one fraction per part, summing to 1. names: one name per part.

    Returns:
        ``{name: (n_part,) int64 indices in ascending order}``.
    """
    if len(fractions) != len(names) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions: expected {len(names)} values summing to 1, got {list(fractions)}")
    parts: list[list[np.ndarray]] = [[] for _ in names]
    bounds = np.cumsum(fractions)[:-1]
    offset = 0
    for key in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == key))
        n = len(members)
        cuts = np.round(bounds * (offset + n)).astype(int) - np.round(bounds * offset).astype(int)
        cuts = np.maximum.accumulate(np.clip(cuts, 0, n))
        for part, chunk in zip(parts, np.split(members, cuts), strict=True):
            part.append(chunk)
        offset += n
    return {name: np.sort(np.concatenate(p)).astype(np.int64) for name, p in zip(names, parts, strict=True)}


def balanced_subsample(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(M,) ascending indices keeping, of every class present, its first ``min count`` items.

    Used to make derived val/test splits exactly balanced; callers pass labels in an order that is
    already random (a seeded split), so "first" is a seeded choice.
    """
    counts = np.bincount(labels, minlength=n_classes)
    m = counts[counts > 0].min()
    keep = [np.flatnonzero(labels == c)[:m] for c in range(n_classes)]
    return np.sort(np.concatenate(keep)).astype(np.int64)


def long_tail_counts(n_max: int, n_classes: int, ratio: float) -> np.ndarray:
    """(C,) exponential long-tail profile: floor(n_max * ratio ** (-k / (C - 1))) for rank k."""
    k = np.arange(n_classes)
    # The epsilon keeps products that are exact in theory (5000 * 100**-1 = 50) from flooring one low.
    return np.floor(n_max * ratio ** (-k / (n_classes - 1)) + 1e-9).astype(np.int64)


def long_tail_index(
    labels: np.ndarray, n_classes: int, n_max: int, ratio: float, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, list[str]]:
    """Ascending indices keeping the first floor(n_max * ratio ** (-k / (C - 1))) items of class k.

    "First" is in index order, or in an order shuffled by ``rng`` within each class when given (a
    fixed, seeded choice for data whose order means nothing, e.g. files sorted by name). Also
    returns warnings for classes with fewer items than the profile asks for (they keep them all).
    """
    keep = long_tail_counts(n_max, n_classes, ratio)
    index, warnings = [], []
    for k in range(n_classes):
        members = np.flatnonzero(labels == k)
        if rng is not None:
            members = rng.permutation(members)
        if len(members) < keep[k]:
            warnings.append(f"class {k} has {len(members)} training images, fewer than the {keep[k]} to keep")
        index.append(members[: keep[k]])
    return np.sort(np.concatenate(index)).astype(np.int64), warnings
