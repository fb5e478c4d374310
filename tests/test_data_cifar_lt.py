"""CIFAR-10-LT / CIFAR-100-LT from full-size synthetic pickles (50000 x 3072 uint8 training sets)."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from groupdistil.data import DataConfig, load_dataset
from groupdistil.errors import DataError


def _dump(path, obj, protocol=pickle.HIGHEST_PROTOCOL):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """Both layouts; labels shuffled, pixel value = label so the kept images can be checked."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    c10 = root / "cifar-10-batches-py"
    c10.mkdir()
    labels = rng.permutation(np.repeat(np.arange(10), 5000))
    for b in range(5):
        y = labels[b * 10000 : (b + 1) * 10000]
        data = np.repeat(y.astype(np.uint8)[:, None], 3072, axis=1)
        _dump(c10 / f"data_batch_{b + 1}", {b"batch_label": b"x", b"labels": y.tolist(), b"data": data})
    test_y = rng.permutation(np.repeat(np.arange(10), 1000))
    _dump(c10 / "test_batch", {b"labels": test_y.tolist(), b"data": np.zeros((10000, 3072), np.uint8)})
    # Protocol 2, as the distributed (Python 2) files; the big files use a fast protocol.
    _dump(c10 / "batches.meta", {b"label_names": [f"name{k}".encode() for k in range(10)]}, protocol=2)
    c100 = root / "cifar-100-python"
    c100.mkdir()
    y100 = rng.permutation(np.repeat(np.arange(100), 500))
    _dump(c100 / "train", {b"fine_labels": y100.tolist(), b"data": np.zeros((50000, 3072), np.uint8)})
    test_y100 = np.repeat(np.arange(100), 100).tolist()
    test100 = {b"fine_labels": test_y100, b"data": np.zeros((10000, 3072), np.uint8)}
    _dump(c100 / "test", test100)
    return root


def test_cifar10_lt_published_size_and_eval_halves(cifar_root):
    b = load_dataset(DataConfig(dataset="cifar10-lt", root=cifar_root))
    assert len(b.train) == 12406
    assert b.class_counts("train").tolist() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert torch.equal(b.group_counts("train"), b.class_counts("train"))
    assert b.class_counts("val").tolist() == [500] * 10 and b.class_counts("test").tolist() == [500] * 10
    assert b.grouping.class_names[3] == "name3"
    x, y, g, _ = b.train[100]
    assert x.shape == (3, 32, 32) and y == g
    raw = b.train.loader(100)
    assert torch.allclose(raw, torch.full_like(raw, y / 255.0))  # the stored image of that class
    again = load_dataset(DataConfig(dataset="cifar10-lt", root=cifar_root, data_seed=7))
    assert again.val.fingerprint() == b.val.fingerprint()  # the eval halves do not follow data_seed
    r10 = load_dataset(DataConfig(dataset="cifar10-lt", root=cifar_root, imbalance_ratio=10))
    assert r10.class_counts("train").tolist()[-1] == 500


def test_cifar100_lt_published_size(cifar_root):
    b = load_dataset(DataConfig(dataset="cifar100-lt", root=cifar_root))
    assert len(b.train) == 10847
    assert b.class_counts("train")[[0, 99]].tolist() == [500, 5]
    assert b.grouping.class_names[:2] == ("0", "1")  # meta file absent: class numbers
    assert len(b.val) == len(b.test) == 5000


def test_pickles_are_read_safely_and_checked(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo unsafe",))

    _dump(folder / "train", {b"fine_labels": [0], b"data": Payload()})
    with pytest.raises(DataError, match=r"train: not a readable data pickle \(refusing to load global posix"):
        load_dataset(DataConfig(dataset="cifar100-lt", root=tmp_path))
    _dump(folder / "train", {b"fine_labels": [0, 100], b"data": np.zeros((2, 3072), np.uint8)}, protocol=2)
    with pytest.raises(DataError, match=r"b'fine_labels' entry 1: expected a class in \[0, 100\), got 100"):
        load_dataset(DataConfig(dataset="cifar100-lt", root=tmp_path))
    _dump(folder / "train", {b"fine_labels": [0], b"data": np.zeros((1, 100), np.uint8)})
    with pytest.raises(DataError, match=r"expected an \(N, 3072\) uint8 array"):
        load_dataset(DataConfig(dataset="cifar100-lt", root=tmp_path))
    (folder / "train").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="not a readable data pickle"):
        load_dataset(DataConfig(dataset="cifar100-lt", root=tmp_path))
