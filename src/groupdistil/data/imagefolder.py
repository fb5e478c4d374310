"""Image files sorted into class folders, torchvision's ImageFolder layout: ``ROOT/<split>/<class>/<file>``.

Splits ``train`` and ``test`` are required, ``val`` is optional: without it, a class-stratified
:data:`VAL_FRACTION` of train (drawn by `data.data_seed`) is validation. Classes are the class folders
of ``train``, sorted by name as torchvision sorts them; files are found at any depth below a class
folder. Names starting with a dot (``.DS_Store``, ``.ipynb_checkpoints``) are skipped. Groups are the
classes, or come from ``ROOT/groups.csv`` (a ``file`` column with paths relative to ROOT, e.g.
``train/cat/001.png``, and attribute columns) through `data.group_by`, as the manifest reader forms
them. Images decode lazily through the common image pipeline (:class:`ImageFiles`), which names a file
that does not decode.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from groupdistil.data._bundle import make_bundle, parts_by_split
from groupdistil.data._io import Table, file_stamp, read_delimited, refuse_links_out, require_dir
from groupdistil.data._splits import stratified_split
from groupdistil.data.base import SPLITS, DatasetBundle
from groupdistil.data.images import ImageFiles, image_pipeline
from groupdistil.data.manifest import table_grouping
from groupdistil.data.options import DataConfig
from groupdistil.data.registry import DATASETS, DatasetSpec
from groupdistil.errors import DataError
from groupdistil.groups import Grouping

#: Share of each class of train that becomes validation when ROOT/val is absent.
VAL_FRACTION = 0.1
DEFAULT_SIZE = 224
GROUPS_FILE = "groups.csv"


def image_suffixes() -> frozenset[str]:
    """Lower-case file suffixes of the formats Pillow (the image pipeline's decoder) can open."""
    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _visible(names: list[str]) -> list[str]:
    return sorted(n for n in names if not n.startswith("."))


def _identity(folder: Path) -> tuple[int, int]:
    st = folder.stat()
    return st.st_dev, st.st_ino


def class_files(folder: Path, suffixes: frozenset[str]) -> list[str]:
    """Paths of the image files at any depth below one class folder, sorted; hidden names skipped."""
    found = []
    # Folders met so far, by device and inode: a symbolic link back up the tree would otherwise send
    # os.walk (following links, as torchvision's ImageFolder does) round the loop until the path is
    # too long, and a folder linked twice would count its images twice.
    seen = {_identity(folder)}
    for top, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = _visible(dirs)  # in place: os.walk then skips hidden folders
        for name in dirs:
            key = _identity(Path(top, name))
            if key in seen:
                raise DataError(f"{os.path.join(top, name)}: a link to a folder already read below {folder} "
                                "(a loop or a second path to it); expected each folder once")
            seen.add(key)
        for name in _visible(files):
            path = os.path.join(top, name)
            if os.path.splitext(name)[1].lower() not in suffixes:
                raise DataError(f"{path}: not an image file the image pipeline reads (suffix "
                                f"{os.path.splitext(name)[1] or 'none'!r}); expected e.g. .png or .jpg")
            found.append(path)
    if not found:
        raise DataError(f"{folder}: empty class folder; expected at least one image file")
    return found


def scan_split(folder: Path, suffixes: frozenset[str]) -> dict[str, list[str]]:
    """``{class name: its files}`` of one split folder, classes in sorted order."""
    classes: dict[str, list[str]] = {}
    for name in _visible(os.listdir(folder)):
        path = folder / name
        if not path.is_dir():
            raise DataError(f"{path}: a file where class folders are expected; expected {folder}/<class>/<file>")
        classes[name] = class_files(path, suffixes)
    if not classes:
        raise DataError(f"{folder}: no class folders; expected {folder}/<class>/<file>")
    return classes


def scan(root: Path) -> tuple[tuple[str, ...], list[str], np.ndarray, np.ndarray]:
    """Class names (those of train), and per file: its path, split code (SPLITS order) and class.

    Raises:
        DataError: naming a missing split folder, an empty class folder, a non-image file, or a
            class folder of val or test that train does not have.
    """
    suffixes = image_suffixes()
    found = {}
    for split in SPLITS:
        folder = root / split
        if split == "val" and not folder.exists():
            continue
        found[split] = scan_split(require_dir(folder, f"{split} split of the image folder"), suffixes)
    names = tuple(found["train"])
    index = {name: k for k, name in enumerate(names)}
    paths, codes, labels = [], [], []
    for split, classes in found.items():
        for name, files in classes.items():
            if name not in index:
                raise DataError(f"{root / split / name}: class {name!r} appears in {split} but not in train; "
                                "expected every class to have training images")
            paths += files
            codes += [SPLITS.index(split)] * len(files)
            labels += [index[name]] * len(files)
    return names, paths, np.asarray(codes, dtype=np.int64), np.asarray(labels, dtype=np.int64)


def cut_val(split: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Split codes with a class-stratified :data:`VAL_FRACTION` of train moved to val (seeded)."""
    train = np.flatnonzero(split == 0)
    parts = stratified_split(y[train], (1 - VAL_FRACTION, VAL_FRACTION), ("train", "val"),
                             np.random.default_rng(seed))
    out = split.copy()
    out[train[parts["val"]]] = 1
    return out


def groups_table(root: Path, paths: list[str]) -> Table | None:
    """ROOT/groups.csv with its rows in the order of ``paths`` (one row per image), or None if absent."""
    csv = root / GROUPS_FILE
    if not csv.is_file():
        return None
    table = read_delimited(csv)
    table.require(("file",))
    table.check_unique("file")
    rows = {os.path.normpath(f): i for i, f in enumerate(table.strings("file"))}
    order = []
    for path in paths:
        rel = os.path.relpath(path, root)
        if rel not in rows:
            raise DataError(f"{csv}: no row for image {rel!r}; expected one row per image file")
        order.append(rows.pop(rel))
    if rows:
        i = min(rows.values())
        raise DataError(f"{table.where(i, 'file')}: {table.strings('file')[i]!r} is not an image of the folder")
    return table.select(order)


def _grouping(root: Path, config: DataConfig, paths: list[str], y: np.ndarray,
              names: tuple[str, ...]) -> tuple[Grouping, torch.Tensor, list]:
    table = groups_table(root, paths)
    if table is None:
        if config.group_by:
            raise DataError(f"{root / GROUPS_FILE}: not found; `data.group_by` reads its attribute columns")
        grouping = Grouping.classes(names)
        return grouping, grouping.group_ids(torch.from_numpy(y)), []
    grouping, g = table_grouping(table, config, y, names)
    return grouping, g, file_stamp(table.path)


def build_imagefolder(config: DataConfig) -> DatasetBundle:
    """Read ``config.root`` in the layout of the module docstring."""
    root = require_dir(Path(config.root), "image folder")  # type: ignore[arg-type]
    names, paths, split, y = scan(root)
    if not config.allow_outside_root:  # os.walk follows links: where they lead must stay inside the root
        refuse_links_out(paths, root)
    has_val = (split == 1).any()
    if not has_val:
        split = cut_val(split, y, config.data_seed)
    grouping, g, stamp = _grouping(root, config, paths, y, names)
    size = config.image_size or DEFAULT_SIZE
    files = ImageFiles(paths, size=size)
    transform, augmentation = image_pipeline(size, augment=config.augment)
    listing = hashlib.sha256("\n".join(os.path.relpath(p, root) for p in paths).encode()).hexdigest()[:16]
    identity = {"root": str(root.resolve()), "listing": listing, "reader": repr(files), "groups": stamp,
                "group_by": config.group_by, "val": "folder" if has_val else f"cut {VAL_FRACTION}",
                "data_seed": None if has_val else config.data_seed}
    return make_bundle("imagefolder", grouping, (3, size, size), parts_by_split(split, y, g, loader=files),
                       identity=identity, transform=transform, augmentation=augmentation)


DATASETS["imagefolder"] = DatasetSpec(
    build_imagefolder, "your own images: ROOT/<split>/<class>/<file> (torchvision's ImageFolder)", True
)
