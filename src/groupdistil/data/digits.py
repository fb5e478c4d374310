"""Built-in offline benchmarks made from scikit-learn's handwritten digits (8x8, values 0..16).

``spurious-digits`` (spurious background colour), ``scanner-digits`` (four acquisition "scanners")
and ``digits-lt`` (long-tailed classes), exactly as the project's format specification fixes them
(docs/datasets.md), and ``scanner-digits-reversed`` (ours: the same scanners with the training shares
reversed, so the degraded scanners are the common ones; ``docs/datasets.md``). Everything is
deterministic given ``DataConfig.data_seed``; the parameters the specification leaves open are module
constants below, documented in ``docs/datasets.md``: do not tune them.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from groupdistil.data._bundle import SplitData, make_bundle
from groupdistil.data._splits import balanced_subsample, long_tail_counts, stratified_split
from groupdistil.data.base import SPLITS, DatasetBundle
from groupdistil.data.options import DataConfig
from groupdistil.data.registry import DATASETS, DatasetSpec
from groupdistil.data.transforms import RandomCrop
from groupdistil.errors import DataError
from groupdistil.groups import Grouping

#: train / val / test shares, stratified by digit.
SPLIT_FRACTIONS = (0.5, 0.2, 0.3)
DIGIT_NAMES = tuple(str(d) for d in range(10))

#: spurious-digits: share of training samples whose background matches their label.
SPURIOUS_AGREEMENT = 0.95
#: RGB of the two backgrounds (a = 0 orange, a = 1 blue); the digit's ink is white.
BACKGROUNDS = np.array([[0.85, 0.55, 0.15], [0.15, 0.35, 0.85]], dtype=np.float32)

#: scanner-digits: training shares of scanners A, B, C, D.
SCANNER_SHARES = (0.55, 0.35, 0.07, 0.03)
SCANNER_NAMES = ("scanner_A", "scanner_B", "scanner_C", "scanner_D")
#: scanner-digits-reversed: the same shares in reverse order, fixed before any run (docs/datasets.md).
REVERSED_SHARES = SCANNER_SHARES[::-1]
GAMMA_B = 2.0  # scanner B: x = (1 - v) ** GAMMA_B
NOISE_C = 0.1  # scanner C: std of the Gaussian noise added after the blur
BLUR_C = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]).astype(np.float32) / 16.0  # 3x3 binomial kernel
CONTRAST_D = (0.3, 0.4)  # scanner D: x = (0.3 + 0.4 v) * bias field
_rows, _cols = np.mgrid[0:8, 0:8] / 7.0
BIAS_FIELD_D = (0.6 + 0.8 * (0.6 * _rows + 0.4 * _cols)).astype(np.float32)  # smooth ramp 0.6 .. 1.4

#: digits-lt: n_k = floor(n_max * LT_RATIO ** (-k / 9)) for the class ranked k.
LT_RATIO = 10.0


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) float32 ink in [0, 1] and (1797,) int64 digit labels.

    Reads the file behind ``sklearn.datasets.load_digits`` directly: importing scikit-learn costs
    most of a second, reading its 1797 x 65 table takes milliseconds.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise DataError("built-in digits: scikit-learn is not installed (pip install scikit-learn)")
    table = np.loadtxt(Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    return (table[:, :-1].reshape(-1, 8, 8) / 16.0).astype(np.float32), table[:, -1].astype(np.int64)


def _to_unit_range(x: np.ndarray) -> torch.Tensor:
    """Map [0, 1] pixels to [-1, 1], a fixed normalisation that needs no statistics."""
    return torch.from_numpy((x - 0.5) / 0.5).float()


def _split(config: DataConfig) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.random.Generator]:
    ink, digit = _digits()
    rng = np.random.default_rng(config.data_seed)
    return ink, digit, stratified_split(digit, SPLIT_FRACTIONS, SPLITS, rng), rng


def _augmentation(config: DataConfig) -> RandomCrop | None:
    # No flips: a mirrored digit is a different (or no) digit.
    return RandomCrop(8, padding=1) if config.augment else None


def _identity(config: DataConfig) -> dict[str, object]:
    return {"data_seed": config.data_seed}


# --- spurious-digits ------------------------------------------------------------------------------


def spurious_attribute(y: np.ndarray, train: bool, rng: np.random.Generator) -> np.ndarray:
    """(N,) background ids: in train exactly round(5%) of each class get the other colour;
    elsewhere each class is split in two halves, so a is independent of y and balanced."""
    a = np.empty_like(y)
    for c in (0, 1):
        members = rng.permutation(np.flatnonzero(y == c))
        if train:
            n_other = round((1.0 - SPURIOUS_AGREEMENT) * len(members))
            a[members] = c
            a[members[:n_other]] = 1 - c
        else:
            a[members[: len(members) // 2]] = 0
            a[members[len(members) // 2 :]] = 1
    return a


def _colourise(ink: np.ndarray, a: np.ndarray) -> np.ndarray:
    """(N, 8, 8) ink and (N,) backgrounds -> (N, 3, 8, 8): white ink over the background colour."""
    v = ink[:, None]
    return v * 1.0 + (1.0 - v) * BACKGROUNDS[a][:, :, None, None]


def build_spurious_digits(config: DataConfig) -> DatasetBundle:
    """Binary ``y = digit >= 5`` with a background colour that agrees with y in 95% of training samples."""
    ink, digit, index, rng = _split(config)
    grouping = Grouping.label_attribute(("digit0-4", "digit5-9"), ("bg_orange", "bg_blue"))
    parts = {}
    for split, ix in index.items():
        y = (digit[ix] >= 5).astype(np.int64)
        a = spurious_attribute(y, split == "train", rng)
        g = grouping.group_ids(torch.from_numpy(y), torch.from_numpy(a))
        parts[split] = SplitData(torch.from_numpy(y), g, inputs=_to_unit_range(_colourise(ink[ix], a)))
    return make_bundle(
        "spurious-digits", grouping, (3, 8, 8), parts,
        identity=_identity(config), augmentation=_augmentation(config),
    )


# --- scanner-digits -------------------------------------------------------------------------------


def _quota(shares: tuple[float, ...], n: int) -> np.ndarray:
    """Integer counts summing to n, proportional to shares (largest remainder)."""
    raw = np.asarray(shares) * n
    counts = np.floor(raw).astype(int)
    counts[np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]] += 1
    return counts


def scanner_assignment(
    n: int, train: bool, rng: np.random.Generator, shares: tuple[float, ...] = SCANNER_SHARES
) -> np.ndarray:
    """(n,) scanner ids: exact training quotas, or an even round-robin over a shuffled val/test."""
    n_scanners = len(shares)
    ids = np.repeat(np.arange(n_scanners), _quota(shares, n)) if train else np.arange(n) % n_scanners
    return ids[rng.permutation(n)]


def _blur(x: np.ndarray) -> np.ndarray:
    """(N, 8, 8) -> (N, 8, 8) convolved with the 3x3 binomial kernel (zero padding, the background)."""
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    return sum(BLUR_C[i, j] * p[:, i : i + 8, j : j + 8] for i in range(3) for j in range(3))


def scan(ink: np.ndarray, scanner: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply each sample's scanner to (N, 8, 8) ink in [0, 1]; returns (N, 8, 8) in [0, 1]."""
    out = ink.copy()
    b, c, d = scanner == 1, scanner == 2, scanner == 3
    out[b] = (1.0 - ink[b]) ** GAMMA_B
    noise = rng.normal(0.0, NOISE_C, size=(int(c.sum()), 8, 8)).astype(np.float32)
    out[c] = np.clip(_blur(ink[c]) + noise, 0.0, 1.0)
    out[d] = (CONTRAST_D[0] + CONTRAST_D[1] * ink[d]) * BIAS_FIELD_D
    return out


