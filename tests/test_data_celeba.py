"""CelebA reader: both the .csv and the original .txt lists, configurable target and confounder."""

from __future__ import annotations

import pytest

from conftest import write_celeba
from groupdistil.data import DataConfig, load_dataset
from groupdistil.errors import DataError, UserError


def build(root, **kw):
    return load_dataset(DataConfig(dataset="celeba", root=root, image_size=8, **kw))


@pytest.mark.parametrize("variant", ["csv", "txt"])
def test_both_variants_give_the_same_groups(tmp_path, variant):
    b = build(write_celeba(tmp_path, variant))
    assert b.grouping.group_names == (
        "not_Blond_Hair_not_Male", "not_Blond_Hair_Male", "Blond_Hair_not_Male", "Blond_Hair_Male",
    )  # fmt: skip
    # train rows: blond female, dark male, dark male, blond male -> g = 2, 1, 1, 3
    assert b.group_counts("train").tolist() == [0, 2, 1, 1]
    assert b.group_counts("val").tolist() == [1, 0, 1, 0]
    assert b.group_counts("test").tolist() == [0, 1, 1, 0]
    assert b.train.g.tolist() == [2, 1, 1, 3]
    assert b.train[0][0].shape == (3, 8, 8)
    assert any("published" in w for w in b.warnings)


def test_other_target_and_confounder(tmp_path):
    b = build(write_celeba(tmp_path, "txt"), target_attr="Eyeglasses", confounder_attr="5_o_Clock_Shadow")
    assert b.grouping.class_names == ("not_Eyeglasses", "Eyeglasses")
    assert b.train.y.tolist() == [0, 0, 1, 0]
    assert b.train.g.tolist() == [0, 0, 3, 0]
    assert b.warnings == []  # published counts only apply to Blond_Hair x Male
    with pytest.raises(DataError, match=r"missing column 'Smiling' \(expected a CelebA attribute name"):
        build(tmp_path, target_attr="Smiling")
    with pytest.raises(UserError, match=r"`data\.confounder_attr`: expected an attribute other than the target"):
        build(tmp_path, target_attr="Male")


def test_partition_row_missing_and_bad_value(tmp_path):
    root = write_celeba(tmp_path, "txt")
    part = root / "list_eval_partition.txt"
    part.write_text("".join(part.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(DataError, match=r"txt: line 10, column 'image_id': image '000008\.jpg' has no"):
        build(root)
    attrs = root / "list_attr_celeba.txt"
    attrs.write_text(attrs.read_text().replace("000002.jpg -1 -1 -1  1", "000002.jpg -1 -1 -1  0"))
    with pytest.raises(DataError, match=r"line 4, column 'Male': expected -1 or 1, got '0'"):
        build(root)
