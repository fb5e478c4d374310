"""The built-in digit benchmarks: determinism, split fractions and the group structure FORMATS.md fixes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from groupdistil.data import SPLITS, DataConfig, load_dataset
from groupdistil.data._splits import long_tail_counts
from groupdistil.data.digits import BACKGROUNDS, REVERSED_SHARES, SCANNER_SHARES, _digits

NAMES = ("spurious-digits", "scanner-digits", "scanner-digits-reversed", "digits-lt")


def build(name: str, seed: int = 0, **kw):
    return load_dataset(DataConfig(dataset=name, data_seed=seed, **kw))


def test_digits_match_scikit_learn():
    from sklearn.datasets import load_digits

    d = load_digits()
    ink, digit = _digits()
    assert np.array_equal(ink, (d.images / 16.0).astype(np.float32))
    assert np.array_equal(digit, d.target)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_per_seed(name):
    # Build time is measured in benchmarks/bench_e2e.py, not asserted here.
    a = build(name, seed=3)
    b, c = build(name, seed=3), build(name, seed=4)
    for split in SPLITS:
        assert a.splits[split].fingerprint() == b.splits[split].fingerprint()
        assert torch.equal(a.splits[split].inputs, b.splits[split].inputs)
    assert any(a.splits[s].fingerprint() != c.splits[s].fingerprint() for s in SPLITS)


@pytest.mark.parametrize("name,shape", [("spurious-digits", (3, 8, 8)), ("scanner-digits", (1, 8, 8))])
def test_items_and_split_fractions(name, shape):
    bundle = build(name)
    assert bundle.input_shape == shape
    x, y, g, i = bundle.train[5]
    assert x.shape == shape and x.dtype == torch.float32 and i == 5
    assert isinstance(y, int) and isinstance(g, int)
    assert float(bundle.train.inputs.min()) >= -1.0 and float(bundle.train.inputs.max()) <= 1.0
    sizes = {s: len(bundle.splits[s]) for s in SPLITS}
    assert sum(sizes.values()) == 1797
    for split, frac in zip(SPLITS, (0.5, 0.2, 0.3), strict=True):
        assert abs(sizes[split] / 1797 - frac) < 0.01
    assert bundle.warnings == []


def test_splits_are_stratified_by_digit():
    # scanner-digits keeps the digit as label, so per-digit shares are visible directly.
    bundle = build("scanner-digits", seed=1)
    total = sum(bundle.class_counts(s) for s in SPLITS)
    assert total.tolist() == np.bincount(_digits()[1]).tolist()
    share = bundle.class_counts("train").float() / total.float()
    assert torch.all((share - 0.5).abs() <= 1.0 / total.float() + 1e-6)


def test_spurious_correlation_train_and_balanced_eval():
    bundle = build("spurious-digits", seed=2)
    assert bundle.grouping.group_names == (
        "digit0-4_bg_orange", "digit0-4_bg_blue", "digit5-9_bg_orange", "digit5-9_bg_blue",
    )  # fmt: skip
    train = bundle.train
    a = train.g % 2
    agreement = float((a == train.y).float().mean())
    assert abs(agreement - 0.95) < 0.005
    for split in ("val", "test"):
        c = bundle.group_counts(split)
        assert abs(int(c[0]) - int(c[1])) <= 1 and abs(int(c[2]) - int(c[3])) <= 1
        assert min(c.tolist()) > 0
    # The attribute is the background: a corner pixel (no ink in most digits) has the group's colour.
    corner = (train.inputs[:, :, 0, 0] * 0.5 + 0.5).numpy()
    expected = BACKGROUNDS[a.numpy()]
    assert np.mean(np.all(np.abs(corner - expected) < 1e-5, axis=1)) > 0.9


def test_scanner_shares_and_transforms():
    bundle = build("scanner-digits", seed=0)
    train = bundle.group_counts("train")
    n = int(train.sum())
    assert np.allclose(train.numpy() / n, SCANNER_SHARES, atol=1.0 / n)
    for split in ("val", "test"):
        c = bundle.group_counts(split)
        assert int(c.max()) - int(c.min()) <= 1
    # Scanner A is the identity; B inverts (mostly-background images turn bright).
    x, g = bundle.train.inputs * 0.5 + 0.5, bundle.train.g
    ink = _digits()[0]
    assert float(x[g == 0].mean()) < 0.4 < float(x[g == 1].mean())
    raw = {tuple(np.round(im.ravel(), 5)) for im in ink}
    assert all(tuple(np.round(im.ravel().numpy(), 5)) in raw for im in x[g == 0][:20])
    assert not any(tuple(np.round(im.ravel().numpy(), 5)) in raw for im in x[g == 2][:20])


def test_scanner_reversed_shares_same_digits_and_scanners():
    rev, ref = build("scanner-digits-reversed", seed=0), build("scanner-digits", seed=0)
    assert REVERSED_SHARES == (0.03, 0.07, 0.35, 0.55)
    train = rev.group_counts("train")
    n = int(train.sum())
    assert np.allclose(train.numpy() / n, REVERSED_SHARES, atol=1.0 / n)
    for split in SPLITS:
        # The same digits in every split; only which scanner saw each image changes.
        assert torch.equal(rev.splits[split].y, ref.splits[split].y)
    for split in ("val", "test"):
        c = rev.group_counts(split)
        assert int(c.max()) - int(c.min()) <= 1
    # Scanner A is still the identity, scanner C still blurs and adds noise.
    x, g = rev.train.inputs * 0.5 + 0.5, rev.train.g
    raw = {tuple(np.round(im.ravel(), 5)) for im in _digits()[0]}
    assert all(tuple(np.round(im.ravel().numpy(), 5)) in raw for im in x[g == 0])
    assert not any(tuple(np.round(im.ravel().numpy(), 5)) in raw for im in x[g == 2][:20])


def test_long_tail_counts_and_balanced_eval():
    assert long_tail_counts(100, 10, 10.0).tolist() == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    bundle = build("digits-lt", seed=5)
    train = bundle.class_counts("train")
    n_max = int(train.max())
    assert sorted(train.tolist(), reverse=True) == long_tail_counts(n_max, 10, 10.0).tolist()
    assert torch.equal(bundle.group_counts("train"), train)
    for split in ("val", "test"):
        c = bundle.class_counts(split)
        assert int(c.min()) == int(c.max()) > 0
    other = build("digits-lt", seed=6).class_counts("train")
    assert torch.argsort(train).tolist() != torch.argsort(other).tolist()  # class order follows the seed


def test_augmentation_on_train_only():
    bundle = build("spurious-digits", augment=True)
    assert bundle.train.has_random_augmentation
    assert not bundle.val.has_random_augmentation
    plain = bundle.train.without_augmentation()
    assert not plain.has_random_augmentation and bundle.train.has_random_augmentation
    torch.manual_seed(0)
    draws = {tuple(bundle.train[0][0].flatten().tolist()) for _ in range(10)}
    assert len(draws) > 1
    assert torch.equal(plain[0][0], bundle.train.inputs[0])