def _build_scanner(config: DataConfig, name: str, shares: tuple[float, ...]) -> DatasetBundle:
    """10-class digits seen through four scanners with the given training shares; val/test balanced."""
    ink, digit, index, rng = _split(config)
    grouping = Grouping.explicit(DIGIT_NAMES, SCANNER_NAMES)
    parts = {}
    for split, ix in index.items():
        scanner = scanner_assignment(len(ix), split == "train", rng, shares)
        x = scan(ink[ix], scanner, rng)[:, None]
        y = torch.from_numpy(digit[ix])
        g = grouping.group_ids(y, torch.from_numpy(scanner))
        parts[split] = SplitData(y, g, inputs=_to_unit_range(x))
    return make_bundle(
        name, grouping, (1, 8, 8), parts,
        identity=_identity(config), augmentation=_augmentation(config),
    )


def build_scanner_digits(config: DataConfig) -> DatasetBundle:
    """10-class digits seen through four scanners; train is dominated by A and B, val/test balanced."""
    return _build_scanner(config, "scanner-digits", SCANNER_SHARES)


def build_scanner_digits_reversed(config: DataConfig) -> DatasetBundle:
    """As scanner-digits with the training shares reversed: the degraded scanners C and D are common
    (35% and 55%), the clean A and B rare (3% and 7%): group size and difficulty disagree."""
    return _build_scanner(config, "scanner-digits-reversed", REVERSED_SHARES)


# --- digits-lt ------------------------------------------------------------------------------------


def build_digits_lt(config: DataConfig) -> DatasetBundle:
    """10 classes; train keeps floor(n_max * 10^(-k/9)) of the class ranked k, val/test balanced."""
    ink, digit, index, rng = _split(config)
    order = rng.permutation(10)  # order[k] = the digit ranked k (k = 0 is the head)
    train = index["train"]
    counts = np.bincount(digit[train], minlength=10)
    keep = long_tail_counts(int(counts.min()), 10, LT_RATIO)
    kept = {
        "train": np.sort(np.concatenate([train[digit[train] == order[k]][: keep[k]] for k in range(10)])),
        **{s: index[s][balanced_subsample(digit[index[s]], 10)] for s in ("val", "test")},
    }
    parts = {}
    for split, ix in kept.items():
        y = torch.from_numpy(digit[ix])
        parts[split] = SplitData(y, y.clone(), inputs=_to_unit_range(ink[ix][:, None]))
    return make_bundle(
        "digits-lt", Grouping.classes(DIGIT_NAMES), (1, 8, 8), parts,
        identity={**_identity(config), "class_order": order.tolist()}, augmentation=_augmentation(config),
    )


DATASETS["spurious-digits"] = DatasetSpec(
    build_spurious_digits, "built-in: digit >= 5 vs background colour (95% agreement in train)", False
)
DATASETS["scanner-digits"] = DatasetSpec(
    build_scanner_digits, "built-in: 10 digits through 4 scanner transforms, train shares 55/35/7/3", False
)
DATASETS["scanner-digits-reversed"] = DatasetSpec(
    build_scanner_digits_reversed, "built-in: scanner-digits with train shares reversed, 3/7/35/55", False
)
DATASETS["digits-lt"] = DatasetSpec(
    build_digits_lt, "built-in: 10 digits, long-tailed train (imbalance ratio 10)", False
)
