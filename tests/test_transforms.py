"""Pillow decoding and the tensor transforms."""

from __future__ import annotations

import pytest
import torch

from conftest import write_image
from groupdistil.data.images import image_pipeline
from groupdistil.data.transforms import (
    CenterCrop,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    Resize,
    decode_image,
)
from groupdistil.errors import DataError


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_decode(tmp_path, suffix):
    path = write_image(tmp_path / f"a{suffix}", value=200, size=(10, 8))
    x = decode_image(path)
    assert x.shape == (3, 8, 10) and x.dtype == torch.float32
    assert abs(float(x[0].mean()) - 200 / 255) < 0.02
    assert decode_image(path, mode="L").shape == (1, 8, 10)


def test_decode_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.png: image file not found"):
        decode_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(DataError, match=r"bad\.png: cannot decode image"):
        decode_image(tmp_path / "bad.png")
    good = write_image(tmp_path / "t.jpg", size=(64, 64)).read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"trunc\.jpg: cannot decode image"):
        decode_image(tmp_path / "trunc.jpg")


def test_resize_and_crops():
    x = torch.rand(3, 20, 40)
    assert Resize(10)(x).shape == (3, 10, 20)  # shorter side, aspect kept
    assert Resize((7, 9))(x).shape == (3, 7, 9)
    assert Resize(20)(x) is x
    c = CenterCrop(10)(x)
    assert torch.equal(c, x[:, 5:15, 15:25])
    assert CenterCrop(30)(torch.ones(1, 10, 10)).sum() == 100  # padded with zeros
    flat = torch.full((1, 4, 4), 2.0)
    assert torch.allclose(Resize(8)(flat), torch.full((1, 8, 8), 2.0))


def test_random_transforms_are_seedable():
    x = torch.arange(64.0).view(1, 8, 8)
    crops = [RandomCrop(8, padding=2, generator=torch.Generator().manual_seed(1))(x) for _ in range(2)]
    assert torch.equal(crops[0], crops[1])
    torch.manual_seed(0)
    a = [RandomCrop(8, padding=2)(x) for _ in range(5)]
    torch.manual_seed(0)
    b = [RandomCrop(8, padding=2)(x) for _ in range(5)]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert any(not torch.equal(a[0], p) for p in a[1:])
    assert all(p.shape == (1, 8, 8) for p in a)
    flip = RandomHorizontalFlip(1.0)
    assert torch.equal(flip(x), x.flip(-1))
    assert torch.equal(RandomHorizontalFlip(0.0)(x), x)


def test_normalize_compose_and_reprs():
    x = torch.ones(3, 2, 2)
    n = Normalize((0.5, 0.5, 1.0), (0.5, 0.25, 1.0))
    assert n(x)[:, 0, 0].tolist() == [1.0, 2.0, 0.0]
    t, aug = image_pipeline(16, augment=True)
    assert repr(t) == (
        "Compose([Resize(size=16), CenterCrop(size=(16, 16)), "
        "Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))])"
    )
    assert repr(aug) == "Compose([RandomCrop(size=(16, 16), padding=2), RandomHorizontalFlip(p=0.5)])"
    assert image_pipeline(16, augment=False)[1] is None
    assert repr(image_pipeline(12)[0]) != repr(t)
    assert Compose([Resize(4), CenterCrop(4)])(torch.rand(3, 8, 12)).shape == (3, 4, 4)
