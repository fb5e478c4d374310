"""M&Ms reader on tiny 4D NIfTI cines in both release layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import write_mnms
from groupdistil.data import SPLITS, DataConfig, load_dataset
from groupdistil.data.mnms import slice_range
from groupdistil.errors import DataError

RELEASE = {"Training/Labeled": ["A1", "A2", "A3", "A4"], "Validation": ["B1", "B2"], "Testing": ["C1", "C2"]}


def build(root, **kw):
    return load_dataset(DataConfig(**{"dataset": "mnms", "root": root, "image_size": 8, **kw}))


def test_slice_ranges():
    assert list(slice_range(6, "central")) == [2, 3]
    assert list(slice_range(12, "central")) == [4, 5, 6, 7]
    assert list(slice_range(1, "central")) == [0]
    assert list(slice_range(6, "all")) == list(range(6))


def test_release_folders_pathology_by_vendor(tmp_path):
    b = build(write_mnms(tmp_path, RELEASE))
    assert b.grouping.class_names == ("normal", "abnormal")
    assert b.grouping.group_names == ("A_Siemens", "B_Philips", "C_GE", "D_Canon")
    # 2 frames x 2 central slices = 4 samples per patient; patients alternate vendors A, B, C, D.
    assert [len(b.splits[s]) for s in SPLITS] == [16, 8, 8]
    assert b.group_counts("train").tolist() == [4, 4, 4, 4]
    assert b.group_counts("val").tolist() == [4, 4, 0, 0]  # vendors C and D absent from val
    assert b.class_counts("train").tolist() == [8, 8]
    x = b.train[0][0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    assert b.input_shape == (1, 8, 8)


def test_phase_task_centre_groups_all_slices(tmp_path):
    b = build(write_mnms(tmp_path, RELEASE), task="phase", group_attr="centre", slices="all")
    assert b.grouping.class_names == ("ED", "ES")
    assert b.grouping.group_names == ("centre_1", "centre_2", "centre_3")
    assert len(b.train) == 4 * 2 * 6
    assert b.class_counts("train").tolist() == [24, 24]


def test_per_volume_normalisation(tmp_path):
    # Size 10 = the slices' shorter side: no resampling, the centre crop drops 2 of 12 rows.
    b = build(write_mnms(tmp_path, {"Training": ["P1"]}, pathology=False), slices="all", image_size=10)
    # Without Validation/Testing the single patient lands in one split whole.
    split = next(s for s in SPLITS if len(b.splits[s]))
    ed = torch.stack([b.splits[split][i][0] for i in range(6)])  # the six ED slices
    assert ed.shape == (6, 1, 10, 10)
    assert abs(float(ed.mean())) < 0.1 and abs(float(ed.std()) - 1.0) < 0.1


def test_training_only_release_splits_patients(tmp_path):
    codes = [f"P{i:02d}" for i in range(20)]
    root = write_mnms(tmp_path, {"Training": codes}, pathology=False)
    b = build(root, data_seed=3)
    assert b.grouping.class_names == ("ED", "ES")  # no Pathology column -> phase task
    paths = {s: set(b.splits[s].loader.paths.tolist()) for s in SPLITS}
    assert sum(len(p) for p in paths.values()) == 20
    assert not (paths["train"] & paths["val"] or paths["train"] & paths["test"])
    assert not paths["val"] & paths["test"]
    assert [len(paths[s]) for s in SPLITS] == [12, 4, 4]
    other = build(root, data_seed=4)
    assert set(other.splits["val"].loader.paths.tolist()) != paths["val"]


def test_errors(tmp_path):
    root = write_mnms(tmp_path, RELEASE, frames=3)
    with pytest.raises(DataError, match=r"line 2, column 'ES': expected a frame index in \[0, 3\)"):
        build(root)
    meta = next(root.glob("*.csv"))
    meta.write_text(meta.read_text().replace(",3,", ",2,"))
    (root / "Testing" / "C2" / "C2_sa.nii.gz").write_bytes(b"\x1f\x8bcorrupt")
    with pytest.raises(DataError, match=r"C2_sa\.nii\.gz: not a readable NIfTI file"):
        build(root)
    (root / "Testing" / "C2").rename(root / "Validation" / "A1")
    with pytest.raises(DataError, match="patient A1 is also in"):
        build(root)


def test_missing_metadata_pieces(tmp_path):
    root = write_mnms(tmp_path, {"Training": ["P1", "P2"]})
    meta = next(root.glob("*.csv"))
    meta.write_text(meta.read_text().replace("P2,", "P9,"))
    with pytest.raises(DataError, match="patient 'P2' has no row in"):
        build(root)
    lines = meta.read_text().splitlines()
    meta.write_text("\n".join([lines[0].replace(",Centre", ",Site"), *lines[1:]]) + "\n")
    with pytest.raises(DataError, match="missing column 'Centre'"):
        build(root)
    meta.unlink()
    with pytest.raises(DataError, match="no M&Ms metadata CSV"):
        build(root)


def test_corrupt_volume_data_fails_on_decode(tmp_path):
    root = write_mnms(tmp_path, {"Training/Labeled": ["A1"], "Validation": ["B1"], "Testing": ["C1"]})
    path = root / "Validation" / "B1" / "B1_sa.nii.gz"
    import gzip

    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # valid header, truncated data
    b = build(root)
    assert np.isfinite(b.train[0][0].numpy()).all()
    with pytest.raises(DataError, match=r"B1_sa\.nii\.gz: cannot read the image data"):
        b.val[0]
