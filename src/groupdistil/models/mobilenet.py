"""MobileNetV3 small and large (Howard et al., 2019) with torchvision's module names and shapes.

Names: ``features.0`` (stem conv, BN, hardswish), ``features.1..N`` inverted residual blocks whose
``block.K`` are conv-BN(-activation) triples and squeeze-excitation units (``fc1``, ``fc2``), the last
1x1 conv, then ``classifier.0`` (linear), hardswish, dropout and ``classifier.3`` (the final linear
layer, the model's ``head``). A torchvision state dict loads without renaming.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


def _divisible(v: float, divisor: int = 8) -> int:
    """Round to a multiple of ``divisor``, never more than 10% below ``v`` (the reference rule)."""
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


class ConvBN(nn.Sequential):
    """Conv (no bias), BatchNorm (eps 1e-3, momentum 0.01 as trained), optional activation: ``0/1/2``."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = None) -> None:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(c_out, eps=0.001, momentum=0.01)]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """x (B, C, H, W) times a per-channel gate hardsigmoid(fc2(relu(fc1(mean over H, W))))."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))


class Spec(NamedTuple):
    """One inverted residual block: input, kernel, expanded and output channels, SE, hardswish, stride."""

    c_in: int
    k: int
    expanded: int
    c_out: int
    se: bool
    hswish: bool
    stride: int


class InvertedResidual(nn.Module):
    """Expand 1x1 (when widened), depthwise k x k, SE, project 1x1; a residual when shapes agree."""

    def __init__(self, s: Spec) -> None:
        super().__init__()
        act = nn.Hardswish if s.hswish else nn.ReLU
        layers: list[nn.Module] = []
        if s.expanded != s.c_in:
            layers.append(ConvBN(s.c_in, s.expanded, 1, act=act))
        layers.append(ConvBN(s.expanded, s.expanded, s.k, s.stride, groups=s.expanded, act=act))
        if s.se:
            layers.append(SqueezeExcite(s.expanded, _divisible(s.expanded // 4)))
        layers.append(ConvBN(s.expanded, s.c_out, 1))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = s.stride == 1 and s.c_in == s.c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_res_connect else y


# (c_in, k, expanded, c_out, SE, hardswish, stride) of the paper's Tables 1 and 2.
SMALL = [Spec(16, 3, 16, 16, True, False, 2), Spec(16, 3, 72, 24, False, False, 2),
         Spec(24, 3, 88, 24, False, False, 1), Spec(24, 5, 96, 40, True, True, 2),
         Spec(40, 5, 240, 40, True, True, 1), Spec(40, 5, 240, 40, True, True, 1),
         Spec(40, 5, 120, 48, True, True, 1), Spec(48, 5, 144, 48, True, True, 1),
         Spec(48, 5, 288, 96, True, True, 2), Spec(96, 5, 576, 96, True, True, 1),
         Spec(96, 5, 576, 96, True, True, 1)]
LARGE = [Spec(16, 3, 16, 16, False, False, 1), Spec(16, 3, 64, 24, False, False, 2),
         Spec(24, 3, 72, 24, False, False, 1), Spec(24, 5, 72, 40, True, False, 2),
         Spec(40, 5, 120, 40, True, False, 1), Spec(40, 5, 120, 40, True, False, 1),
         Spec(40, 3, 240, 80, False, True, 2), Spec(80, 3, 200, 80, False, True, 1),
         Spec(80, 3, 184, 80, False, True, 1), Spec(80, 3, 184, 80, False, True, 1),
         Spec(80, 3, 480, 112, True, True, 1), Spec(112, 3, 672, 112, True, True, 1),
         Spec(112, 5, 672, 160, True, True, 2), Spec(160, 5, 960, 160, True, True, 1),
         Spec(160, 5, 960, 160, True, True, 1)]


class MobileNetV3(nn.Module):
    """x (B, C_in, H, W) -> logits (B, num_classes); features are the (B, hidden) input of ``head``."""

    head = "classifier.3"

    def __init__(self, specs: list[Spec], hidden: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        last = 6 * specs[-1].c_out
        self.features = nn.Sequential(
            ConvBN(in_channels, specs[0].c_in, 3, 2, act=nn.Hardswish),
            *(InvertedResidual(s) for s in specs),
            ConvBN(specs[-1].c_out, last, 1, act=nn.Hardswish),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last, hidden), nn.Hardswish(inplace=True),
                                        nn.Dropout(0.2, inplace=True), nn.Linear(hidden, num_classes))
        for m in self.modules():  # the reference initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """x: (B, C, H, W) -> logits (B, num_classes) (and features (B, hidden))."""
        f = self.classifier[:3](torch.flatten(self.avgpool(self.features(x)), 1))
        logits = self.classifier[3](f)
        return (logits, f) if return_features else logits


def mobilenet_v3(specs: list[Spec], hidden: int):
    def build(num_classes: int, in_channels: int, input_shape: tuple[int, ...]) -> MobileNetV3:
        return MobileNetV3(specs, hidden, num_classes, in_channels)

    return build


MOBILENETS = {"mobilenet_v3_small": mobilenet_v3(SMALL, 1024), "mobilenet_v3_large": mobilenet_v3(LARGE, 1280)}
