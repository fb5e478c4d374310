"""The generic manifest reader: CSV, TSV, Parquet; features or image paths; groups three ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import write_csv, write_image
from groupdistil.data import SPLITS, DataConfig, load_dataset
from groupdistil.errors import DataError

ROWS = [  # label, split, site, sex, f1, f2
    ["cat", "train", "A", "F", 1.0, 10],
    ["dog", "train", "B", "M", 2.0, 20],
    ["cat", "train", "B", "F", 3.0, 30],
    ["dog", "val", "A", "M", 4.0, 40],
    ["cat", "test", "A", "F", 5.0, 50],
    ["bird", "train", "A", "M", 6.0, 60],
]
HEADER = ["label", "split", "site", "sex", "f1", "f2"]


def build(path, **kw):
    return load_dataset(DataConfig(dataset="manifest", root=path, **kw))


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_string_labels_and_numeric_features(tmp_path, suffix):
    path = tmp_path / f"m{suffix}"
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({h: [r[i] for r in ROWS] for i, h in enumerate(HEADER)}), path)
    else:
        write_csv(path, HEADER, ROWS, delimiter="\t" if suffix == ".tsv" else ",")
    b = build(path)
    assert b.grouping.class_names == ("bird", "cat", "dog")  # sorted strings
    assert b.train.y.tolist() == [1, 2, 1, 0]
    assert b.grouping.kind == "class" and b.group_counts("train").tolist() == [1, 2, 1]
    assert b.input_shape == (2,)  # site and sex are text: not features
    x = b.train.inputs
    assert torch.allclose(x.mean(0), torch.zeros(2), atol=1e-6)  # standardised on train
    assert b.test[0][0].shape == (2,)


def test_group_by_with_and_without_label_and_group_column(tmp_path):
    path = write_csv(tmp_path / "m.csv", HEADER, ROWS)
    b = build(path, group_by=["site", "sex"])
    assert b.grouping.attr_names == ("site=A,sex=F", "site=A,sex=M", "site=B,sex=F", "site=B,sex=M")
    assert b.grouping.n_groups == 12
    assert b.train.g.tolist() == [1 * 4 + 0, 2 * 4 + 3, 1 * 4 + 2, 0 * 4 + 1]  # g = y * n_attr + a
    assert b.input_shape == (2,)
    b2 = build(path, group_by=["site"], group_with_label=False)
    assert b2.grouping.group_names == ("site=A", "site=B")
    assert b2.train.g.tolist() == [0, 1, 1, 0]
    write_csv(path, [*HEADER, "group"], [[*r, g] for r, g in zip(ROWS, [2, 0, 2, 0, 2, 0], strict=True)])
    b3 = build(path, features=["f2"])
    assert b3.grouping.group_names == ("group_0", "group_1", "group_2")
    assert b3.group_counts("train").tolist() == [2, 0, 2]  # group 1 empty everywhere
    assert b3.input_shape == (1,)


def test_integer_labels_and_image_paths(tmp_path):
    write_image(tmp_path / "img" / "a.png")
    write_image(tmp_path / "img" / "b.jpg", size=(20, 10))
    path = write_csv(
        tmp_path / "m.csv", ["id", "path", "label", "split"],
        [[1, "img/a.png", 0, "train"], [2, "img/b.jpg", 2, "train"], [3, "img/a.png", 2, "test"]],
    )  # fmt: skip
    b = build(path, image_size=6)
    assert b.grouping.class_names == ("0", "1", "2")
    assert b.class_counts("train").tolist() == [1, 0, 1]
    assert b.input_shape == (3, 6, 6) and b.train[1][0].shape == (3, 6, 6)
    assert len(b.val) == 0 and any("val split is empty" in w for w in b.warnings)


@pytest.mark.parametrize(
    "rows,message",
    [
        ([["0", "train"], ["1", "valid"]], r"line 3, column 'split': expected one of 'train', 'val', 'test'"),
        ([["0", "train"], ["1", "test"]], r"line 3, column 'label': label '1' appears in test but never in"),
        ([["0", "train"], ["", "train"]], r"line 3, column 'label': expected a value, got a missing value"),
        ([["0", "train"], ["-1", "train"]], r"line 3, column 'label': expected an integer >= 0"),
    ],
)  # fmt: skip
def test_bad_rows(tmp_path, rows, message):
    path = write_csv(tmp_path / "m.csv", ["label", "split", "f"], [[*r, 1.0] for r in rows])
    with pytest.raises(DataError, match=message):
        build(path)


def test_bad_files_and_columns(tmp_path):
    with pytest.raises(DataError, match=r"m\.csv: table not found"):
        build(tmp_path / "m.csv")
    with pytest.raises(DataError, match=r"expected a .csv, .tsv or .parquet file"):
        build(write_csv(tmp_path / "m.txt", ["label"], [[0]]))
    path = write_csv(tmp_path / "m.csv", ["label", "split", "f"], [[0, "train", 1.0], [0, "train", ""]])
    with pytest.raises(DataError, match="line 3, column 'f': expected a value, got a missing value"):
        build(path)
    with pytest.raises(DataError, match=r"missing column 'site' \(named by `data.group_by`"):
        build(path, group_by=["site"])
    write_csv(path, ["label", "split", "note"], [[0, "train", "x"]])
    with pytest.raises(DataError, match="no inputs; expected a 'path' column"):
        build(path)
    write_csv(path, ["id", "label", "split", "f"], [[7, 0, "train", 1.0], [7, 0, "train", 2.0]])
    with pytest.raises(DataError, match="line 3, column 'id': duplicate id '7'"):
        build(path)
    write_csv(path, ["path", "label", "split"], [["/etc/passwd", 0, "train"]])
    with pytest.raises(DataError, match=r"line 2, column 'path': path '/etc/passwd' leaves"):
        build(path)
    with pytest.raises(DataError, match=r"/etc/passwd: not an image file"):  # allowed out, still checked
        build(path, allow_outside_root=True)
    cfg = DataConfig(dataset="manifest", root=path, allow_outside_root=True)
    assert len(load_dataset(cfg, check_files=False).train) == 1


def test_large_manifest_builds_without_opening_images(tmp_path, monkeypatch):
    # Its speed is measured in benchmarks/bench_e2e.py (data inspect of 200k rows against csv parsing).
    import PIL.Image

    def refuse(*args, **kwargs):
        raise AssertionError("an image was opened while building or counting")

    monkeypatch.setattr(PIL.Image, "open", refuse)
    n = 200_000
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, n)
    splits = np.array(SPLITS)[rng.integers(0, 3, n)]
    labels[:5], splits[:5] = np.arange(5), "train"
    with open(tmp_path / "big.csv", "w") as f:
        f.write("path,label,split,site\n")
        f.writelines(f"missing/{i}.jpg,{labels[i]},{splits[i]},s{i % 3}\n" for i in range(n))
    # Counting (data inspect) reads no header; a run checks them (test_data_safety.py).
    b = load_dataset(DataConfig(dataset="manifest", root=tmp_path / "big.csv", group_by=["site"]), check_files=False)
    counts = {s: b.group_counts(s).sum().item() for s in SPLITS}
    assert sum(counts.values()) == n
    assert b.class_counts("train").sum().item() == counts["train"]
    with pytest.raises(AssertionError, match="an image was opened"):
        b.train[0]
