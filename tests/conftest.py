"""Shared fixtures: writers of tiny datasets in the exact published layouts (FORMATS.md), and a tiny
in-memory grouped dataset so engine tests run in seconds."""

from __future__ import annotations

import atexit
import csv
import os
import shutil
import socket
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from PIL import Image

from groupdistil.checkpoint import rng_state
from groupdistil.config import RunConfig
from groupdistil.data.base import DatasetBundle, GroupedDataset
from groupdistil.data.header_record import ENV as HEADER_RECORD
from groupdistil.groups import Grouping
from groupdistil.models import create_model

# Property tests draw the same examples on every run (a CI result does not depend on luck) and are
# not failed for being slow to generate data on a loaded machine; each test's @settings adds the rest.
settings.register_profile("groupdistil", derandomize=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("groupdistil")

# The header check's record (data/header_record.py) goes to a folder of this test session, not the
# user's ~/.cache; the commands the tests start inherit it. A test that needs none sets its own.
if HEADER_RECORD not in os.environ:  # the first process of the session (xdist's workers inherit it)
    os.environ[HEADER_RECORD] = tempfile.mkdtemp(prefix="groupdistil-header-record-")
    atexit.register(shutil.rmtree, os.environ[HEADER_RECORD], True)


def write_image(path: Path, value: int = 128, size: tuple[int, int] = (10, 8)) -> Path:
    """A small solid image; the format follows the suffix (.png, .jpg)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 40)).save(path)
    return path


def write_csv(
    path: Path, header: Sequence[str], rows: Sequence[Sequence[object]], delimiter: str = ","
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def waterbirds_root(tmp_path: Path) -> Path:
    """12 images; group waterbird_land is empty in val."""
    rows = []
    spec = [  # (y, place, split) repeated
        (0, 0, 0), (0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0), (1, 1, 0),
        (0, 0, 1), (0, 1, 1), (1, 1, 1),
        (0, 0, 2), (1, 0, 2), (1, 1, 2),
    ]  # fmt: skip
    for i, (y, place, split) in enumerate(spec):
        name = f"{'001.Black_footed_Albatross' if y else '002.Laysan'}/img_{i}.jpg"
        write_image(tmp_path / name, value=20 * i)
        rows.append([i + 1, name, y, split, place, f"place/{i}.jpg"])
    header = ["img_id", "img_filename", "y", "split", "place", "place_filename"]
    write_csv(tmp_path / "metadata.csv", header, rows)
    return tmp_path


CELEBA_ATTRS = ["5_o_Clock_Shadow", "Blond_Hair", "Eyeglasses", "Male"]
CELEBA_ROWS = [  # image, attributes (-1/1), partition
    ("000001.jpg", [-1, 1, -1, -1], 0),
    ("000002.jpg", [-1, -1, -1, 1], 0),
    ("000003.jpg", [1, -1, 1, 1], 0),
    ("000004.jpg", [-1, 1, -1, 1], 0),
    ("000005.jpg", [-1, -1, 1, -1], 1),
    ("000006.jpg", [-1, 1, -1, -1], 1),
    ("000007.jpg", [1, -1, -1, 1], 2),
    ("000008.jpg", [-1, 1, 1, -1], 2),
]


def write_celeba(root: Path, variant: str) -> Path:
    """CelebA lists as Kaggle's .csv files or as the original whitespace .txt files."""
    for name, _, _ in CELEBA_ROWS:
        write_image(root / "img_align_celeba" / name, size=(9, 11))
    if variant == "csv":
        attrs = [[n, *a] for n, a, _ in CELEBA_ROWS]
        write_csv(root / "list_attr_celeba.csv", ["image_id", *CELEBA_ATTRS], attrs)
        parts = [[n, p] for n, _, p in CELEBA_ROWS]
        write_csv(root / "list_eval_partition.csv", ["image_id", "partition"], parts)
    else:
        lines = [str(len(CELEBA_ROWS)), " ".join(CELEBA_ATTRS) + " "]
        # The original pads positive values with an extra space: "-1  1 -1".
        lines += [n + " " + " ".join(f"{v:2d}" for v in a) for n, a, _ in CELEBA_ROWS]
        (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
        (root / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, _, p in CELEBA_ROWS))
    return root


VENDOR_NAMES = {"A": "Siemens", "B": "Philips", "C": "GE", "D": "Canon"}
MNMS_HEADER = ["External code", "VendorName", "Vendor", "Centre", "ED", "ES", "Pathology"]


def write_mnms(root: Path, folders: dict[str, list[str]], *, pathology: bool = True, frames: int = 5) -> Path:
    """Patients (code -> folder) with random 4D cines (12, 10, 6 slices, frames) and a metadata CSV."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    rows = []
    n = 0
    for folder, codes in folders.items():
        for code in codes:
            d = root / folder / code
            d.mkdir(parents=True)
            vol = rng.integers(0, 400, size=(12, 10, 6, frames)).astype(np.int16)
            nib.Nifti1Image(vol, np.eye(4)).to_filename(d / f"{code}_sa.nii.gz")
            vendor = "ABCD"[n % 4]
            row = [code, VENDOR_NAMES[vendor], vendor, 1 + n % 3, 0, 3]
            rows.append([*row, "NOR" if n % 2 else "HCM"] if pathology else row)
            n += 1
    header = MNMS_HEADER if pathology else MNMS_HEADER[:-1]
    name = "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"
    if not pathology:
        name = "M&Ms_Dataset_Information.csv"
    write_csv(root / name, header, rows)
    return root


def make_blobs(seed: int = 0, n: int = 240, spurious: float = 0.9) -> DatasetBundle:
    """Two classes x two attributes of 2-D Gaussian blobs (with a spurious attribute in train).

    The label is weakly encoded in feature 0 and the attribute strongly in feature 1, so ERM leans on
    the attribute; the minority groups are (y=0, a=1) and (y=1, a=0).
    """
    gen = torch.Generator().manual_seed(seed)
    grouping = Grouping.label_attribute(["neg", "pos"], ["a0", "a1"])

    def split(m: int, p_agree: float, name: str) -> GroupedDataset:
        y = torch.randint(0, 2, (m,), generator=gen)
        agree = torch.rand(m, generator=gen) < p_agree
        a = torch.where(agree, y, 1 - y)
        x = torch.randn(m, 4, generator=gen) * 0.8
        x[:, 0] += 1.0 * (2 * y - 1)
        x[:, 1] += 2.0 * (2 * a - 1)
        return GroupedDataset(y, grouping.group_ids(y, a), inputs=x, identity={"name": "blobs", "split": name,
                                                                             "seed": seed})

    splits = {"train": split(n, spurious, "train"), "val": split(n // 2, 0.5, "val"),
              "test": split(n // 2, 0.5, "test")}
    return DatasetBundle("blobs", grouping, (4,), splits)


@pytest.fixture
def blobs() -> DatasetBundle:
    return make_blobs()


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now (for gloo and torchrun rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def valid_checkpoint(out: Path) -> dict[str, Any]:
    """A resumable checkpoint of a linear model on spurious-digits, as a run in ``out`` writes it."""
    model = create_model("linear", num_classes=2, in_channels=3, input_shape=(3, 8, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return {
        "model_name": "linear", "num_classes": 2, "in_channels": 3, "input_shape": [3, 8, 8],
        "class_names": ["digit0-4", "digit5-9"], "group_names": ["a", "b", "c", "d"], "world_size": 1,
        "config": RunConfig(out=out, model={"name": "linear"}).model_dump(mode="json"),
        "model": model.state_dict(), "objective": {}, "epoch": 0, "step": 15, "best_metric": {"avg_acc": 0.5},
        "best_epoch": 0, "skipped_steps": 0, "overflow_steps": 0, "optimizer": opt.state_dict(),
        "scheduler": torch.optim.lr_scheduler.StepLR(opt, 30).state_dict(), "rng": rng_state(),
    }
