"""Teacher-logit cache, through the trainer's own epoch loop (``Trainer.train_epoch``): a distillation
epoch with cached logits over an epoch with no teacher at all (target <= 1.10), and the cache's
speed-up over the online teacher, for ResNet-56 -> ResNet-20 on 32x32 inputs."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from groupdistil import ERM, KD
from groupdistil.checkpoint import FitState
from groupdistil.config import TrainConfig
from groupdistil.data.base import DatasetBundle, GroupedDataset
from groupdistil.groups import Grouping
from groupdistil.models import create_model
from groupdistil.teachers import LogitCache, Teacher, TeacherMember, cached_or_computed
from groupdistil.training.devices import make_scaler
from groupdistil.training.trainer import Trainer

TARGET = 1.10


def _bundle(n: int) -> DatasetBundle:
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (n,), generator=gen)
    grouping = Grouping.classes([str(i) for i in range(10)])
    ds = GroupedDataset(y, y.clone(), inputs=torch.randn(n, 3, 32, 32, generator=gen), identity={"bench": n})
    return DatasetBundle("bench", grouping, (3, 32, 32), {"train": ds, "val": ds, "test": ds})


def run(repeats: int, timer, n: int = 512) -> list[dict[str, Any]]:
    bundle = _bundle(n)
    torch.manual_seed(0)
    student = create_model("resnet20", 10)
    teacher_model = create_model("resnet56", 10).eval()
    opt = torch.optim.SGD(student.parameters(), lr=0.01)
    scaler = make_scaler(torch.device("cpu"), "none")
    cfg = TrainConfig(epochs=1, batch_size=128)
    prior = bundle.class_prior()
    with tempfile.TemporaryDirectory() as d:
        logits = cached_or_computed(teacher_model, bundle.train, LogitCache(Path(d)), 10).logits
        cached = Teacher([TeacherMember(teacher_model, cached=logits)], prior)
        online = Teacher([TeacherMember(teacher_model)], prior)

        def epoch(objective, teacher):
            def go():
                Trainer(student, objective, opt, scaler, train=cfg, device=torch.device("cpu"), state=FitState(),
                        teacher=teacher).train_epoch(bundle, 0)
            return go

        med = timer({"no_teacher": epoch(ERM(), None), "cached": epoch(KD(0.5, 4.0), cached),
                     "online": epoch(KD(0.5, 4.0), online)}, repeats=repeats, warmup=1)
    return [{"case": f"resnet56 -> resnet20, {n} images 32x32, B=128", "no_teacher_epoch_s": med["no_teacher"],
             "cached_over_no_teacher": med["cached"] / med["no_teacher"], "target": TARGET,
             "online_over_cached": med["online"] / med["cached"]}]
