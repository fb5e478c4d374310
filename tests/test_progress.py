"""A progress bar over a loader starts one pass of it: tqdm.auto's class calls iter() in its constructor,
and a second pass of a DataLoader decodes (or waits for and drops) the first one's prefetched batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from groupdistil.checkpoint import FitState
from groupdistil.config import TrainConfig
from groupdistil.data.base import GroupedDataset
from groupdistil.loaders import eval_loader, train_loader
from groupdistil.objectives import build_objective
from groupdistil.training import evaluation
from groupdistil.training.evaluation import evaluate, evaluate_splits
from groupdistil.training.progress import progress
from groupdistil.training.trainer import Trainer


class Passes:
    """A loader that counts the passes begun over it."""

    def __init__(self, loader) -> None:
        self.loader, self.passes = loader, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


@pytest.mark.parametrize("quiet", [True, False])
def test_the_bar_begins_one_pass_and_yields_every_item(quiet):
    items = Passes(list(range(7)))
    assert list(progress(items, desc="x", disable=quiet)) == list(range(7))
    assert items.passes == 1


@pytest.mark.parametrize("quiet", [True, False])
def test_evaluation_begins_one_pass_of_each_loader(blobs, quiet, monkeypatch):
    val = Passes(eval_loader(blobs.val, 50))
    evaluate(_net(), blobs.val, blobs.grouping, loader=val, quiet=quiet)
    assert val.passes == 1
    made = []

    def counted(*args, **kwargs):
        made.append(Passes(real(*args, **kwargs)))
        return made[-1]

    real = evaluation.splits_loader
    monkeypatch.setattr(evaluation, "splits_loader", counted)
    # Read by index, as from files (splits in memory as they are go through no loader)
    read = {name: GroupedDataset(d.y, d.g, loader=d.inputs.__getitem__) for name, d in
            (("val", blobs.val), ("test", blobs.test))}
    evaluate_splits(_net(), read, blobs.grouping, quiet=quiet)
    assert [m.passes for m in made] == [1]


@pytest.mark.parametrize("quiet", [True, False])
def test_an_epoch_without_a_clock_begins_one_pass(blobs, quiet):
    net = _net()
    objective = build_objective("erm", n_groups=blobs.n_groups, n_classes=blobs.n_classes)
    trainer = Trainer(net, objective, torch.optim.SGD(net.parameters(), lr=0.1),
                      torch.amp.GradScaler("cpu", enabled=False), train=TrainConfig(batch_size=32),
                      device=torch.device("cpu"), state=FitState())
    loader = Passes(train_loader(blobs.train, 32, seed=0, epoch=0))
    trainer.train_epoch(blobs, 0, quiet=quiet, loader=loader)
    assert loader.passes == 1
    assert trainer.state.step == len(loader)
