"""Image decoding (Pillow) and small tensor transforms, without torchvision.

Every transform maps a float tensor (C, H, W) to a float tensor (C, H', W'). Their ``repr`` lists all
parameters, because the repr of a split's deterministic transform is part of its cache fingerprint.
Random transforms draw from ``generator`` when one is given, else from the global torch RNG, which
``torch.utils.data.DataLoader`` seeds differently in every worker; both make runs reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from groupdistil.errors import DataError

Transform = Callable[[torch.Tensor], torch.Tensor]


#: Most pixels of one image, decoded or after the resize (2**25: 400 MB as float32 RGB). Pillow's own
#: bound (89M pixels) is higher, and a 1 x 6000 image resized to a 224 shorter side has 301M.
MAX_PIXELS = 1 << 25
#: Pillow's high-bit-depth greyscale modes (16-bit PNG and TIFF: X-ray and MRI exports), read as 16-bit
#: values: ``convert("L")`` would clip them to 0..255, which keeps 2 of 64 distinct values.
HIGH_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def decode_image(path: str | Path, mode: str = "RGB") -> torch.Tensor:
    """Decode an image file to a float32 tensor (C, H, W) in [0, 1] (C = 3 for RGB, 1 for L).

    8-bit images are divided by 255; 16-bit greyscale (:data:`HIGH_BIT_MODES`) by 65535 at full
    precision, repeated over the channels for RGB.

    Raises:
        DataError: naming the file when it is missing, does not decode, or has more than
            :data:`MAX_PIXELS` pixels.
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise DataError(f"{path}: image of {h} x {w} pixels; expected at most {MAX_PIXELS} pixels")
            if im.mode in HIGH_BIT_MODES:
                x = torch.from_numpy(np.clip(np.asarray(im, dtype=np.float32) / 65535.0, 0.0, 1.0))[None]
                return x.expand(3 if mode == "RGB" else 1, h, w).contiguous()
            arr = np.asarray(im.convert(mode))
    except DataError:  # ours (too many pixels), already naming the file; a ValueError, so caught first
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # Pillow reports unknown formats and truncated files as OSError subclasses.
        raise DataError(f"{path}: cannot decode image ({e})") from None
    x = torch.from_numpy(arr.copy())
    x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)
    return x.float().div_(255.0)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Iterable[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return f"Compose([{', '.join(repr(t) for t in self.transforms)}])"


class Resize:
    """Bilinear antialiased resize: an int sets the shorter side (aspect kept); (h, w) is exact."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = size if isinstance(size, int) else _pair(size)

    def _target(self, h: int, w: int) -> tuple[int, int]:
        if not isinstance(self.size, int):
            return self.size
        s = self.size
        return (s, max(1, round(w * s / h))) if h <= w else (max(1, round(h * s / w)), s)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        target = self._target(x.shape[-2], x.shape[-1])
        if target[0] * target[1] > MAX_PIXELS:
            # An extreme aspect ratio (1 x 6000) would allocate gigabytes; the dataset adds the file name.
            raise DataError(f"image of {x.shape[-2]} x {x.shape[-1]} pixels would resize to {target[0]} x "
                            f"{target[1]}; expected at most {MAX_PIXELS} pixels (an aspect ratio nearer 1)")
        if target == tuple(x.shape[-2:]):
            return x
        return F.interpolate(x[None], size=target, mode="bilinear", align_corners=False, antialias=True)[0]

    def __repr__(self) -> str:
        return f"Resize(size={self.size})"


def _pad_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Zero-pad (C, H, W) symmetrically up to at least (h, w)."""
    dh, dw = max(0, h - x.shape[-2]), max(0, w - x.shape[-1])
    if dh == 0 and dw == 0:
        return x
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


class CenterCrop:
    """Crop the central (h, w) window; smaller images are zero-padded first."""

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair(size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.size
        x = _pad_to(x, h, w)
        top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
        return x[..., top : top + h, left : left + w]

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


class RandomCrop:
    """Zero-pad by ``padding`` on every side, then crop a random (h, w) window."""

    def __init__(
        self, size: int | Sequence[int], padding: int = 0, generator: torch.Generator | None = None
    ) -> None:
        self.size = _pair(size)
        self.padding = int(padding)
        self.generator = generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.size
        p = self.padding
        x = _pad_to(F.pad(x, (p, p, p, p)) if p else x, h, w)
        top = int(torch.randint(0, x.shape[-2] - h + 1, (1,), generator=self.generator))
        left = int(torch.randint(0, x.shape[-1] - w + 1, (1,), generator=self.generator))
        return x[..., top : top + h, left : left + w]

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror left-right with probability p."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        self.p = float(p)
        self.generator = generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if float(torch.rand((), generator=self.generator)) < self.p:
            return x.flip(-1)
        return x

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """Per-channel ``(x - mean) / std``; mean and std have one value per channel (or one for all)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._mean = torch.tensor(self.mean).view(-1, 1, 1)
        self._std = torch.tensor(self.std).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._mean) / self._std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"
