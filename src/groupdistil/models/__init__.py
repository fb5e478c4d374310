"""Model factory: ``create_model(name, num_classes, ...)`` from a dict of constructors."""

from __future__ import annotations

from collections.abc import Callable
from math import prod
from pathlib import Path
from typing import Any

import torch
from torch import nn

from groupdistil.errors import CheckpointError, UserError


class Classifier(nn.Module):
    """A feature extractor followed by ``classifier`` (the final linear layer); returns logits."""

    def __init__(self, features: nn.Module, width: int, num_classes: int) -> None:
        super().__init__()
        self.features = features
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """x: (B, ...) -> logits (B, C) (and features (B, width) when asked)."""
        f = self.features(x)
        logits = self.classifier(f)
        return (logits, f) if return_features else logits


def _mlp(hidden: tuple[int, ...]) -> Callable[..., Classifier]:
    def build(num_classes: int, in_channels: int, input_shape: tuple[int, ...]) -> Classifier:
        layers: list[nn.Module] = [nn.Flatten()]
        width = prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        return Classifier(nn.Sequential(*layers), width, num_classes)

    return build


def _cnn(widths: tuple[int, ...]) -> Callable[..., Classifier]:
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


MODELS: dict[str, Callable[..., nn.Module]] = {
    "linear": _mlp(()),
    "mlp-small": _mlp((64,)),
    "mlp": _mlp((256, 256)),
    "cnn-small": _cnn((16, 32)),
    "cnn": _cnn((32, 64, 128)),
}


def list_models() -> list[str]:
    return list(MODELS)


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    input_shape: tuple[int, ...] | None = None,
    weights: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name; optionally load weights from a local file (``weights_only=True``)."""
    if name not in MODELS:
        raise UserError(f"--model: unknown name {name!r}; expected one of {', '.join(MODELS)}")
    shape = tuple(input_shape) if input_shape else (in_channels, 32, 32)
    model = MODELS[name](num_classes=num_classes, in_channels=in_channels, input_shape=shape, **kwargs)
    if weights is not None:
        load_weights(model, Path(weights))
    return model


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a raw state dict or a groupdistil checkpoint's ``model`` entry into ``model``."""
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling or zip failure means the file is not usable weights
        raise CheckpointError(f"{path}: not a readable weights file ({type(e).__name__})") from None
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model: {str(e).splitlines()[0]}") from None
