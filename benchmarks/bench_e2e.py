"""End to end: the built-in benchmarks' build time, `groupdistil demo` wall time (information, no
target), `data inspect` of a 200k-row
manifest (seconds, and against parsing the CSV in Python), and the image reader's
throughput (a manifest of JPEGs through the engine's training loader with 2 workers, workers started
each epoch as in training) against Pillow's decode-only floor on the same files in one process."""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from groupdistil.data import DataConfig, digits, load_dataset
from groupdistil.loaders import train_loader

N_IMAGES = 1024


def _images(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = ["path,label,split"]
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.jpg", quality=90)
        rows.append(f"{i}.jpg,{i % 2},{'train' if i % 4 else 'val'}")
    rows.append("0.jpg,0,test")
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    return folder / "m.csv"


def _big_manifest(path: Path, n: int = 200_000) -> Path:
    rng = np.random.default_rng(0)
    labels, splits = rng.integers(0, 5, n), np.array(["train", "val", "test"])[rng.integers(0, 3, n)]
    labels[:5], splits[:5] = np.arange(5), "train"
    with open(path, "w") as f:
        f.write("path,label,split,site\n")
        f.writelines(f"img/{i}.jpg,{labels[i]},{splits[i]},s{i % 3}\n" for i in range(n))
    return path


def _inspect_row(d: str, repeats: int, timer) -> dict[str, Any]:
    """`data inspect` of a 200k-row manifest: metadata only, against parsing the same CSV in Python."""
    big = _big_manifest(Path(d) / "big.csv")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))

    def inspect_cli():
        subprocess.run([sys.executable, "-m", "groupdistil", "data", "inspect", "--dataset", "manifest",
                        "--root", str(big), "--group-by", "site", "--json"],
                       check=True, capture_output=True, env=env)

    def inspect_lib():
        b = load_dataset(DataConfig(dataset="manifest", root=big, group_by=["site"]))
        for split in ("train", "val", "test"):
            b.group_counts(split)

    def csv_floor():
        with open(big, newline="") as f:
            for _ in csv.reader(f):
                pass

    med = timer({"cli": inspect_cli, "lib": inspect_lib, "csv": csv_floor}, repeats=max(3, repeats // 4), warmup=1)
    return {"case": "data inspect, 200k-row manifest", "wall_s": med["cli"], "build_and_count_s": med["lib"],
            "build_over_csv_parse": med["lib"] / med["csv"]}


def _builtin_rows(repeats: int, timer) -> list[dict[str, Any]]:
    """Seconds to build each built-in benchmark (all three splits, in memory), as the first build in a
    process does it: scikit-learn's digits are read again each time (the reader caches them)."""
    names = ("spurious-digits", "scanner-digits", "digits-lt")

    def cold(name: str):
        def go():
            digits._digits.cache_clear()
            load_dataset(DataConfig(dataset=name))
        return go

    med = timer({n: cold(n) for n in names}, repeats=repeats, warmup=1)
    return [{"case": f"build {n}", "wall_s": med[n]} for n in names]


def run(repeats: int, timer, demo: bool = True) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = _builtin_rows(repeats, timer)
    with tempfile.TemporaryDirectory() as d:
        rows.append(_inspect_row(d, repeats, timer))
        manifest = _images(Path(d))
        train = load_dataset(DataConfig(dataset="manifest", root=manifest, image_size=64)).train
        files = sorted(Path(d).glob("*.jpg"))

        first: list[float] = []

        def reader():
            # The engine's own training loader: a new one (and new workers) every epoch.
            t0 = time.perf_counter()
            for i, _ in enumerate(train_loader(train, 32, seed=0, epoch=0, num_workers=2)):
                if i == 0:
                    first.append(time.perf_counter() - t0)

        def floor():
            for f in files[: len(train)]:
                with Image.open(f) as im:
                    im.convert("RGB").load()

        med = timer({"reader": reader, "pillow": floor}, repeats=max(3, repeats // 4), warmup=1)
        rows.append({"case": f"{len(train)} JPEGs 64x64, 2 workers",
                     "reader_images_per_s": len(train) / med["reader"],
                     "pillow_images_per_s": len(train) / med["pillow"],
                     "reader_over_floor_time": med["reader"] / med["pillow"],
                     "first_batch_s": statistics.median(first)})
        if demo:
            env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "groupdistil", "demo", "--seeds", "1", "--out", f"{d}/demo"],
                           check=True, capture_output=True, env=env)
            rows.append({"case": "groupdistil demo --seeds 1 (7 runs)", "wall_s": time.perf_counter() - t0})
    return rows
