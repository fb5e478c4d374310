"""Model factory: ``create_model(name, num_classes, ...)`` from a dict of constructors (timm style).

Names: ``linear``, ``mlp-small``, ``mlp``, ``cnn-small``, ``cnn`` (any input size), CIFAR ResNets
``resnet8/20/32/56/110``, ImageNet-style ``resnet18/34/50/101`` and ``mobilenet_v3_small/large`` with
torchvision's module names (so torchvision and timm state dicts load, see ``pretrained``); ``tv:<name>``
and ``timm:<name>`` when torchvision or timm import. Every model returns logits (B, C), features (the
input of its final linear layer) with ``return_features=True``, and names that layer in ``head``
(:func:`head_of`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from groupdistil.checkpoint import load_state_dict_checked
from groupdistil.errors import CheckpointError, UserError, first_line
from groupdistil.models.mobilenet import MOBILENETS
from groupdistil.models.pretrained import load_pretrained
from groupdistil.models.resnet import RESNETS
from groupdistil.models.simple import Classifier, cnn_builder, mlp_builder
from groupdistil.models.tv_resnet import DEPTHS, tv_resnet, upgrade_legacy_keys

__all__ = ["MODELS", "Classifier", "create_model", "head_name", "head_of", "list_models", "load_weights",
           "upgrade_legacy_keys"]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "linear": mlp_builder(()),
    "mlp-small": mlp_builder((64,)),
    "mlp": mlp_builder((256, 256)),
    "cnn-small": cnn_builder((16, 32)),
    "cnn": cnn_builder((32, 64, 128)),
    **RESNETS,
    **{name: tv_resnet(name) for name in DEPTHS},
    **MOBILENETS,
}

#: Prefixes of names resolved by optional packages, and the package each needs.
EXTERNAL = {"tv:": "torchvision", "timm:": "timm"}


def list_models() -> list[str]:
    return list(MODELS)


def create_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    input_shape: tuple[int, ...] | None = None,
    weights: str | Path | None = None,
    pretrained: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name; optionally load weights from a local file (``weights_only=True``).

    ``weights``: the whole model (a groupdistil checkpoint or a state dict of this very model).
    ``pretrained``: a torchvision/timm-style file for fine-tuning: everything but the final linear
    layer must fit; that layer is kept from the file only when its shape fits (see ``pretrained.py``).
    """
    shape = tuple(input_shape) if input_shape else (in_channels, 32, 32)
    prefix = next((p for p in EXTERNAL if name.startswith(p)), None)
    if prefix is not None:
        model = _external(prefix, name[len(prefix):], num_classes)
    elif name in MODELS:
        model = MODELS[name](num_classes=num_classes, in_channels=in_channels, input_shape=shape, **kwargs)
    else:
        raise UserError(f"`model.name`: unknown name {name!r}; expected one of {', '.join(MODELS)}, tv:NAME, timm:NAME")
    if pretrained is not None:
        load_pretrained(model, Path(pretrained), name, head_name(model, name))
    if weights is not None:
        load_weights(model, Path(weights))
    return model


def head_name(model: nn.Module, name: str = "model") -> str:
    """The dotted name of ``model``'s final linear layer (``classifier``, ``fc``, ``classifier.3``)."""
    head = getattr(model, "head", None)
    if not isinstance(head, str) or not isinstance(model.get_submodule(head), nn.Linear):
        raise UserError(f"`model.name` {name}: has no known final linear layer (only groupdistil's own models do)")
    return head


def head_of(model: nn.Module) -> nn.Linear:
    """``model``'s final linear layer: features (B, in_features) -> logits (B, C)."""
    return model.get_submodule(head_name(model))  # type: ignore[return-value]


def _external(prefix: str, name: str, num_classes: int) -> nn.Module:
    package = EXTERNAL[prefix]
    try:
        module = importlib.import_module(package)
    except Exception:  # a missing or broken install (the registry's torchvision fails against CPU torch)
        raise UserError(f"`model.name` {prefix}{name}: needs {package}, which does not import here") from None
    try:
        if package == "timm":
            return module.create_model(name, pretrained=False, num_classes=num_classes)
        return module.models.get_model(name, weights=None, num_classes=num_classes)
    except Exception as e:  # unknown names raise different errors in each package
        raise UserError(f"`model.name` {prefix}{name}: {package} cannot build it ({type(e).__name__})") from None


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a raw state dict or a groupdistil checkpoint's ``model`` entry into ``model``; a state dict
    of groupdistil's earlier ``resnet18/34/50`` layout is renamed first (by the model:
    ``ResNet.upgrade_state_dict``)."""
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
        load_state_dict_checked(model, state)  # an earlier layout is renamed by the model itself
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: weights do not fit the model: {first_line(e)}") from None
