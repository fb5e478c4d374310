"""Small models: linear, MLPs and plain convnets, and the Classifier wrapper every model shares."""

from __future__ import annotations

from collections.abc import Callable
from math import prod

import torch
from torch import nn


class Classifier(nn.Module):
    """A feature extractor followed by ``classifier`` (the final linear layer); returns logits."""

    head = "classifier"

    def __init__(self, features: nn.Module, width: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """x: (B, ...) -> logits (B, C) (and features (B, width) when asked)."""
        f = self.features(x)
        logits = self.classifier(f)
        return (logits, f) if return_features else logits


def mlp_builder(hidden: tuple[int, ...]) -> Callable[..., Classifier]:
    def build(num_classes: int, in_channels: int, input_shape: tuple[int, ...]) -> Classifier:
        layers: list[nn.Module] = [nn.Flatten()]
        width = prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        return Classifier(nn.Sequential(*layers), width, num_classes)

    return build


def cnn_builder(widths: tuple[int, ...]) -> Callable[..., Classifier]:
    def build(num_classes: int, in_channels: int, input_shape: tuple[int, ...]) -> Classifier:
        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(widths):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            c = w
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        return Classifier(nn.Sequential(*layers), c, num_classes)

    return build
