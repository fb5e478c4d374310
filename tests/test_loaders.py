"""Samplers: seeded per epoch, group-balanced when asked."""

import torch

from groupdistil.loaders import train_loader


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
