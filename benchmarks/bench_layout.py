"""Memory layout on the CPU: a training step (forward, backward, SGD) of a convolutional student with
``--channels-last`` (NHWC weights and inputs) over the default NCHW layout.

Figure: `channels_last_over_default` per model (below 1: channels_last is faster here).
"""

from __future__ import annotations

from typing import Any

import torch

from groupdistil.models import create_model
from timing import ce_train_step

CASES = [("resnet20", 32, 64), ("resnet18", 64, 32)]  # model, input px, batch


def _step(fmt: torch.memory_format, name: str, size: int, batch: int):
    torch.manual_seed(0)
    model = create_model(name, 10).to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))

    return lambda: ce_train_step(model, opt, x, y)


def run(repeats: int, timer) -> list[dict[str, Any]]:
    rows = []
    for name, size, batch in CASES:
        med = timer({"default": _step(torch.contiguous_format, name, size, batch),
                     "channels_last": _step(torch.channels_last, name, size, batch)}, repeats=repeats)
        rows.append({"case": f"{name} {size}px B={batch}", "default_ms": med["default"] * 1e3,
                     "channels_last_ms": med["channels_last"] * 1e3,
                     "channels_last_over_default": med["channels_last"] / med["default"]})
    return rows
