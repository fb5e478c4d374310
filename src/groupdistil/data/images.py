"""Lazy image inputs and the standard image pipeline shared by the image readers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from groupdistil.data.header_record import check_unrecorded, record_folder
from groupdistil.data.transforms import (
    MAX_PIXELS,
    CenterCrop,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    Transform,
    decode_image,
)
from groupdistil.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageFiles:
    """Loader over image files: ``files(i)`` decodes file i to (C, H, W) float32 in [0, 1].

    With ``size``, JPEG files come out as ``Resize(size)`` then ``CenterCrop(size)`` (the geometry of
    :func:`image_pipeline`, whose transforms then have nothing left to do) would make them: Pillow
    decodes them at the smallest DCT scale that still covers the target (``draft``) and resamples the
    8-bit image's central window straight to size x size (``box``, ``reducing_gap``), instead of
    resizing a full-size float tensor. Other formats decode as usual.

    Paths live in one numpy string array rather than a list of str, so DataLoader workers forked from
    the main process do not copy them page by page as reference counts change.
    """

    reads_files = True  # decoding is the work: loaders default to worker processes (loaders.default_workers)

    def __init__(self, paths: Sequence[str] | np.ndarray, mode: str = "RGB", size: int | None = None) -> None:
        self.paths = np.asarray(paths, dtype=str)
        self.mode = mode
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __call__(self, i: int) -> torch.Tensor:
        path = str(self.paths[i])
        if self.size is not None:
            x = _jpeg_cropped(path, self.mode, self.size)
            if x is not None:
                return x
        return decode_image(path, self.mode)

    def name(self, i: int) -> str:
        """The file of item i, for messages."""
        return str(self.paths[i])

    def subset(self, index: np.ndarray) -> ImageFiles:
        return ImageFiles(self.paths[index], self.mode, self.size)

    def check(self) -> None:
        """Read every file's header (:func:`check_image_header`): a missing or unreadable file is one
        DataError naming it, before a run touches its folder (``data.load_dataset`` calls it). Files
        that passed before, unchanged since, are not read again (:mod:`groupdistil.data.header_record`)."""
        check_unrecorded(self.paths, check_image_header, record_folder())

    def __repr__(self) -> str:
        return f"ImageFiles(n={len(self)}, mode={self.mode!r}, size={self.size})"


def check_image_header(path: str) -> None:
    """Refuse, in one DataError line naming ``path``, a file that is missing, is not an image Pillow
    reads, or has no pixels or more than :data:`MAX_PIXELS`. Only the header is read (format, size,
    mode: Pillow decodes no pixel in ``Image.open``), so a file whose header is good but whose body is
    damaged passes here and is named by :func:`decode_image` when the loader meets it."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file (no image format Pillow reads begins it)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read the image header ({e})") from None
    if w < 1 or h < 1 or w * h > MAX_PIXELS:
        raise DataError(f"{path}: image of {h} x {w} pixels; expected 1 to {MAX_PIXELS} pixels")


#: Pillow's reducing_gap: integer-factor reduction first, while the image stays this many times the
#: target; 3 is indistinguishable from a full resampling (Pillow's documentation), and faster.
REDUCING_GAP = 3.0


def _jpeg_cropped(path: str, mode: str, size: int) -> torch.Tensor | None:
    """A JPEG file resized (shorter side ``size``) and centre-cropped to size x size, as (C, size, size)
    float32 in [0, 1]; None for anything else (another format, or a file that fails:
    :func:`decode_image` then names it)."""
    try:
        with Image.open(path) as im:
            if im.format != "JPEG":
                return None
            h, w = Resize(size)._target(im.height, im.width)
            top, left = (h - size) // 2, (w - size) // 2  # CenterCrop's window in the resized image
            im.draft(mode, (w, h))  # decode at 1/2, 1/4 or 1/8 scale when that still covers (w, h)
            sx, sy = im.width / w, im.height / h
            box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
            source = im if im.mode == mode else im.convert(mode)  # a JPEG is RGB already: no copy
            arr = np.asarray(source.resize((size, size), Image.BILINEAR, box=box, reducing_gap=REDUCING_GAP))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    x = torch.from_numpy(arr.copy())
    # (C, H, W) laid out as such before the float conversion: the transforms then run on contiguous
    # planes (a permuted view would make each of them strided, several times slower).
    x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1).contiguous()
    return x.float().div_(255.0)


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
