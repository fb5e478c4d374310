"""The floor a user's own code sets: a bare PyTorch loop over the training JPEGs of a Waterbirds-layout
folder (Pillow decode, resize of the shorter side, centre crop, normalise; a DataLoader with the given
workers, pinned memory on CUDA, persistent workers), the same model, cached teacher logits, CE + KD.
No validation, no checkpoints, no logs. Prints one JSON object: the wall seconds of each epoch.

    python benchmarks/bare_loop.py ROOT [--size 64] [--workers 2] [--batch 64] [--epochs 3] [--model linear]
        [--device cpu] [--amp none|bf16] [--channels-last]

Run in its own process, as `groupdistil distill` is, so both pay the same start-up.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from groupdistil.models import create_model

MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


class Files(torch.utils.data.Dataset):
    """(x, y, index) of the training rows of ``metadata.csv``."""

    def __init__(self, root: Path, size: int) -> None:
        with open(root / "metadata.csv", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["split"] == "0"]
        self.paths = [root / r["img_filename"] for r in rows]
        self.y = [int(r["y"]) for r in rows]
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = self.size / min(w, h)
            im = im.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), Image.BILINEAR)
            left, top = (im.width - self.size) // 2, (im.height - self.size) // 2
            a = np.asarray(im.crop((left, top, left + self.size, top + self.size)), np.float32) / 255
        return torch.from_numpy(((a - MEAN) / STD).transpose(2, 0, 1).copy()), self.y[i], i


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser()
    p.add_argument("root", type=Path)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--model", default="linear")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="none", choices=["none", "bf16"])
    p.add_argument("--channels-last", action="store_true")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    torch.manual_seed(0)
    data = Files(a.root, a.size)
    loader = torch.utils.data.DataLoader(data, batch_size=a.batch, shuffle=True, num_workers=a.workers,
                                         pin_memory=device.type == "cuda", persistent_workers=a.workers > 0)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = create_model(a.model, num_classes=2, input_shape=(3, a.size, a.size)).to(device, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    teacher = torch.randn(len(data), 2)  # cached teacher logits, indexed by sample
    epochs = []
    for _ in range(a.epochs):
        t0 = time.perf_counter()
        for x, y, i in loader:
            x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
            y, t = y.to(device, non_blocking=True), teacher[i].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.amp == "bf16"):
                logits = model(x)
            logits = logits.float()
            kd = F.kl_div(F.log_softmax(logits / 4, 1), F.log_softmax(t / 4, 1), log_target=True,
                          reduction="batchmean") * 16
            loss = 0.5 * F.cross_entropy(logits, y) + 0.5 * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        epochs.append(time.perf_counter() - t0)
    return {"epoch_s": epochs, "images": len(data)}


if __name__ == "__main__":
    print(json.dumps(main()))
