"""ImageNet-style ResNet-18/34/50/101 with torchvision's module names and shapes (He et al., 2016).

Names: ``conv1``, ``bn1``, ``layer1``..``layer4`` of blocks with ``conv1..3``/``bn1..3`` and a
``downsample.0/1`` projection where the shape changes, then ``fc``; a state dict saved by torchvision
(or by timm's ``resnet*``, which use the same names) loads without renaming. Bottleneck blocks stride
in their 3x3 conv (torchvision's "ResNet v1.5"). For inputs smaller than 64 px the stem is a 3x3
stride-1 conv without max-pool (as CIFAR ports do): the names stay, ``conv1`` is then (64, C, 3, 3).
"""

from __future__ import annotations

import torch
from torch import nn


def _conv(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs; x (B, c_in, H, W) -> (B, width, H / stride, W / stride)."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv(c_in, width, 3, stride), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = _conv(width, width, 3), nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(c_in, width * self.expansion, stride)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.residual(x) + shortcut)


class Bottleneck(BasicBlock):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4; x (B, c_in, H, W) -> (B, 4 width, H / s, W / s)."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        nn.Module.__init__(self)
        self.conv1, self.bn1 = _conv(c_in, width, 1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = _conv(width, width, 3, stride), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = _conv(width, width * 4, 1), nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(c_in, width * 4, stride)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.bn3(self.conv3(x))


def _projection(c_in: int, c_out: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(_conv(c_in, c_out, 1, stride), nn.BatchNorm2d(c_out))


class ResNet(nn.Module):
    """ResNet with torchvision's names; ``forward(x)`` (B, C_in, H, W) -> logits (B, num_classes).

    ``head`` names the final linear layer (here ``fc``), the one every groupdistil model exposes.
    """

    head = "fc"

    def __init__(self, block: type[BasicBlock], depths: tuple[int, int, int, int], num_classes: int,
                 in_channels: int = 3, small_input: bool = False) -> None:
        super().__init__()
        self.depths = tuple(depths)
        self.conv1 = _conv(in_channels, 64, 3) if small_input else _conv(in_channels, 64, 7, 2)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, 2, 1)
        c = 64
        for i, (width, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            blocks = [block(c if j == 0 else width * block.expansion, width, 2 if i and j == 0 else 1)
                      for j in range(depth)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            c = width * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():  # torchvision's initialisation (He normal, fan out)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def upgrade_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` with the names of groupdistil's earlier ResNet layout renamed to these (unchanged
        when it has them already); ``checkpoint.load_state_dict_checked`` calls it before loading."""
        return _upgrade(self.depths, state)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """x: (B, C, H, W) -> logits (B, num_classes) (and pooled features (B, 512 * expansion))."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        f = torch.flatten(self.avgpool(x), 1)
        logits = self.fc(f)
        return (logits, f) if return_features else logits


#: Blocks per stage of each depth.
DEPTHS: dict[str, tuple[type[BasicBlock], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


def tv_resnet(name: str):
    """Builder of torchvision-named ``name``; the small-input stem below 64 px."""
    block, depths = DEPTHS[name]

    def build(num_classes: int, in_channels: int, input_shape: tuple[int, ...]) -> ResNet:
        small = min(input_shape[-2:]) < 64 if len(input_shape) == 3 else True
        return ResNet(block, depths, num_classes, in_channels, small_input=small)

    return build


_LEGACY_BLOCK = {"body.0": "conv1", "body.1": "bn1", "body.3": "conv2", "body.4": "bn2", "body.6": "conv3",
                 "body.7": "bn3", "shortcut.0": "downsample.0", "shortcut.1": "downsample.1"}


def upgrade_legacy_keys(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a state dict of groupdistil's earlier ``resnet18/34/50`` (``features.N...``,
    ``classifier``) to torchvision's names; any other state dict is returned unchanged.

    Loading does this by itself (:meth:`ResNet.upgrade_state_dict`); this is the same for a model name.
    """
    return _upgrade(DEPTHS[name][1], state) if name in DEPTHS else state


def _upgrade(depths: tuple[int, ...], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """:func:`upgrade_legacy_keys` for a ResNet of ``depths`` blocks per stage.

    The earlier layout was ``features = [conv, bn, relu, (maxpool), blocks, pool, flatten]`` with the
    blocks numbered through all stages, each ``body.K`` / ``shortcut.K``; the tensors are the same.
    """
    if "features.0.weight" not in state:
        return state
    body = "features.4." if any(k.startswith("features.4.0.") for k in state) else "features.3."
    where = [(s, j) for s, d in enumerate(depths) for j in range(d)]
    out = {}
    for key, value in state.items():
        if key.startswith(body):
            index, inner = key[len(body):].split(".", 1)
            part, leaf = inner.rsplit(".", 1)
            stage, j = where[int(index)]
            key = f"layer{stage + 1}.{j}.{_LEGACY_BLOCK.get(part, part)}.{leaf}"
        elif key.startswith(("features.0.", "features.1.")):
            key = ("conv1." if key[9] == "0" else "bn1.") + key[11:]
        elif key.startswith("classifier."):
            key = "fc." + key[len("classifier."):]
        out[key] = value
    return out
