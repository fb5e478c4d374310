"""CIFAR ResNets of He et al. (2016) (the ImageNet-style ones are in ``tv_resnet.py``).

CIFAR ResNet-(6n+2): a 3x3 stem with 16 channels, three stages of n basic blocks with 16/32/64
channels, strides 1/2/2, and projection (option B: 1x1 conv + BN) shortcuts where the shape changes.
Names are groupdistil's own (``features.N``, blocks ``body.K``/``shortcut.K``, ``classifier``): there
are no torchvision CIFAR ResNets to share weights with.
"""

from __future__ import annotations

from torch import nn

from groupdistil.models.simple import Classifier


def _bn_conv(c_in: int, c_out: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, bias=False), nn.BatchNorm2d(c_out)]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.body = nn.Sequential(*_bn_conv(c_in, width, 3, stride), nn.ReLU(inplace=True),
                                  *_bn_conv(width, c_out, 3))
        self.shortcut = (nn.Sequential(*_bn_conv(c_in, c_out, 1, stride))
                         if stride != 1 or c_in != c_out else nn.Identity())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))


def _stages(block: type[BasicBlock], c: int, widths: tuple[int, ...], depths: tuple[int, ...],
            strides: tuple[int, ...]) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for w, d, s in zip(widths, depths, strides):
        for i in range(d):
            layers.append(block(c, w, s if i == 0 else 1))
            c = w * block.expansion
    return nn.Sequential(*layers), c


def cifar_resnet(depth: int):
    """Builder of CIFAR ResNet-``depth`` (depth = 6n + 2)."""
    n = (depth - 2) // 6

    def build(num_classes: int, in_channels: int, input_shape: tuple[int, ...]) -> Classifier:
        body, c = _stages(BasicBlock, 16, (16, 32, 64), (n, n, n), (1, 2, 2))
        features = nn.Sequential(*_bn_conv(in_channels, 16, 3), nn.ReLU(inplace=True), body,
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return Classifier(features, c, num_classes)

    return build


RESNETS = {f"resnet{d}": cifar_resnet(d) for d in (8, 20, 32, 56, 110)}
