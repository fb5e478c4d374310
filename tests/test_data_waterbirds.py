"""Waterbirds reader on a tiny copy in the group DRO layout."""

from __future__ import annotations

import pytest
import torch

from conftest import write_csv
from groupdistil.data import DataConfig, load_dataset
from groupdistil.errors import DataError


def build(root, **kw):
    return load_dataset(DataConfig(**{"dataset": "waterbirds", "root": root, "image_size": 16, **kw}))


def test_groups_counts_and_lazy_images(waterbirds_root):
    b = build(waterbirds_root)
    assert b.grouping.group_names == ("landbird_land", "landbird_water", "waterbird_land", "waterbird_water")
    assert b.group_counts("train").tolist() == [2, 1, 1, 2]
    assert b.group_counts("val").tolist() == [1, 1, 0, 1]  # a group empty in one split
    assert b.group_counts("test").tolist() == [1, 0, 1, 1]
    assert any("differ from the published" in w for w in b.warnings)
    assert b.input_shape == (3, 16, 16)
    x, y, g, i = b.train[3]
    assert x.shape == (3, 16, 16) and (y, g, i) == (1, 2, 3)
    # Normalised with ImageNet statistics: a solid image stays constant per channel.
    assert torch.allclose(x[0], x[0, 0, 0].expand(16, 16), atol=1e-4)
    assert b.train.fingerprint() == build(waterbirds_root).train.fingerprint()
    assert b.train.fingerprint() != build(waterbirds_root, image_size=12).train.fingerprint()


def test_optional_columns_absent(tmp_path, waterbirds_root):
    rows = [["002.Laysan/img_0.jpg", 0, 0, 0], ["001.Black_footed_Albatross/img_3.jpg", 1, 1, 1]]
    write_csv(waterbirds_root / "metadata.csv", ["img_filename", "y", "split", "place"], rows)
    b = build(waterbirds_root)
    assert [len(b.splits[s]) for s in ("train", "val", "test")] == [1, 1, 0]
    assert b.val[0][0].shape == (3, 16, 16)


@pytest.mark.parametrize(
    "column,value,expected",
    [("y", "2", "expected 0 (landbird) or 1 (waterbird), got '2'"),
     ("split", "3", "column 'split': expected 0 (train)"),
     ("place", "", "expected a value, got a missing value")],
)  # fmt: skip
def test_bad_values_name_line_and_column(waterbirds_root, column, value, expected):
    path = waterbirds_root / "metadata.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[4].split(",")
    cells[header.index(column)] = value
    lines[4] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"metadata\.csv: line 5") as e:
        build(waterbirds_root)
    assert expected in str(e.value)


def test_duplicate_ids_missing_column_escape_and_corrupt_image(waterbirds_root):
    meta = waterbirds_root / "metadata.csv"
    header = ["img_id", "img_filename", "y", "split", "place"]
    write_csv(meta, header, [[1, "a.jpg", 0, 0, 0], [1, "b.jpg", 0, 0, 0]])
    with pytest.raises(DataError, match=r"line 3, column 'img_id': duplicate id '1' \(first at .*line 2\)"):
        build(waterbirds_root)
    write_csv(meta, ["img_filename", "y", "split"], [["a.jpg", 0, 0]])
    with pytest.raises(DataError, match="missing column 'place'"):
        build(waterbirds_root)
    write_csv(meta, ["img_filename", "y", "split", "place"], [["../secret.jpg", 0, 0, 0]])
    with pytest.raises(DataError, match="leaves"):
        build(waterbirds_root)
    (waterbirds_root / "bad.jpg").write_bytes(b"not a jpeg")
    write_csv(meta, ["img_filename", "y", "split", "place"], [["bad.jpg", 0, 0, 0]])
    with pytest.raises(DataError, match=r"bad\.jpg: not an image file"):
        build(waterbirds_root)  # every header is read when the data is loaded
    cfg = DataConfig(dataset="waterbirds", root=waterbirds_root, image_size=16)
    bundle = load_dataset(cfg, check_files=False)  # counting alone reads no image
    with pytest.raises(DataError, match=r"bad\.jpg: cannot decode image"):
        bundle.train[0]
