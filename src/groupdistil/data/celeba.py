"""CelebA: attribute and partition lists (``.csv`` or the original ``.txt``) and ``img_align_celeba/``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from groupdistil.data._bundle import make_bundle, parts_by_split
from groupdistil.data._io import (
    Table,
    file_stamp,
    first_existing,
    read_delimited,
    read_whitespace,
    require_dir,
    resolve_paths,
)
from groupdistil.data.base import DatasetBundle
from groupdistil.data.images import ImageFiles, image_pipeline
from groupdistil.data.options import DataConfig
from groupdistil.data.registry import DATASETS, DatasetSpec
from groupdistil.errors import DataError, UserError
from groupdistil.groups import Grouping

#: Published train group counts for the default target/confounder (Blond_Hair x Male).
PUBLISHED_TRAIN = [71629, 66874, 22880, 1387]
DEFAULT_SIZE = 224


def _read_list(root: Path, stem: str, what: str, read_txt: Callable[[Path], Table]) -> Table:
    """``ROOT/<stem>.csv`` (Kaggle's copy, with a header) or else the original ``ROOT/<stem>.txt``."""
    path = first_existing([root / f"{stem}.csv", root / f"{stem}.txt"], what)
    return read_delimited(path) if path.suffix == ".csv" else read_txt(path)


def read_attributes(root: Path) -> Table:
    """The attribute list; the ``.txt`` has a count line, then 40 names, then ``image_id v1 ... v40``."""
    return _read_list(
        root, "list_attr_celeba", "CelebA attribute list",
        lambda p: read_whitespace(p, header=None, skip=1, unnamed_first="image_id"),
    )


def read_partition(root: Path) -> Table:
    """The partition list; the ``.txt`` has no header: ``image_id partition``."""
    return _read_list(
        root, "list_eval_partition", "CelebA partition list",
        lambda p: read_whitespace(p, header=("image_id", "partition")),
    )


def _partition_codes(attrs: Table, part: Table) -> np.ndarray:
    """(N,) partition (0, 1, 2) of each attribute row, joined on image_id."""
    part.require(("image_id", "partition"))
    part.check_unique("image_id")
    codes = part.ints("partition", {0, 1, 2}, "0 (train), 1 (val) or 2 (test)")
    by_id = dict(zip(part.strings("image_id"), codes.tolist(), strict=True))
    out = np.empty(len(attrs), dtype=np.int64)
    for i, image_id in enumerate(attrs.strings("image_id")):
        code = by_id.get(image_id)
        if code is None:
            raise DataError(f"{attrs.where(i, 'image_id')}: image {image_id!r} has no row in {part.path}")
        out[i] = code
    return out


def build_celeba(config: DataConfig) -> DatasetBundle:
    """Label = target attribute, attribute = confounder: g = 2 * target + confounder."""
    target, confounder = config.target_attr, config.confounder_attr
    if target == confounder:
        raise UserError(f"`data.confounder_attr`: expected an attribute other than the target {target!r}")
    root = require_dir(config.root, "CelebA folder")  # type: ignore[arg-type]
    attrs, part = read_attributes(root), read_partition(root)
    attrs.require(["image_id"])
    attrs.require((target, confounder), " (expected a CelebA attribute name)")
    attrs.check_unique("image_id")
    y = (attrs.ints(target, {-1, 1}, "-1 or 1") > 0).astype(np.int64)
    a = (attrs.ints(confounder, {-1, 1}, "-1 or 1") > 0).astype(np.int64)
    split = _partition_codes(attrs, part)
    images = root / "img_align_celeba"
    size = config.image_size or DEFAULT_SIZE
    files = ImageFiles(resolve_paths(attrs, "image_id", images, allow_outside=config.allow_outside_root),
                       size=size)
    grouping = Grouping.label_attribute((f"not_{target}", target), (f"not_{confounder}", confounder))
    transform, augmentation = image_pipeline(size, augment=config.augment)
    default = (target, confounder) == ("Blond_Hair", "Male")
    return make_bundle(
        "celeba", grouping, (3, size, size),
        parts_by_split(split, y, grouping.group_ids(torch.from_numpy(y), torch.from_numpy(a)), loader=files),
        identity={"target": target, "confounder": confounder, "files": file_stamp(attrs.path, part.path),
                  "reader": repr(files)},
        transform=transform, augmentation=augmentation,
        published_counts={"train": PUBLISHED_TRAIN} if default else None,
    )


DATASETS["celeba"] = DatasetSpec(
    build_celeba, "CelebA: target attribute x confounder (default Blond_Hair x Male)", True
)
