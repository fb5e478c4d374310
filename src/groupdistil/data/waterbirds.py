"""Waterbirds in the group DRO / WILDS layout: ``ROOT/metadata.csv`` and the images it names."""

from __future__ import annotations

import torch

from groupdistil.data._bundle import make_bundle, parts_by_split
from groupdistil.data._io import file_stamp, read_delimited, require_dir, require_file, resolve_paths
from groupdistil.data.base import DatasetBundle
from groupdistil.data.images import ImageFiles, image_pipeline
from groupdistil.data.options import DataConfig
from groupdistil.data.registry import DATASETS, DatasetSpec
from groupdistil.groups import Grouping

GROUPING = Grouping.label_attribute(("landbird", "waterbird"), ("land", "water"))
#: Group counts of the published release (landbird_land, landbird_water, waterbird_land, waterbird_water).
PUBLISHED = {
    "train": [3498, 184, 56, 1057],
    "val": [467, 466, 133, 133],
    "test": [2255, 2255, 642, 642],
}
DEFAULT_SIZE = 224


def build_waterbirds(config: DataConfig) -> DatasetBundle:
    """Groups g = 2 y + place; images decoded lazily at ``ROOT/<img_filename>``."""
    root = require_dir(config.root, "Waterbirds folder")  # type: ignore[arg-type]
    meta = require_file(root / "metadata.csv", "Waterbirds metadata.csv")
    table = read_delimited(meta)
    table.require(("img_filename", "y", "split", "place"))
    table.check_unique("img_id" if table.has("img_id") else "img_filename")
    y = table.ints("y", {0, 1}, "0 (landbird) or 1 (waterbird)")
    place = table.ints("place", {0, 1}, "0 (land) or 1 (water)")
    split = table.ints("split", {0, 1, 2}, "0 (train), 1 (val) or 2 (test)")
    size = config.image_size or DEFAULT_SIZE
    files = ImageFiles(resolve_paths(table, "img_filename", root, allow_outside=config.allow_outside_root),
                       size=size)
    transform, augmentation = image_pipeline(size, augment=config.augment)
    g = GROUPING.group_ids(torch.from_numpy(y), torch.from_numpy(place))
    return make_bundle(
        "waterbirds", GROUPING, (3, size, size), parts_by_split(split, y, g, loader=files),
        identity={"files": file_stamp(meta), "reader": repr(files)}, transform=transform, augmentation=augmentation,
        published_counts=PUBLISHED,
    )


DATASETS["waterbirds"] = DatasetSpec(
    build_waterbirds, "Waterbirds (group DRO layout): landbird/waterbird x land/water", True
)
