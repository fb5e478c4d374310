"""Lazy image inputs and the standard image pipeline shared by the image readers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from groupdistil.data.transforms import (
    CenterCrop,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    Transform,
    decode_image,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageFiles:
    """Loader over image files: ``files(i)`` decodes file i to (C, H, W) float32 in [0, 1].

    Paths live in one numpy string array rather than a list of str, so DataLoader workers forked from
    the main process do not copy them page by page as reference counts change.
    """

    def __init__(self, paths: Sequence[str] | np.ndarray, mode: str = "RGB") -> None:
        self.paths = np.asarray(paths, dtype=str)
        self.mode = mode

    def __len__(self) -> int:
        return len(self.paths)

    def __call__(self, i: int) -> torch.Tensor:
        return decode_image(str(self.paths[i]), self.mode)

    def name(self, i: int) -> str:
        """The file of item i, for messages."""
        return str(self.paths[i])

    def subset(self, index: np.ndarray) -> ImageFiles:
        return ImageFiles(self.paths[index], self.mode)

    def __repr__(self) -> str:
        return f"ImageFiles(n={len(self)}, mode={self.mode!r})"


class ArrayImages:
    """Loader over an in-memory uint8 tensor (N, C, H, W): item i as float32 in [0, 1].

    Keeping uint8 and converting per item uses a quarter of the memory of a float copy.
    """

    def __init__(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            shape = tuple(images.shape)
            raise ValueError(f"images: expected a uint8 (N, C, H, W) tensor, got {images.dtype} {shape}")
        self.images = images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __call__(self, i: int) -> torch.Tensor:
        return self.images[i].float().div_(255.0)

    def subset(self, index: np.ndarray) -> ArrayImages:
        return ArrayImages(self.images[torch.from_numpy(np.asarray(index, dtype=np.int64))])

    def __repr__(self) -> str:
        return f"ArrayImages(shape={tuple(self.images.shape)})"


def image_pipeline(
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    *,
    augment: bool = False,
    flip: bool = True,
) -> tuple[Transform, Transform | None]:
    """The deterministic transform (resize shorter side, centre crop to size x size, normalise) and,
    when ``augment``, the training augmentation (random crop with size // 8 zero padding, flip)."""
    transform = Compose([Resize(size), CenterCrop(size), Normalize(mean, std)])
    if not augment:
        return transform, None
    steps: list[Transform] = [RandomCrop(size, padding=max(1, size // 8))]
    if flip:
        steps.append(RandomHorizontalFlip())
    return transform, Compose(steps)
