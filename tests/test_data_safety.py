"""The data a run reads: paths stay inside the data folder with symbolic links followed, and every
image's header is checked before the run folder exists; a body that fails to decode later is one line
and the run stays resumable."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from groupdistil.checkpoint import load_checkpoint
from groupdistil.cli.app import run_app
from groupdistil.data import DataConfig, load_dataset
from groupdistil.data.header_record import ENV as HEADER_RECORD
from groupdistil.data.images import check_image_header
from groupdistil.errors import DataError

SRC = str(Path(__file__).resolve().parents[1] / "src")


def noise_jpeg(path: Path, seed: int, size: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, "JPEG")
    return path


def image_manifest(root: Path, n: int = 24) -> Path:
    """``n`` noise JPEGs in root/img, half train, a quarter val, a quarter test, two labels."""
    rows = ["label,split,path"]
    for i in range(n):
        noise_jpeg(root / "img" / f"{i}.jpg", i)
        split = "train" if i < n // 2 else ("val" if i < 3 * n // 4 else "test")
        rows.append(f"{i % 2},{split},img/{i}.jpg")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


def one_line(argv: list[str], capsys) -> tuple[int, str]:
    code = run_app(argv)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return code, err


# ---- item 5: symbolic links ------------------------------------------------------------------------------


@pytest.mark.parametrize("link", ["file", "folder"])
def test_a_symbolic_link_out_of_the_data_folder_is_refused_by_the_command_line(tmp_path, capsys, link):
    outside = tmp_path / "outside"
    noise_jpeg(outside / "secret.jpg", 0)
    root = tmp_path / "data"
    manifest = image_manifest(root, 8)
    if link == "file":
        (root / "img" / "3.jpg").unlink()
        (root / "img" / "3.jpg").symlink_to(outside / "secret.jpg")
        rel = "img/3.jpg"
    else:
        (root / "more").symlink_to(outside, target_is_directory=True)
        manifest.write_text(manifest.read_text().replace("img/3.jpg", "more/secret.jpg"))
        rel = "more/secret.jpg"
    args = ["--dataset", "manifest", "--root", str(manifest), "--image-size", "8"]
    code, err = one_line(["train", *args, "--model", "mlp-small", "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    assert f"m.csv: line 5, column 'path': path '{rel}' leaves {root} through a symbolic link" in err
    assert "--allow-outside-root" in err and not (tmp_path / "run").exists()
    code, err = one_line(["data", "inspect", *args, "--allow-outside-root"], capsys)
    assert code == 0 and err == ""


# ---- item 6: image headers at load time; a body that fails later ---------------------------------------


def test_every_header_is_read_once_and_no_pixel_is_decoded(tmp_path, monkeypatch):
    manifest = image_manifest(tmp_path, 12)
    opened, decoded = [], []
    real_open, real_load = Image.open, Image.Image.load

    def counting_open(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    def counting_load(self):
        decoded.append(self)
        return real_load(self)

    monkeypatch.setattr(Image, "open", counting_open)
    monkeypatch.setattr(Image.Image, "load", counting_load)
    load_dataset(DataConfig(dataset="manifest", root=manifest, image_size=8))
    assert sorted(opened) == sorted(str(tmp_path / "img" / f"{i}.jpg") for i in range(12))
    assert decoded == []


@pytest.mark.parametrize("damage,expect", [
    ("garbage", "not an image file"),
    ("empty", "not an image file"),
    ("header cut", r"cannot read the image header \(Truncated File Read\)"),
    ("missing", "image file not found"),
    ("huge", r"image of 1 x 40000000 pixels; expected 1 to 33554432 pixels"),
])
def test_a_damaged_image_is_refused_before_the_run_folder_exists(tmp_path, capsys, damage, expect):
    manifest = image_manifest(tmp_path, 8)
    bad = tmp_path / "img" / "5.jpg"
    data = bad.read_bytes()
    if damage == "garbage":
        bad.write_bytes(b"GIF-ish garbage that no decoder knows")
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "header cut":
        bad.write_bytes(data[:200])  # inside the quantisation and Huffman tables
    elif damage == "missing":
        bad.unlink()
    else:  # a valid PNG header that claims 40M pixels (the pixel data is never read)
        bad.write_bytes(_png_header(40_000_000, 1))
    code, err = one_line(["train", "--dataset", "manifest", "--root", str(manifest), "--image-size", "8",
                          "--model", "mlp-small", "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    assert err.startswith(f"error: {bad}: ") and re.search(expect, err), err
    assert not (tmp_path / "run").exists()


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def cli(*args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROUPDISTIL_") or k == HEADER_RECORD}
    env["PYTHONPATH"] = SRC
    if kill_at is not None:
        env["GROUPDISTIL_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "groupdistil", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.slow
def test_a_body_that_fails_to_decode_mid_run_is_one_line_and_the_run_resumes(tmp_path):
    manifest = image_manifest(tmp_path)
    out = tmp_path / "run"
    train = ["train", "--dataset", "manifest", "--root", str(manifest), "--image-size", "8", "--model",
             "mlp-small", "--epochs", "3", "--batch-size", "4", "--num-workers", "0", "--quiet", "--out", str(out)]
    assert cli(*train, kill_at="epoch:0").returncode < 0
    # Damaged while the job waited in the queue: the header is intact, the pixel data is cut.
    bad = tmp_path / "img" / "2.jpg"
    good = bad.read_bytes()
    bad.write_bytes(good[: int(len(good) * 0.7)])
    check_image_header(str(bad))  # passes: only decoding finds it
    r = cli(*train, "--resume")
    warning, _, err = r.stderr.strip().partition("\n")  # first: the killed run's lock, taken over
    assert warning.startswith("warning: the lock of ") and warning.endswith("taking it over"), r.stderr
    assert r.returncode == 2, r.stderr
    assert err.count("\n") == 0 and err.startswith(f"error: {bad}: cannot decode image (image file is truncated"), err
    assert load_checkpoint(out / "checkpoints/last.pt")["epoch"] == 0  # the last finished epoch is intact
    assert not (out / "final.json").exists()
    bad.write_bytes(good)
    r = cli(*train, "--resume")
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(out / "checkpoints/last.pt")["epoch"] == 2


def test_the_header_check_raises_data_errors_only(tmp_path):
    with pytest.raises(DataError, match="image file not found"):
        check_image_header(str(tmp_path / "none.jpg"))
    (tmp_path / "d.jpg").mkdir()  # a folder where an image belongs
    with pytest.raises(DataError, match=r"d\.jpg: cannot read the image header"):
        check_image_header(str(tmp_path / "d.jpg"))
