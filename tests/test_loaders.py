"""Samplers: seeded per epoch, group-balanced when asked."""

import pytest
import torch

from groupdistil.loaders import Started, epoch_loaders, eval_loader, splits_loader, train_loader


def _order(ds, **kw):
    return torch.cat([idx for *_, idx in train_loader(ds, 50, **kw)])


def test_order_depends_only_on_seed_and_epoch(blobs):
    a = _order(blobs.train, seed=1, epoch=3)
    torch.rand(10)  # global RNG use in between must not matter
    assert torch.equal(a, _order(blobs.train, seed=1, epoch=3))
    assert not torch.equal(a, _order(blobs.train, seed=1, epoch=4))
    assert sorted(a.tolist()) == list(range(len(blobs.train)))


def test_group_balanced_sampler_draws_groups_equally(blobs):
    counts = blobs.group_counts()
    assert counts.max() > 4 * counts.min()  # the fixture is imbalanced
    drawn = torch.zeros(4)
    for epoch in range(20):
        idx = _order(blobs.train, seed=0, epoch=epoch, sampler="group-balanced", n_groups=4)
        drawn += torch.bincount(blobs.train.g[idx], minlength=4)
    share = drawn / drawn.sum()
    assert torch.allclose(share, torch.full((4,), 0.25), atol=0.03)


@pytest.mark.parametrize("workers", [0, 2])
def test_one_loader_of_splits_gives_each_splits_own_batches(blobs, workers):
    parts = [blobs.train, blobs.val, blobs.test]
    got = list(splits_loader(parts, 50, num_workers=workers))
    want = [(k, b) for k, d in enumerate(parts) for b in eval_loader(d, 50)]
    assert len(got) == len(want) == 5 + 3 + 3  # 240 and 120 samples: partial last batches per split
    for (x, y, g, i, k), (split, (wx, wy, wg, wi)) in zip(got, want):
        assert k.tolist() == [split] * len(y)  # a batch never mixes two splits
        assert torch.equal(x, wx) and torch.equal(y, wy) and torch.equal(g, wg) and torch.equal(i, wi)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_pass_begun_early_gives_the_loaders_own_batches(blobs, workers):
    def batches(loader):
        return [torch.cat([i for *_, i in loader])]

    made = epoch_loaders(blobs.train, 50, seed=4, num_workers=workers)
    started = Started(made(0))
    torch.rand(10)  # the main process's RNG use in between changes nothing: the loader has its own
    fresh = epoch_loaders(blobs.train, 50, seed=4, num_workers=workers)
    first = batches(started)
    assert torch.equal(first[0], batches(fresh(0))[0])
    assert len(started) == len(fresh(0)) == 5
    assert torch.equal(batches(started)[0], first[0])  # a later pass is a new pass of the same epoch
    assert not torch.equal(batches(made(1))[0], first[0])  # and the next epoch moves on
