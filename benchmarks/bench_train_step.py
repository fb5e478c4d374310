"""One training step of a ResNet-20 student on 32x32 input, batch 128, CPU: GroupDistil over KD
(teacher logits precomputed: forward, objective, backward and the SGD step are timed)."""

from __future__ import annotations

from typing import Any

import torch

from groupdistil import KD, GroupDistil
from groupdistil.models import create_model

TARGET = 1.03


def run(repeats: int, timer) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(128, 3, 32, 32)
    y = torch.randint(0, 10, (128,))
    g = torch.randint(0, 4, (128,))
    t = torch.randn(128, 10)
    kd, gd = KD(0.5, 4.0), GroupDistil(4, 0.5, 4.0)

    def step(objective):
        def go():
            out = objective(model(x), y, g, t)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
        return go

    med = timer({"kd": step(kd), "groupdistil": step(gd)}, repeats=repeats)
    return [{"case": "resnet20, B=128, 32x32", "kd_step_ms": 1e3 * med["kd"],
             "groupdistil_over_kd": med["groupdistil"] / med["kd"], "target": TARGET}]
