"""Data loaders for training and evaluation, seeded per epoch so that a resumed run sees exactly the
batches an uninterrupted one would, and a run on N ranks exactly the global batches of one process."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from groupdistil._omp import local_cores
from groupdistil.data.base import GroupedDataset
from groupdistil.parallel import distributed

SAMPLERS = ("shuffle", "group-balanced")
#: The smallest batch :func:`pass_batch_size` cuts: below it a GPU spends more time per batch than per
#: image, and the CPU kernels differ (see there).
MIN_PASS_BATCH = 32


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A generator that depends only on (seed, epoch): order and sampling never depend on history.

    ``stream`` gives independent generators for the same epoch (one per rank's loader workers).
    """
    return torch.Generator().manual_seed(int(seed) * 100_003 + int(epoch) + int(stream) * 1_000_000_007)


def group_balanced_weights(dataset: GroupedDataset, n_groups: int) -> torch.Tensor:
    """(N,) sampling weights 1 / n_{g_i}: every group is drawn equally often in expectation."""
    counts = dataset.counts(n_groups, "group").double()
    return 1.0 / counts.clamp_min(1)[dataset.g]


class GlobalBatchSampler(Sampler[list[int]]):
    """One rank's batches, cut from the global batches that a single process would draw.

    The epoch's order depends on (seed, epoch) only, so every rank draws the same one: a permutation
    (``weights`` None) or ``len`` draws with replacement in proportion to ``weights`` (group-balanced).
    It is cut into global batches of ``world * batch_size`` samples and rank r takes the r-th of
    ``world`` contiguous parts of each. The union over ranks of step k's batches is therefore the k-th
    batch of one process with batch ``world * batch_size``; with the objectives' global sums this makes
    a run on N ranks follow the single-process run (docs/distributed.md).

    A last global batch is split as evenly as possible (local sizes differ by at most one; the
    objectives are exact for unequal sizes). A last global batch with fewer samples than ranks would
    leave some rank without a sample, so it is dropped on every rank: a single process with the same
    global batch trains on those ``< world`` samples, the distributed run does not.

    Args:
        n: samples per epoch (the dataset's length). batch_size: per-rank batch size.
        seed, epoch: the order's seed. weights: (n,) sampling weights, or None for a permutation.
        rank, world: this rank and the number of ranks (default: the current process group's).
        skip: global batches to leave out at the start (a run resumed from a mid-epoch checkpoint).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        weights: torch.Tensor | None = None,
        rank: int | None = None,
        world: int | None = None,
        skip: int = 0,
    ) -> None:
        self.n = int(n)
        self.skip = int(skip)
        self.batch_size = int(batch_size)
        self.seed, self.epoch = int(seed), int(epoch)
        self.weights = weights
        self.rank = distributed.rank() if rank is None else int(rank)
        self.world = distributed.world_size() if world is None else int(world)
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank: expected 0 <= rank < world ({self.world}), got {self.rank}")

    def order(self) -> torch.Tensor:
        """(n,) the epoch's global order of dataset indices (the same on every rank)."""
        gen = epoch_generator(self.seed, self.epoch)
        # Skip the draw that torch's DataLoader used to take from this generator (its workers' base
        # seed) before the order: single-process runs, and checkpoints made before the sampler was
        # distributed, keep the orders they have always had.
        torch.empty((), dtype=torch.int64).random_(generator=gen)
        if self.weights is None:
            return torch.randperm(self.n, generator=gen)
        return torch.multinomial(self.weights, self.n, replacement=True, generator=gen)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order()
        step = self.world * self.batch_size
        for start in range(self.skip * step, self.n, step):
            chunk = order[start : start + step]
            if len(chunk) < self.world:
                return
            yield chunk.tensor_split(self.world)[self.rank].tolist()

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.world * self.batch_size)
        return max(0, full + int(rest >= self.world) - self.skip)


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
    persistent_workers: bool = False,
    skip: int = 0,
) -> DataLoader:
    """This rank's training loader of one epoch (``sampler``: ``shuffle`` or ``group-balanced``);
    ``batch_size`` is per rank (see :class:`GlobalBatchSampler`); the first ``skip`` batches left out."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: expected one of {', '.join(SAMPLERS)}, got {sampler!r}")
    weights = None
    if sampler == "group-balanced":
        if n_groups is None:
            raise ValueError("n_groups: the group-balanced sampler needs the number of groups")
        weights = group_balanced_weights(dataset, n_groups)
    batches = GlobalBatchSampler(len(dataset), batch_size, seed=seed, epoch=epoch, weights=weights, skip=skip)
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        # Seeds the workers' augmentation: one stream per rank, or every rank would draw the same
        # random crops (for different samples) in lockstep.
        generator=epoch_generator(seed, epoch, stream=distributed.rank()),
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
    )


def default_workers(dataset: GroupedDataset, requested: int | None = None) -> int:
    """``requested``, or by default: the machine's cores shared by the ranks of this machine for data
    decoded from files (a loader with ``reads_files``: decoding is the bottleneck), else 0 (in-memory
    tensors: a worker would only copy them)."""
    if requested is not None:
        return requested
    if not getattr(dataset.loader, "reads_files", False):
        return 0
    return local_cores()


class EpochLoaders:
    """``(epoch, skip=0) -> loader`` of :func:`train_loader` (``options`` are its keywords), without the
    epoch's first ``skip`` batches (a run resumed from a mid-epoch checkpoint).

    Without random augmentation, one loader serves every epoch: its workers persist (no start-up per
    epoch) and its sampler moves to each epoch's order. With random augmentation every epoch gets
    fresh workers seeded by (seed, epoch), so a resumed run draws the same crops as an uninterrupted
    one (persistent workers would carry their random state over from the epochs before). Batches are
    skipped in the sampler, without loading them, except where loader workers draw random crops:
    there they are loaded and dropped, so that each worker's random stream is where it was.

    With ``hold_bytes`` > 0, a split read from files without random augmentation, in one process,
    keeps the inputs its epochs decode (:class:`HeldInputs`, when they fit in ``hold_bytes``; see
    :func:`holder`); once every sample has been decoded, later epochs read them from memory, without
    workers: the same samples in the same batches, so the same run. Under torchrun a rank decodes other
    samples every epoch, so nothing is held there. ``held``, instead of ``hold_bytes``: a holder that
    an earlier pass over the split may have filled already (the teacher's, :func:`held_pass`).
    """

    def __init__(self, dataset: GroupedDataset, batch_size: int, *, seed: int, num_workers: int,
                 hold_bytes: int = 0, held: HeldInputs | None = None, **options: object) -> None:
        self.dataset, self.batch_size, self.seed, self.num_workers = dataset, batch_size, seed, num_workers
        self.options = options
        self.persist = num_workers > 0 and not dataset.has_random_augmentation
        self.kept: DataLoader | None = None  # the loader whose workers persist
        self.held = held if held is not None else holder(dataset, hold_bytes)

    def __call__(self, epoch: int, skip: int = 0) -> Iterable[Any]:
        if self.held is not None and self.held.whole:
            self.kept = None  # its workers end with it
            return train_loader(self.held.dataset(), self.batch_size, seed=self.seed, epoch=epoch, skip=skip,
                                **self.options)  # type: ignore[arg-type]
        made = self._reading(epoch, skip)
        return self.held.keeping(made) if self.held is not None else made

    def _reading(self, epoch: int, skip: int) -> Iterable[Any]:
        """The epoch's loader over the files."""
        if self.kept is not None:
            self.kept.batch_sampler.epoch = epoch  # type: ignore[union-attr]
            self.kept.batch_sampler.skip = skip  # type: ignore[union-attr]
            return self.kept
        replay = skip > 0 and self.num_workers > 0 and self.dataset.has_random_augmentation
        made = train_loader(self.dataset, self.batch_size, seed=self.seed, epoch=epoch,
                            num_workers=self.num_workers, persistent_workers=self.persist,
                            skip=0 if replay else skip, **self.options)  # type: ignore[arg-type]
        if self.persist:
            self.kept = made
        return _Dropping(made, skip) if replay else made


class HeldInputs:
    """A split's inputs kept by index as the batches that decode them go by: an (N, ...) tensor and
    which of its rows are filled. Nothing is kept when the whole split would take more than
    ``max_bytes`` (``train.hold_decoded_gb``)."""

    def __init__(self, split: GroupedDataset, max_bytes: int) -> None:
        self.split = split
        self.max_bytes = int(max_bytes)
        self.inputs: torch.Tensor | None = None
        self.filled: torch.Tensor | None = None  # (N,) bool
        self.refused = False

    @property
    def whole(self) -> bool:
        """Whether every sample's input is kept."""
        return self.filled is not None and bool(self.filled.all())

    def keep(self, batch: Sequence[Any]) -> None:
        """Keep the inputs of a batch ``(x, y, g, i)``: x (B, ...), i (B,) the samples' indices."""
        if self.refused:
            return
        x, i = batch[0], batch[3]
        if self.inputs is None:
            if len(self.split) * x[0].numel() * x.element_size() > self.max_bytes:
                self.refused = True
                return
            self.inputs = torch.empty((len(self.split), *x.shape[1:]), dtype=x.dtype)
            self.filled = torch.zeros(len(self.split), dtype=torch.bool)
        self.inputs[i] = x
        self.filled[i] = True  # type: ignore[index]

    def dataset(self) -> GroupedDataset:
        """The split with the held inputs in memory (once :attr:`whole`)."""
        if not self.whole:
            raise ValueError("HeldInputs: the inputs of some samples are not held")
        return self.split.with_inputs(self.inputs)  # type: ignore[arg-type]

    def keeping(self, loader: Iterable[Any]) -> Iterable[Any]:
        """``loader``'s batches, whose inputs this keeps as they go by (``loader`` itself once refused)."""
        return loader if self.refused else _Keeping(loader, self)


def holder(dataset: GroupedDataset, hold_bytes: int) -> HeldInputs | None:
    """A :class:`HeldInputs` for a training split whose inputs can be held: read from files, without
    random augmentation (the crops differ every epoch), in one process (a rank reads another share
    every epoch), with ``hold_bytes`` > 0; else None."""
    holds = (hold_bytes > 0 and dataset.inputs is None and not dataset.has_random_augmentation
             and not distributed.is_distributed())
    return HeldInputs(dataset, hold_bytes) if holds else None


def held_pass(loader: Iterable[Any], held: HeldInputs | None, batch_size: int) -> Iterable[Any]:
    """A sequential pass of ``batch_size`` over the split that ``held`` holds, outside the training
    epochs (a teacher's logits): from memory when every input is held (:class:`SlicedPass`, the
    loader's own batches), else ``loader``'s batches, whose inputs ``held`` keeps as they go by, for the
    passes after it. ``loader`` must cut that split, without augmentation, into batches of
    ``batch_size`` in order."""
    if held is None:
        return loader
    return SlicedPass(held.dataset(), batch_size) if held.whole else held.keeping(loader)


class _Keeping:
    """A loader whose batches' inputs go to a :class:`HeldInputs` as they pass. Its pass begins at
    ``iter()`` (the workers start then, as :class:`Started` needs)."""

    def __init__(self, loader: Iterable[Any], held: HeldInputs) -> None:
        self.loader, self.held = loader, held

    def __iter__(self) -> Iterator[Any]:
        return self._pass(iter(self.loader))

    def _pass(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self.held.keep(batch)
            yield batch

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]


class Started:
    """A loader whose first pass has begun: its workers are started and decoding the first batches.

    Iterating it the first time returns that pass; later times, fresh passes of the loader. Built before
    slow set-up in the main process (torch's first optimiser imports ``torch._dynamo``, seconds of one
    core), it lets the workers decode meanwhile. The batches are the loader's own: its sampler and
    worker seeds come from its own generators, not from when the pass begins."""

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader
        self._first: Iterator[Any] | None = iter(loader)

    def __iter__(self) -> Iterator[Any]:
        first, self._first = self._first, None
        return first if first is not None else iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]


