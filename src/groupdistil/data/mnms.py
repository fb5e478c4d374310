"""M&Ms cardiac MRI: 2D short-axis slices of the ED and ES frames, grouped by vendor or centre.

Layout: ``ROOT/<Split>/<code>/<code>_sa.nii.gz`` (4D x-y-z-t cine) with ``<Split>`` one of
``Training/Labeled`` (or ``Training``), ``Validation``, ``Testing``, and a metadata CSV in ROOT.
Building the bundle reads only NIfTI headers; a patient's slices are decoded, normalised per frame
volume and resized the first time one of them is asked for, then kept in memory (per process).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from groupdistil.data._bundle import SplitData, make_bundle
from groupdistil.data._io import Table, file_stamp, read_delimited, require_dir, require_file
from groupdistil.data._splits import stratified_split
from groupdistil.data.base import SPLITS, DatasetBundle
from groupdistil.data.options import DataConfig
from groupdistil.data.registry import DATASETS, DatasetSpec
from groupdistil.data.transforms import CenterCrop, Compose, RandomCrop, Resize
from groupdistil.errors import DataError
from groupdistil.groups import Grouping

CODE = "External code"
REQUIRED = (CODE, "Vendor", "Centre", "ED", "ES")
VENDORS = {"A": "A_Siemens", "B": "B_Philips", "C": "C_GE", "D": "D_Canon"}
SPLIT_FOLDERS = {"train": ("Training/Labeled", "Training"), "val": ("Validation",), "test": ("Testing",)}
#: Patient-level train/val/test shares when the release has only a Training folder.
DERIVED_FRACTIONS = (0.6, 0.2, 0.2)
#: Intensities are clipped to these percentiles of the frame volume before the z-score.
CLIP_PERCENTILES = (1.0, 99.0)
DEFAULT_SIZE = 128


def read_metadata(root: Path) -> Table:
    """The CSV in ROOT with an ``External code`` column (the diagnosis release first, if several)."""
    tables = [read_delimited(p) for p in sorted(root.glob("*.csv"))]
    tables = [t for t in tables if t.has(CODE)]
    if not tables:
        raise DataError(f"{root}: no M&Ms metadata CSV (expected a .csv with columns {', '.join(REQUIRED)})")
    table = next((t for t in tables if t.has("Pathology")), tables[0])
    table.require(REQUIRED)
    table.check_unique(CODE)
    return table


def find_patients(root: Path) -> tuple[list[tuple[str, Path]], list[str], bool]:
    """(code, volume path) and split folder of every patient, and whether the release has its own
    Validation and Testing folders (else every patient is in ``train`` for now)."""
    found: dict[str, Path | None] = {
        split: next((root / f for f in folders if (root / f).is_dir()), None)
        for split, folders in SPLIT_FOLDERS.items()
    }
    if found["train"] is None:
        raise DataError(f"{root}: M&Ms folder 'Training/Labeled' or 'Training' not found")
    if (found["val"] is None) != (found["test"] is None):
        missing = "Validation" if found["val"] is None else "Testing"
        raise DataError(f"{root}: folder {missing!r} not found (expected Validation and Testing, or neither)")
    patients, splits, seen = [], [], {}
    for split, folder in found.items():
        for d in sorted(p for p in (folder.iterdir() if folder else ()) if p.is_dir()):
            if d.name in seen:
                raise DataError(f"{d}: patient {d.name} is also in {seen[d.name]}; expected one folder each")
            seen[d.name] = d
            patients.append((d.name, require_file(d / f"{d.name}_sa.nii.gz", "short-axis cine")))
            splits.append(split)
    return patients, splits, found["val"] is not None


def _load(path: Path):  # -> nibabel image; its import costs a third of a second, so only here
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError or zlib errors
        raise DataError(f"{path}: not a readable NIfTI file ({e})") from None
    if len(img.shape) != 4:
        raise DataError(f"{path}: expected a 4D (x, y, z, t) cine volume, got shape {img.shape}")
    return img


def slice_range(n_slices: int, which: str) -> range:
    """All slices, or the central third (at least one): basal and apical slices show little ventricle."""
    if which == "all":
        return range(n_slices)
    lo = n_slices // 3
    return range(lo, max(lo + 1, -(-2 * n_slices // 3)))


class CineSlices:
    """Loader: sample i -> (1, S, S) float32 slice ``z[i]`` of frame ``t[i]`` of ``paths[i]``.

    Each frame volume is clipped to the 1st-99th percentile and z-scored, then slices are resized
    (shorter side) and centre-cropped to S. The first request for a patient decodes its whole file
    once (gzip cannot seek) and caches all of its samples.
    """

    reads_files = True  # loaders default to worker processes (loaders.default_workers)

    def __init__(self, paths: np.ndarray, frames: np.ndarray, slices: np.ndarray, size: int) -> None:
        self.paths, self.frames, self.slices, self.size = paths, frames, slices, size
        self._resize = Compose([Resize(size), CenterCrop(size)])
        self._by_path: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(paths):
            self._by_path[str(p)].append(i)
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, path: str) -> None:
        img = _load(Path(path))
        try:
            volume = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as e:  # truncated or corrupt data after a valid header
            raise DataError(f"{path}: cannot read the image data ({e})") from None
        normalised = {}
        for i in self._by_path[path]:
            t = int(self.frames[i])
            if t not in normalised:
                v = volume[..., t]
                v = np.clip(v, *np.percentile(v, CLIP_PERCENTILES))
                normalised[t] = ((v - v.mean()) / (v.std() or 1.0)).astype(np.float32)
            self._cache[i] = self._resize(torch.from_numpy(normalised[t][:, :, self.slices[i]].copy())[None])

    def __call__(self, i: int) -> torch.Tensor:
        if i not in self._cache:
            self._decode(str(self.paths[i]))
        return self._cache[i]

    def subset(self, index: np.ndarray) -> CineSlices:
        return CineSlices(self.paths[index], self.frames[index], self.slices[index], self.size)

    def __repr__(self) -> str:
        return f"CineSlices(n={len(self)}, size={self.size}, clip={CLIP_PERCENTILES}, zscore=frame)"


def _labels_and_groups(meta: Table, config: DataConfig) -> tuple[str, np.ndarray, Grouping]:
    """Task, (P,) patient pathology (or zeros for phase) and the grouping, for the selected rows."""
    task = config.task or ("pathology" if meta.has("Pathology") else "phase")
    if task == "pathology":
        meta.require(["Pathology"], " (needed by `data.task` pathology)")
        abnormal = np.array([v != "NOR" for v in meta.strings("Pathology")], dtype=np.int64)
        classes: tuple[str, ...] = ("normal", "abnormal")
    else:
        abnormal, classes = np.zeros(len(meta), dtype=np.int64), ("ED", "ES")
    if config.group_attr == "vendor":
        a = meta.mapped("Vendor", {k: n for n, k in enumerate(VENDORS)})
        names: list[str] = list(VENDORS.values())
    else:
        centres = meta.ints("Centre")
        values = sorted(set(centres.tolist()))
        a = np.searchsorted(values, centres)
        names = [f"centre_{c}" for c in values]
    return task, np.stack([abnormal, a]), Grouping.explicit(classes, names)


def _split_codes(splits: list[str], own: bool, strata: np.ndarray, seed: int) -> np.ndarray:
    """(P,) split code per patient: the release's folders, or a seeded patient-level stratified split,
    so that the slices of one patient never land in two splits."""
    if own:
        return np.array([SPLITS.index(s) for s in splits], dtype=np.int64)
    codes = np.empty(len(splits), dtype=np.int64)
    index = stratified_split(strata, DERIVED_FRACTIONS, SPLITS, np.random.default_rng(seed))
    for code, ix in enumerate(index.values()):
        codes[ix] = code
    return codes


def _samples(
    patients: list[tuple[str, Path]], meta: Table, task: str, patient_labels: np.ndarray, which: str
) -> list[tuple[str, int, int, int, int]]:
    """(path, frame, slice, label, patient) for every ED and ES slice; checks frames against headers."""
    ed, es = meta.ints("ED"), meta.ints("ES")
    out = []
    for p, (_, path) in enumerate(patients):
        _, _, n_slices, n_frames = _load(path).shape
        for phase, frame, column in ((0, int(ed[p]), "ED"), (1, int(es[p]), "ES")):
            if not 0 <= frame < n_frames:
                expected = f"a frame index in [0, {n_frames}) ({path.name} has {n_frames} frames)"
                raise meta.error(p, column, expected, frame)
            label = phase if task == "phase" else int(patient_labels[p])
            out.extend((str(path), frame, z, label, p) for z in slice_range(n_slices, which))
    return out


def build_mnms(config: DataConfig) -> DatasetBundle:
    """Samples are (patient, ED or ES frame, slice); label = pathology or phase; group = vendor or centre."""
    root = require_dir(config.root, "M&Ms folder")  # type: ignore[arg-type]
    table = read_metadata(root)
    patients, splits, own = find_patients(root)
    row_of = {code: i for i, code in enumerate(table.strings(CODE))}
    for code, path in patients:
        if code not in row_of:
            raise DataError(f"{path.parent}: patient {code!r} has no row in {table.path}")
    meta = table.select([row_of[code] for code, _ in patients])
    task, (abnormal, attr), grouping = _labels_and_groups(meta, config)
    split_of = _split_codes(splits, own, attr * 2 + abnormal, config.data_seed)
    samples = np.array(_samples(patients, meta, task, abnormal, config.slices), dtype=object).reshape(-1, 5)
    size = config.image_size or DEFAULT_SIZE
    patient = samples[:, 4].astype(np.int64)
    y = torch.from_numpy(samples[:, 3].astype(np.int64))
    g = grouping.group_ids(y, torch.from_numpy(attr[patient]))
    frame, z = samples[:, 1].astype(np.int64), samples[:, 2].astype(np.int64)
    loader = CineSlices(samples[:, 0].astype(str), frame, z, size)
    parts = {}
    for code, split in enumerate(SPLITS):
        ix = np.flatnonzero(split_of[patient] == code)
        parts[split] = SplitData(y[ix], g[ix], loader=loader.subset(ix))
    identity = {"task": task, "groups": config.group_attr, "slices": config.slices, "image_size": size,
                "data_seed": config.data_seed, "files": file_stamp(table.path)}  # fmt: skip
    augmentation = RandomCrop(size, padding=max(1, size // 8)) if config.augment else None
    return make_bundle("mnms", grouping, (1, size, size), parts, identity=identity, augmentation=augmentation)


DATASETS["mnms"] = DatasetSpec(build_mnms, "M&Ms cardiac MRI slices: pathology/phase by vendor/centre", True)
