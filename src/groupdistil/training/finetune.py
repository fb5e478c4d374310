"""Fine-tuning controls: ``--freeze backbone`` (train the final linear layer only) and ``--head-lr``.

A frozen backbone is a fixed feature extractor: its parameters get no gradient and its BatchNorm
layers normalise with their running statistics and never update them, even when the training loop
calls ``model.train()`` (a linear probe, or DFR-style last-layer retraining of a teacher).
"""

from __future__ import annotations

import types
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from groupdistil.models import head_name


def _stay_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def freeze_backbone(model: nn.Module, name: str = "model") -> int:
    """Freeze every parameter of ``model`` but its final linear layer; returns the frozen count.

    Frozen BatchNorm layers are put in eval mode and their ``train()`` keeps them there, so the
    running statistics of the pretrained network are used and kept as they are.
    """
    head = model.get_submodule(head_name(model, name))
    trainable = {id(p) for p in head.parameters()}
    frozen = 0
    for p in model.parameters():
        if id(p) not in trainable:
            p.requires_grad_(False)
            frozen += p.numel()
    for m in model.modules():
        if isinstance(m, _BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.train = types.MethodType(_stay_eval, m)  # model.train() reaches it through train(mode)
            m.eval()
    return frozen


def param_groups(model: nn.Module, lr: float, head_lr: float | None) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: the trainable backbone at ``lr``, the final linear layer at
    ``head_lr`` (``lr`` when None). Empty groups are left out (a frozen backbone has none)."""
    if head_lr is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
    head = {id(p) for p in model.get_submodule(head_name(model)).parameters()}
    backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head]
    heads = [p for p in model.parameters() if p.requires_grad and id(p) in head]
    groups = [{"params": backbone, "lr": lr}, {"params": heads, "lr": head_lr}]
    return [g for g in groups if g["params"]]
