"""Evaluation of a model on a split: per-group and per-class metrics (docs/methods.md, "Training and
evaluation choices")."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from groupdistil.data.base import GroupedDataset
from groupdistil.groups import Grouping
from groupdistil.loaders import eval_loader, sliced_pass, splits_loader
from groupdistil.metrics import GroupMetrics
from groupdistil.parallel import distributed
from groupdistil.training.devices import autocast
from groupdistil.training.progress import length, progress


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    dataset: GroupedDataset,
    grouping: Grouping,
    *,
    train_group_counts: torch.Tensor | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    amp: str = "none",
    num_workers: int = 0,
    quiet: bool = True,
    desc: str = "eval",
    loader: Iterable[tuple[torch.Tensor, ...]] | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on ``dataset`` (augmentation off), all-reduced under DDP.

    ``loader``: the :func:`~groupdistil.loaders.eval_loader` of ``dataset`` to use (``fit`` keeps one
    whose workers persist across epochs, or whose first pass it holds in memory:
    :class:`~groupdistil.loaders.HeldPasses`); by default a new one of ``batch_size`` and ``num_workers``.
    Returns the dict of :meth:`GroupMetrics.summary` (accuracies in [0, 1]).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    metrics = GroupMetrics(grouping.n_groups, grouping.n_classes)
    if loader is None:
        loader = eval_loader(dataset, batch_size, num_workers, pin_memory=device.type == "cuda")
    bar = progress(loader, desc=desc, disable=quiet or not distributed.is_main_process())
    for x, y, g, _ in bar:
        _update(model, metrics, (x, y, g), device, amp)
    metrics.all_reduce()
    model.train(was_training)
    return metrics.summary(grouping, train_group_counts)


@torch.inference_mode()
def evaluate_splits(
    model: nn.Module,
    datasets: Mapping[str, GroupedDataset],
    grouping: Grouping,
    *,
    train_group_counts: torch.Tensor | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    amp: str = "none",
    num_workers: int = 0,
    quiet: bool = True,
    held: Mapping[str, Iterable[tuple[torch.Tensor, ...]]] | None = None,
) -> dict[str, dict[str, Any]]:
    """:func:`evaluate` of each of ``datasets`` (name -> split), the same metrics from the same
    batches, through one loader (:func:`~groupdistil.loaders.splits_loader`): its workers start once,
    and they decode the next split's first batches while this one's last are evaluated.

    ``held``: for some of the names, that split's :func:`~groupdistil.loaders.eval_loader` batches
    ``(x, y, g, i)`` decoded already (``fit``'s validation split): they are evaluated from memory
    while the loader's workers start on the other splits, and so is a split in memory as it is
    (:func:`~groupdistil.loaders.sliced_pass`)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    names = list(datasets)
    held = {name: batches for name, batches in (held or {}).items() if name in datasets}
    for name in names:  # splits in memory as they are: views of their rows, no loader
        sliced = sliced_pass(datasets[name], batch_size, num_workers) if name not in held else None
        if sliced is not None:
            held[name] = sliced
    read = [name for name in names if name not in held]
    metrics = {name: GroupMetrics(grouping.n_groups, grouping.n_classes) for name in names}
    loader = (splits_loader([datasets[name] for name in read], batch_size, num_workers,
                            pin_memory=device.type == "cuda") if read else [])
    passes = iter(loader)  # begun before the held splits are evaluated: its workers start meanwhile
    batches = itertools.chain(((x, y, g, name) for name in held for x, y, g, _ in held[name]),
                              ((x, y, g, read[int(k[0])]) for x, y, g, _, k in passes))
    total = len(loader) + sum(length(held[name]) or 0 for name in held)
    bar = progress(batches, desc="eval " + ", ".join(names), total=total,
                   disable=quiet or not distributed.is_main_process())
    for x, y, g, name in bar:
        _update(model, metrics[name], (x, y, g), device, amp)
    for m in metrics.values():
        m.all_reduce()
    model.train(was_training)
    return {name: metrics[name].summary(grouping, train_group_counts) for name in names}


def _update(
    model: nn.Module, metrics: GroupMetrics, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    device: torch.device, amp: str,
) -> None:
    """Add the model's predictions on one batch ``(x, y, g)``: x (B, ...), y and g (B,)."""
    x, y, g = batch
    with autocast(device, amp):
        logits = model(x.to(device, non_blocking=True))
    metrics.update(logits.float(), y, g)


@torch.no_grad()
def per_class_error(
    model: nn.Module,
    dataset: GroupedDataset,
    n_classes: int,
    *,
    max_samples: int = 4096,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(C,) 0-1 error per class on a validation batch (all of ``dataset`` when it has at most
    ``max_samples`` samples, else a random subset). A class absent from the batch gets error 0, so
    validation-driven weights do not move towards classes they have no evidence about."""
    n = len(dataset)
    idx = torch.arange(n) if n <= max_samples else torch.randperm(n, generator=generator)[:max_samples]
    sub = torch.utils.data.Subset(dataset.without_augmentation(), idx.tolist())
    was_training = model.training
    model.eval()
    wrong = torch.zeros(n_classes, dtype=torch.float64)
    count = torch.zeros(n_classes, dtype=torch.float64)
    for x, y, _, _ in torch.utils.data.DataLoader(sub, batch_size=512):
        pred = model(torch.as_tensor(x).to(device)).argmax(1).cpu()
        wrong += torch.bincount(y, weights=(pred != y).double(), minlength=n_classes)
        count += torch.bincount(y, minlength=n_classes).double()
    model.train(was_training)
    return (wrong / count.clamp_min(1)).float()
