"""The user's own data: a CSV, TSV or Parquet manifest with ``label``, ``split`` and inputs.

Inputs are image files (a ``path`` column, relative to the manifest's folder, decoded lazily) or
numeric feature columns (standardised with the training split's mean and std). Groups come from a
``group`` column, from ``group_by`` attribute columns (g = y * n_attr + a unless
``group_with_label`` is False), or else are the classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from groupdistil.data._bundle import make_bundle, parts_by_split
from groupdistil.data._io import Table, as_int, file_stamp, map_distinct, read_table, resolve_paths
from groupdistil.data.base import SPLITS, DatasetBundle
from groupdistil.data.images import ImageFiles, image_pipeline
from groupdistil.data.options import DataConfig
from groupdistil.data.registry import DATASETS, DatasetSpec
from groupdistil.errors import DataError
from groupdistil.groups import Grouping

SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}
#: Columns with a meaning of their own, never taken as features.
RESERVED = ("label", "split", "group", "path", "id")
DEFAULT_SIZE = 224
#: Integer labels and groups are their own ids, so the largest one sets the number of classes (groups).
MAX_IDS = 100_000


def encode(table: Table, column: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """(N,) int64 codes and their names: non-negative integers stay themselves (names "0".."K-1"),
    any other values are strings numbered in sorted order."""
    values = table.strings(column)
    ints = map_distinct(values, as_int)
    if all(n is not None for n in ints):
        # Checked before the int64 array exists: 10**23 would overflow it, and an id of 10**9 would
        # make a model with 10**9 outputs.
        bad = next((i for i, n in enumerate(ints) if not 0 <= n < MAX_IDS), None)
        if bad is not None:
            raise table.error(bad, column, f"an integer >= 0 and < {MAX_IDS} (or text)", values[bad])
        codes = np.asarray(ints, dtype=np.int64)
        return codes, tuple(str(c) for c in range(int(codes.max()) + 1 if codes.size else 0))
    names = tuple(sorted(set(values)))
    if len(names) > MAX_IDS:
        raise DataError(f"{table.path}: column {column!r}: {len(names)} distinct values; expected at most {MAX_IDS}")
    index = {name: k for k, name in enumerate(names)}
    return np.fromiter((index[v] for v in values), dtype=np.int64, count=len(values)), names


def _check_train_labels(table: Table, y: np.ndarray, split: np.ndarray, names: Sequence[str]) -> None:
    """A label seen only in val/test cannot be learned: an error naming its first row."""
    unseen = np.flatnonzero(~np.isin(y, y[split == 0]))
    if unseen.size:
        i = int(unseen[0])
        raise DataError(
            f"{table.where(i, 'label')}: label {names[y[i]]!r} appears in {SPLITS[split[i]]} but never "
            "in train; expected every label to have training rows"
        )


def table_grouping(
    table: Table, config: DataConfig, y: np.ndarray, class_names: tuple[str, ...]
) -> tuple[Grouping, torch.Tensor]:
    y_t = torch.from_numpy(y)
    if config.group_by:
        table.require(config.group_by, " (named by `data.group_by`)")
        columns = [table.strings(c) for c in config.group_by]
        combos = list(zip(*columns, strict=True))
        kinds = sorted(set(combos))
        index = {kind: n for n, kind in enumerate(kinds)}
        a = torch.tensor([index[c] for c in combos], dtype=torch.long)
        cols = config.group_by
        attr_names = [",".join(f"{c}={v}" for c, v in zip(cols, kind, strict=True)) for kind in kinds]
        if config.group_with_label:
            grouping = Grouping.label_attribute(class_names, attr_names)
        else:
            grouping = Grouping.explicit(class_names, attr_names)
        return grouping, grouping.group_ids(y_t, a)
    if table.has("group"):
        codes, names = encode(table, "group")
        grouping = Grouping.explicit(class_names, [f"group_{n}" for n in names])
        return grouping, grouping.group_ids(y_t, torch.from_numpy(codes))
    grouping = Grouping.classes(class_names)
    return grouping, grouping.group_ids(y_t)


def _features(table: Table, config: DataConfig, split: np.ndarray) -> torch.Tensor:
    """(N, F) float32 features, standardised with the training rows' mean and std."""
    if config.features:
        table.require(config.features, " (named by `data.features`)")
        names = list(config.features)
    else:
        taken = set(RESERVED) | set(config.group_by or ())
        names = [c for c in table.names if c not in taken and table.is_numeric(c)]
        if not names:
            raise DataError(
                f"{table.path}: no inputs; expected a 'path' column of image files or numeric feature "
                f"columns (found {', '.join(table.names)})"
            )
    x = np.stack([table.floats(c) for c in names], axis=1)
    train = x[split == 0]  # not empty: build_manifest has checked every label has training rows
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked just below, by column
        mean, std = train.mean(axis=0), train.std(axis=0)
        std[std == 0] = 1.0  # a constant column stays constant (zero) instead of dividing by zero
        z = (x - mean) / std
    bad = ~np.isfinite(mean) | ~np.isfinite(std) | ~np.isfinite(z).all(axis=0)
    if bad.any():
        # Values near 1e308 pass as numbers but their sum or square overflows: training would see NaN.
        c = names[int(np.argmax(bad))]
        raise DataError(f"{table.path}: column {c!r}: values too large to standardise (their mean or std "
                        f"overflows float64); expected magnitudes below about 1e150, e.g. rescaled units")
    return torch.from_numpy(z).float()


def build_manifest(config: DataConfig) -> DatasetBundle:
    """Read the manifest at ``config.root``; see the module docstring for the columns."""
    path = Path(config.root)  # type: ignore[arg-type]
    table = read_table(path)
    table.require(("label", "split"))
    if len(table) == 0:
        raise DataError(f"{path}: no rows after the header; expected one row per sample")
    if table.has("id"):
        table.check_unique("id")
    split = table.mapped("split", SPLIT_CODES)
    y, class_names = encode(table, "label")
    _check_train_labels(table, y, split, class_names)
    grouping, g = table_grouping(table, config, y, class_names)
    identity = {"files": file_stamp(path), "group_by": config.group_by, "features": config.features}
    if table.has("path") and not config.features:
        size = config.image_size or DEFAULT_SIZE
        files = ImageFiles(resolve_paths(table, "path", path.parent, allow_outside=config.allow_outside_root),
                           size=size)
        transform, augmentation = image_pipeline(size, augment=config.augment)
        parts = parts_by_split(split, y, g, loader=files)
        return make_bundle(
            "manifest", grouping, (3, size, size), parts, identity={**identity, "reader": repr(files)},
            transform=transform, augmentation=augmentation,
        )
    x = _features(table, config, split)
    parts = parts_by_split(split, y, g, inputs=x)
    return make_bundle("manifest", grouping, (x.shape[1],), parts, identity=identity)


DATASETS["manifest"] = DatasetSpec(
    build_manifest, "your own data: CSV/TSV/Parquet manifest (`data.root` is the file)", True
)
