"""Pretrained weights from a local file: torchvision / timm state dicts for fine-tuning.

``load_pretrained(model, path, name)`` reads a ``.pth``/``.pt`` file (a raw state dict, or one under
``state_dict`` or ``model``; ``weights_only=True``) or a ``.safetensors`` file, strips ``module.``
prefixes (DDP saves), and loads every tensor but the final linear layer (``head``) by name and shape.
The head is loaded only when its shape fits (same number of classes); otherwise the model keeps its
fresh one. Nothing is ever downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from groupdistil.errors import CheckpointError

State = dict[str, torch.Tensor]


def read_state_dict(path: Path) -> State:
    """The tensors of a weights file, ``module.`` prefixes stripped.

    Raises:
        CheckpointError: the file is missing, unreadable, or holds no state dict of tensors.
    """
    if not path.is_file():
        raise CheckpointError(f"`model.pretrained` {path}: file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: object = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle and safetensors header errors all mean "not usable weights"
        raise CheckpointError(f"`model.pretrained` {path}: not a readable weights file ({type(e).__name__})") from None
    if isinstance(data, dict):
        for key in ("state_dict", "model"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"`model.pretrained` {path}: expected a state dict of tensors (raw, or under "
                              "'state_dict' or 'model')")
    return {k.removeprefix("module."): v for k, v in data.items()}


def _adapt(target: torch.Tensor, source: torch.Tensor) -> torch.Tensor | None:
    """``source`` fitted to ``target``'s shape, or None. A grey-scale stem (O, 1, k, k) takes the sum of
    an RGB one (O, 3, k, k) over colours: the same response to a grey image (as timm adapts it)."""
    if source.shape == target.shape:
        return source
    if source.dim() == 4 and target.shape[1] == 1 and source.shape[1] == 3 and \
            source.shape[0] == target.shape[0] and source.shape[2:] == target.shape[2:]:
        return source.sum(dim=1, keepdim=True)
    return None


def _first(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_pretrained(model: nn.Module, path: Path, name: str, head: str) -> None:
    """Load ``path`` into ``model`` (named ``name``) except a head ``head`` whose shape differs.

    Raises:
        CheckpointError: one line naming the first missing, unexpected or mis-shaped keys and the model.
    """
    path = Path(path)
    source = read_state_dict(path)
    target = model.state_dict()
    head_keys = {f"{head}.weight", f"{head}.bias"}
    # A BatchNorm's step counter is absent from old saves and unused with momentum set: optional.
    missing = [k for k in target if k not in source and k not in head_keys
               and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in source if k not in target]
    fitted = {k: _adapt(target[k], v) for k, v in source.items() if k in target}
    shaped = [f"{k} {tuple(source[k].shape)} vs {tuple(target[k].shape)}"
              for k, v in fitted.items() if v is None and k not in head_keys]
    for problem, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)):
        if keys:
            raise CheckpointError(
                f"`model.pretrained` {path}: does not fit model {name!r}: {problem} keys {_first(keys)}"
            )
    keep = {k: v for k, v in fitted.items() if v is not None}
    if any(k not in keep for k in head_keys if k in source):  # the head's shape differs: keep the fresh one
        keep = {k: v for k, v in keep.items() if k not in head_keys}
    model.load_state_dict(keep, strict=False)
