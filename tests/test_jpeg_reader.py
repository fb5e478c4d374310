"""The JPEG fast path of ImageFiles(size): Pillow's draft and box resampling give what the float path
(decode, Resize, CenterCrop) gives, other formats take the float path, and bad files are named."""

import numpy as np
import pytest
import torch
from PIL import Image

from groupdistil.data.images import ImageFiles
from groupdistil.data.transforms import CenterCrop, Compose, Resize
from groupdistil.errors import DataError


def _photo(path, size=(500, 375), fmt=None):
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    img = np.stack([xx * 0.4 % 255, yy * 0.5 % 255, (xx + yy) * 0.25 % 255], -1).astype(np.uint8)
    Image.fromarray(img).save(path, fmt, **({"quality": 95} if str(path).endswith(".jpg") else {}))
    return str(path)


@pytest.mark.parametrize("size,tol", [(224, 1.5 / 255), (64, 4 / 255), (400, 1.5 / 255)])
def test_jpeg_fast_path_matches_the_float_path(tmp_path, size, tol):
    path = _photo(tmp_path / "a.jpg")
    geometry = Compose([Resize(size), CenterCrop(size)])
    fast = ImageFiles([path], size=size)(0)
    slow = geometry(ImageFiles([path])(0))
    assert fast.shape == slow.shape == (3, size, size) and fast.is_contiguous()
    assert torch.equal(geometry(fast), fast)  # the pipeline's resize and crop have nothing left to do
    assert (fast - slow).abs().mean() < tol


def test_other_formats_and_bad_files_take_the_float_path(tmp_path):
    png = _photo(tmp_path / "a.png")
    assert torch.equal(ImageFiles([png], size=32)(0), ImageFiles([png])(0))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(DataError, match=r"bad\.jpg: cannot decode image"):
        ImageFiles([str(tmp_path / "bad.jpg")], size=32)(0)
    assert ImageFiles([png], size=32).subset(np.array([0])).size == 32
