"""Optimisers and learning-rate schedules by name (stepped once per epoch)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from groupdistil.config import OptimConfig


def make_optimizer(
    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]], cfg: OptimConfig
) -> torch.optim.Optimizer:
    """The optimiser over ``params`` (tensors, or groups with their own ``lr``: ``finetune.param_groups``)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(
    opt: torch.optim.Optimizer, cfg: OptimConfig, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule. Cosine decays to 0 at the last epoch; step multiplies by gamma every lr_step."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda e: 0.5 * (1 + math.cos(math.pi * min(e, epochs) / epochs))
        )
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
