"""The paper-scale path on the CPU, as ratios measured in one run:

- the image reader (the Waterbirds reader's own items: decode, resize, crop, normalise) at 224 px from
  500 x 375 JPEGs, over a bare Pillow loop that decodes, resizes and centre-crops the same files
  (target <= 1.2; one process at one torch thread, as each DataLoader worker runs, so the figure is per
  image);
- a GroupDistil epoch with cached teacher logits over the same student's epoch without a teacher, for a
  ResNet-18 student at 224 px (target <= 1.10), through the engine's own epoch loop.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from groupdistil import ERM
from groupdistil.checkpoint import FitState
from groupdistil.config import TrainConfig
from groupdistil.data import DataConfig, load_dataset
from groupdistil.data.base import DatasetBundle, GroupedDataset
from groupdistil.groups import Grouping
from groupdistil.loaders import train_loader
from groupdistil.models import create_model
from groupdistil.objectives import build_objective
from groupdistil.teachers import Teacher, TeacherMember
from groupdistil.training.devices import make_scaler
from groupdistil.training.trainer import Trainer

READER_TARGET = 1.2
CACHE_TARGET = 1.10
SIZE = 224


def _waterbirds(root: Path, n: int) -> Path:
    """``n`` photo-like 500 x 375 JPEGs (smooth background, textured object) in the Waterbirds layout."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    rows = ["img_id,img_filename,y,split,place"]
    for i in range(n):
        img = np.stack([(xx * 0.3 + 7 * i) % 255, (yy * 0.4 + 11 * i) % 255, (xx + yy) * 0.2 % 255], -1)
        img[100:280, 150:350] += rng.normal(0, 40, (180, 200, 3))
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(root / f"{i}.jpg", quality=90)
        rows.append(f"{i + 1},{i}.jpg,{i % 2},{0 if i >= 4 else 1 + i // 2 % 2},{i // 2 % 2}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def _pillow(files: list[Path], size: int) -> None:
    """The floor: decode, resize the shorter side to ``size`` (bilinear), centre crop, as uint8."""
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = size / min(w, h)
            im = im.resize((round(w * s), round(h * s)), Image.BILINEAR)
            left, top = (im.width - size) // 2, (im.height - size) // 2
            np.asarray(im.crop((left, top, left + size, top + size)))


def _reader_row(repeats: int, timer, n: int = 48) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        root = _waterbirds(Path(d), n)
        train = load_dataset(DataConfig(dataset="waterbirds", root=root, image_size=SIZE)).train
        files = [Path(p) for p in train.loader.paths]  # type: ignore[union-attr]

        def reader():
            for i in range(len(train)):
                train[i]

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in a DataLoader worker, where decoding happens (one thread each)
        try:
            med = timer({"reader": reader, "pillow": lambda: _pillow(files, SIZE)}, repeats=repeats, warmup=1)
        finally:
            torch.set_num_threads(threads)
    n = len(files)
    return {"case": f"{n} JPEGs 500x375 -> {SIZE} px, one process", "reader_ms": 1e3 * med["reader"] / n,
            "pillow_ms": 1e3 * med["pillow"] / n, "reader_over_pillow": med["reader"] / med["pillow"],
            "target": READER_TARGET}


def _cache_row(repeats: int, timer, n: int = 16, batch: int = 8) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    grouping = Grouping.label_attribute(["landbird", "waterbird"], ["land", "water"])
    y, a = torch.randint(0, 2, (n,), generator=gen), torch.randint(0, 2, (n,), generator=gen)
    ds = GroupedDataset(y, grouping.group_ids(y, a), inputs=torch.randn(n, 3, SIZE, SIZE, generator=gen))
    bundle = DatasetBundle("bench", grouping, (3, SIZE, SIZE), {"train": ds, "val": ds, "test": ds})
    torch.manual_seed(0)
    student = create_model("resnet18", 2, input_shape=(3, SIZE, SIZE))
    opt = torch.optim.SGD(student.parameters(), lr=1e-5, momentum=0.9, weight_decay=1.0)
    teacher = Teacher([TeacherMember(create_model("resnet18", 2, input_shape=(3, SIZE, SIZE)).eval(),
                                     cached=torch.randn(n, 2, generator=gen))], bundle.class_prior())
    groupdistil = build_objective("groupdistil", n_groups=4, n_classes=2, group_counts=bundle.group_counts().float(),
                                  class_prior=bundle.class_prior(), step_size=0.01, adjustment=2.0)
    cfg, scaler = TrainConfig(epochs=1, batch_size=batch), make_scaler(torch.device("cpu"), "none")

    def epoch(objective, t):
        def go():
            Trainer(student, objective, opt, scaler, train=cfg, device=torch.device("cpu"), state=FitState(),
                    teacher=t).train_epoch(bundle, 0, loader=train_loader(ds, batch, seed=0, epoch=0))
        return go

    med = timer({"no_teacher": epoch(ERM(), None), "cached": epoch(groupdistil, teacher)},
                repeats=repeats, warmup=1)
    return {"case": f"resnet18 student {SIZE} px, {n // batch} batches of {batch}: cached GroupDistil vs no teacher",
            "no_teacher_epoch_s": med["no_teacher"], "cached_over_no_teacher": med["cached"] / med["no_teacher"],
            "target": CACHE_TARGET}


def run(repeats: int, timer) -> list[dict[str, Any]]:
    return [_reader_row(repeats, timer), _cache_row(max(3, repeats // 4), timer)]
