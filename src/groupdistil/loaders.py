"""Data loaders for training and evaluation, seeded per epoch so that a resumed run sees exactly the
batches an uninterrupted one would."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler, WeightedRandomSampler

from groupdistil import distributed
from groupdistil.data.base import GroupedDataset


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch): order and sampling never depend on history."""
    return torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch))


def group_balanced_weights(dataset: GroupedDataset, n_groups: int) -> torch.Tensor:
    """(N,) sampling weights 1 / n_{g_i}: every group is drawn equally often in expectation."""
    counts = dataset.counts(n_groups, "group").double()
    return 1.0 / counts.clamp_min(1)[dataset.g]


class DistributedWeightedSampler(Sampler[int]):
    """Group-balanced sampling under DDP: every rank draws the same global sample with the shared
    (seed, epoch) generator, then keeps its own strided share, so ranks never overlap."""

    def __init__(self, weights: torch.Tensor, num_samples: int, seed: int, epoch: int) -> None:
        self.weights = weights
        self.world, self.rank = distributed.world_size(), distributed.rank()
        self.per_rank = -(-num_samples // self.world)  # ceil: every rank takes the same number of steps
        self.total = self.per_rank * self.world
        self.generator = epoch_generator(seed, epoch)

    def __iter__(self):
        idx = torch.multinomial(self.weights, self.total, replacement=True, generator=self.generator)
        return iter(idx[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return self.per_rank


def train_loader(
    dataset: GroupedDataset,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    sampler: str = "shuffle",
    n_groups: int | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """The training loader of one epoch (``sampler``: ``shuffle`` or ``group-balanced``)."""
    gen = epoch_generator(seed, epoch)
    smp: Sampler[int] | None
    if sampler == "group-balanced":
        if n_groups is None:
            raise ValueError("n_groups: the group-balanced sampler needs the number of groups")
        w = group_balanced_weights(dataset, n_groups)
        if distributed.is_distributed():
            smp = DistributedWeightedSampler(w, len(dataset), seed, epoch)
        else:
            smp = WeightedRandomSampler(w, len(dataset), replacement=True, generator=gen)
    elif distributed.is_distributed():
        smp = torch.utils.data.DistributedSampler(dataset, shuffle=True, seed=int(seed), drop_last=False)
        smp.set_epoch(epoch)
    else:
        smp = torch.utils.data.RandomSampler(dataset, generator=gen)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=smp,
        num_workers=num_workers,
        generator=gen,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def eval_loader(dataset: GroupedDataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Sequential loader; under DDP each rank takes a disjoint strided share (metrics are all-reduced)."""
    ds = dataset.without_augmentation()
    if distributed.is_distributed():
        idx = list(range(distributed.rank(), len(ds), distributed.world_size()))
        ds = torch.utils.data.Subset(ds, idx)  # type: ignore[assignment]
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