class _Dropping:
    """A loader whose first ``skip`` batches are loaded and dropped."""

    def __init__(self, loader: DataLoader, skip: int) -> None:
        self.loader, self.skip = loader, skip

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.loader), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.loader) - self.skip)


def pass_batch_size(n: int, batch_size: int, num_workers: int) -> int:
    """The batch size of a sequential pass over ``n`` samples (an evaluation, or decoding a split
    into memory): at most ``batch_size``; with loader workers, the pass is cut into a multiple of
    ``num_workers`` batches of near-equal size, of at least :data:`MIN_PASS_BATCH` samples.

    A batch is the unit a worker decodes, so a pass whose batches do not share out evenly waits for
    the busiest worker: 250 validation images in one batch of 256 are decoded by one of 16 workers
    while the others idle, and 19 batches of 256 take two rounds of 16 where 32 batches of 150 take
    the time of 300 images. In-memory data (no workers) keeps ``batch_size``.

    Only metrics (accuracies, counts) or decoded images come out of such a pass: a batch size can move
    a logit in its last bits (the CPU kernels of batches of 1, or MobileNet's of 7;
    tests/test_loaders.py), which leaves predictions alone, and decoding is per image. A teacher's
    logits, which a student learns from, keep the batch size the run asks for, so that they do not
    depend on the machine's cores."""
    if num_workers <= 0 or n <= 0:
        return batch_size
    batches = num_workers * -(-n // (num_workers * batch_size))
    return max(min(batch_size, MIN_PASS_BATCH), -(-n // batches))


def eval_loader(
    dataset: GroupedDataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False,
    persistent_workers: bool = False,
) -> DataLoader | SlicedPass:
    """Sequential loader of batches of at most ``batch_size`` (:func:`pass_batch_size`); under DDP each
    rank takes a disjoint strided share (metrics are all-reduced), and the shares together hold every
    sample exactly once. With ``persistent_workers`` (and workers) one loader serves many passes
    without starting its workers again: the view has no augmentation, so nothing random carries over
    between passes. A split whose inputs are in memory as they are (no transform), in one process, is
    cut into the same batches as views of its rows (:class:`SlicedPass`): no workers, nothing copied."""
    sliced = sliced_pass(dataset, batch_size, num_workers)
    if sliced is not None:
        return sliced
    ds = dataset.without_augmentation()
    if distributed.is_distributed():
        ds = torch.utils.data.Subset(ds, _rank_share(len(ds)))  # type: ignore[assignment]
    return DataLoader(ds, batch_size=pass_batch_size(len(ds), batch_size, num_workers), shuffle=False,
                      num_workers=num_workers, pin_memory=pin_memory,
                      persistent_workers=persistent_workers and num_workers > 0)


def sliced_pass(dataset: GroupedDataset, batch_size: int, num_workers: int = 0) -> SlicedPass | None:
    """:func:`eval_loader`'s batches of ``dataset`` as views of its rows, where its inputs are in memory
    as they are (no transform) and one process reads it all; else None."""
    ds = dataset.without_augmentation()
    if distributed.is_distributed() or ds.inputs is None or ds.transform is not None:
        return None
    return SlicedPass(ds, pass_batch_size(len(ds), batch_size, num_workers))


class SlicedPass:
    """The batches ``(x, y, g, i)`` of a sequential loader of ``batch_size`` over an in-memory split
    whose items are its rows as they are (no transform, no augmentation), each a view of
    ``batch_size`` consecutive rows: x (B, ...), y, g and i (B,) int64, equal to what the loader's
    per-sample collation would copy together (a 224 px pass over 1,600 held images: 0.06 s instead
    of 0.54 s on 2 cores, benchmarks/results/perf-notes.md). The rows are not copied, so a model must
    not write into its input (none of ours does)."""

    def __init__(self, dataset: GroupedDataset, batch_size: int) -> None:
        if dataset.inputs is None or dataset.transform is not None or dataset.has_random_augmentation:
            raise ValueError("SlicedPass: expected a split whose inputs are in memory as they are")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected at least 1, got {batch_size}")
        self.dataset, self.batch_size = dataset, int(batch_size)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        ds, b = self.dataset, self.batch_size
        for j in range(0, len(ds), b):
            k = min(j + b, len(ds))
            yield ds.inputs[j:k], ds.y[j:k], ds.g[j:k], torch.arange(j, k)  # type: ignore[index]


class HeldPasses:
    """A sequential loader whose first whole pass is kept in memory and replayed by every later one: a
    split read from files is decoded once for all the passes over it (every epoch's validation, then
    the final evaluation), instead of once a pass.

    The batches are the loader's own, so every pass sees the same batches in the same order. The first
    pass keeps them while they fit in ``max_bytes``; a pass that ends early keeps nothing, and a split
    that does not fit is read from ``loader`` at every pass. Once a pass is kept the loader is let go,
    and with it any workers it kept alive.

    Args:
        loader: a sequential loader whose batches are the same at every pass (no augmentation).
        max_bytes: the most bytes of tensors to keep (``train.hold_decoded_gb``).
    """

    def __init__(self, loader: Iterable[Any], max_bytes: int) -> None:
        self.loader: Iterable[Any] | None = loader
        self.max_bytes = int(max_bytes)
        self.batches: list[Any] | None = None  # the whole pass, once kept

    @property
    def held(self) -> bool:
        """Whether a whole pass is in memory."""
        return self.batches is not None

    def __len__(self) -> int:
        return len(self.batches if self.batches is not None else self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        if self.batches is not None:
            return iter(self.batches)
        return self._read()

    def inputs(self) -> torch.Tensor | None:
        """(N, ...) the held pass's inputs in one tensor, in the pass's order (its first pass is made
        now if it was not), or None when the pass is not held. The held batches become views of it,
        so the inputs are in memory once."""
        if self.batches is None:
            for _ in self:
                pass
        if self.batches is None:
            return None
        whole = torch.cat([b[0] for b in self.batches])
        sizes = [len(b[0]) for b in self.batches]
        self.batches = [(x, *b[1:]) for x, b in zip(whole.split(sizes), self.batches)]
        return whole

    def _read(self) -> Iterator[Any]:
        kept: list[Any] | None = []
        size = 0
        for batch in self.loader:  # type: ignore[union-attr]
            if kept is not None:
                size += sum(t.numel() * t.element_size() for t in batch if isinstance(t, torch.Tensor))
                if size > self.max_bytes:
                    kept = None  # over the budget: every pass reads the loader
                else:
                    kept.append(_unshared(batch))
            yield batch
        if kept is not None:
            self.batches, self.loader = kept, None


def _unshared(batch: Sequence[Any]) -> tuple[Any, ...]:
    """``batch`` with its tensors out of shared memory. A worker's batch arrives in shared memory, and
    each such tensor keeps a file descriptor open while it lives: batches held for a whole run would
    keep hundreds open, against a limit that is often 1,024."""
    return tuple(t.clone() if isinstance(t, torch.Tensor) and t.is_shared() else t for t in batch)


def _rank_share(n: int) -> list[int]:
    """This rank's strided share of ``range(n)`` (all of it in one process)."""
    return list(range(distributed.rank(), n, distributed.world_size()))


class _Splits(Dataset):
    """Several datasets read as one: item ``(k, i)`` is ``parts[k][i]`` followed by ``k``."""

    def __init__(self, parts: Sequence[GroupedDataset]) -> None:
        self.parts = list(parts)

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, ki: tuple[int, int]) -> tuple[Any, ...]:
        k, i = ki
        return (*self.parts[k][i], k)


def splits_loader(
    datasets: Sequence[GroupedDataset], batch_size: int, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """One sequential loader over several datasets in turn, whose workers start once (a loader per
    dataset starts its own). Its batches are those of :func:`eval_loader` of each dataset (each cut
    by :func:`pass_batch_size`), the same samples in the same order (a batch never mixes two
    datasets), as ``(x, y, g, i, k)`` with ``k`` (B,) the position of the batch's dataset in
    ``datasets``."""
    views = [d.without_augmentation() for d in datasets]
    shares = [_rank_share(len(v)) for v in views]
    sizes = [pass_batch_size(len(share), batch_size, num_workers) for share in shares]
    batches = [[(k, i) for i in share[j:j + size]]
               for k, (share, size) in enumerate(zip(shares, sizes))
               for j in range(0, len(share), size)]
    return DataLoader(_Splits(views), batch_sampler=batches, num_workers=num_workers,  # type: ignore[arg-type]
                      pin_memory=pin_memory)
