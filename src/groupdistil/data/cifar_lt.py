"""CIFAR-10-LT and CIFAR-100-LT from the python pickles as distributed.

Train: class k keeps its first floor(n_max * r^(-k / (C - 1))) images in file order. Val and test:
the official test set cut into two class-stratified halves with a fixed seed, the same for every run
so that results stay comparable across data seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from groupdistil.data._bundle import SplitData, make_bundle
from groupdistil.data._io import file_stamp, load_pickle, require_dir
from groupdistil.data._splits import long_tail_index, stratified_split
from groupdistil.data.base import DatasetBundle
from groupdistil.data.images import ArrayImages, image_pipeline
from groupdistil.data.options import DataConfig
from groupdistil.data.registry import DATASETS, DatasetSpec
from groupdistil.errors import DataError
from groupdistil.groups import Grouping

#: Seed of the val/test halves of the official test set (fixed, not DataConfig.data_seed).
EVAL_SPLIT_SEED = 0
#: The imbalance ratio when `data.imbalance_ratio` is not set.
DEFAULT_RATIO = 100.0
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class CifarLayout(NamedTuple):
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    n_classes: int
    n_max: int


CIFAR10 = CifarLayout(
    "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
    "labels", "label_names", 10, 5000,
)
CIFAR100 = CifarLayout(
    "cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names", 100, 500
)


def _field(batch: Any, key: str, path: Path) -> Any:
    # Python 2 pickles read with encoding="bytes" have bytes keys; re-pickled copies may have str keys.
    if isinstance(batch, dict):
        for k in (key.encode(), key):
            if k in batch:
                return batch[k]
    raise DataError(f"{path}: expected a dict with key b'{key}', got {type(batch).__name__}")


def read_batch(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3072) uint8 pixels and (N,) int64 labels of one pickle, validated."""
    batch = load_pickle(path)
    data = _field(batch, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: b'data': expected an (N, 3072) uint8 array, got {got}")
    labels = np.asarray(_field(batch, layout.label_key, path))
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: b'{layout.label_key}': expected {data.shape[0]} integer labels, "
            f"got shape {labels.shape} of {labels.dtype}"
        )
    bad = np.flatnonzero((labels < 0) | (labels >= layout.n_classes))
    if bad.size:
        raise DataError(
            f"{path}: b'{layout.label_key}' entry {bad[0]}: expected a class in [0, {layout.n_classes}), "
            f"got {labels[bad[0]]}"
        )
    return data, labels.astype(np.int64)


def class_names(folder: Path, layout: CifarLayout) -> tuple[str, ...]:
    """Names from the meta pickle when present, else the class numbers."""
    path = folder / layout.meta_file
    if not path.is_file():
        return tuple(str(c) for c in range(layout.n_classes))
    names = _field(load_pickle(path), layout.names_key, path)
    if not isinstance(names, list) or len(names) != layout.n_classes:
        raise DataError(f"{path}: b'{layout.names_key}': expected {layout.n_classes} names")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _images(data: np.ndarray) -> torch.Tensor:
    """(N, 3072) uint8 R, G, B planes -> (N, 3, 32, 32) uint8."""
    return torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)))


def _build(name: str, layout: CifarLayout, config: DataConfig) -> DatasetBundle:
    folder = require_dir(Path(config.root) / layout.folder, f"{name} pickles folder")  # type: ignore[arg-type]
    train_paths = [folder / f for f in layout.train_files]
    test_path = folder / layout.test_file
    batches = [read_batch(p, layout) for p in train_paths]
    labels = np.concatenate([b[1] for b in batches])
    ratio = config.imbalance_ratio or DEFAULT_RATIO
    keep, warnings = long_tail_index(labels, layout.n_classes, layout.n_max, ratio)
    arrays = {"train": (np.concatenate([b[0] for b in batches])[keep], labels[keep])}
    del batches  # the full training set is several times the long-tailed one
    test_x, test_y = read_batch(test_path, layout)
    halves = stratified_split(test_y, (0.5, 0.5), ("val", "test"), np.random.default_rng(EVAL_SPLIT_SEED))
    arrays |= {split: (test_x[ix], test_y[ix]) for split, ix in halves.items()}
    parts = {}
    for split, (x, y) in arrays.items():
        y_t = torch.from_numpy(y)
        parts[split] = SplitData(y_t, y_t.clone(), loader=ArrayImages(_images(x)))
    size = config.image_size or 32
    transform, augmentation = image_pipeline(size, CIFAR_MEAN, CIFAR_STD, augment=config.augment)
    return make_bundle(
        name, Grouping.classes(class_names(folder, layout)), (3, size, size), parts,
        identity={"imbalance_ratio": ratio, "files": file_stamp(*train_paths, test_path)},
        transform=transform, augmentation=augmentation, warnings=[f"{name}: {w}" for w in warnings],
    )


def build_cifar10_lt(config: DataConfig) -> DatasetBundle:
    """CIFAR-10-LT: n_max 5000, ratio ``config.imbalance_ratio`` (12406 train images at 100)."""
    return _build("cifar10-lt", CIFAR10, config)


def build_cifar100_lt(config: DataConfig) -> DatasetBundle:
    """CIFAR-100-LT: n_max 500, ratio ``config.imbalance_ratio`` (10847 train images at 100)."""
    return _build("cifar100-lt", CIFAR100, config)


# Both apply `data.imbalance_ratio` themselves (n_max is the published one, in file order).
DATASETS["cifar10-lt"] = DatasetSpec(build_cifar10_lt, "CIFAR-10-LT (python pickles); classes", True, True)
DATASETS["cifar100-lt"] = DatasetSpec(build_cifar100_lt, "CIFAR-100-LT (python pickles); classes", True, True)
