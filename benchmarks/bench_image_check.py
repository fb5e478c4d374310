"""The cost of reading every image's header when a dataset is loaded (``load_dataset(check_files=True)``),
the first time (no record) and once the headers that passed are recorded (data/header_record.py: a
``stat`` per file), against loading without it and against decoding every image once (what one epoch
does anyway).

    python benchmarks/bench_image_check.py [--images 2000] [--side 64] [--repeats 5]

Writes ``--images`` random-noise JPEGs of ``--side`` px into a temporary folder with a manifest, then
times the three variants interleaved (timing.interleaved) and prints their medians and ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from groupdistil.data import DataConfig, load_dataset
from groupdistil.data.header_record import ENV
from timing import interleaved


def write_images(root: Path, n: int, side: int) -> Path:
    rng = np.random.default_rng(0)
    rows = ["label,split,path"]
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(root / "img" / f"{i}.jpg")
        rows.append(f"{i % 2},{('train', 'val', 'test')[i % 3]},img/{i}.jpg")
    (root / "m.csv").write_text("\n".join(rows) + "\n")
    return root / "m.csv"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        manifest = write_images(Path(d), args.images, args.side)
        cfg = DataConfig(dataset="manifest", root=manifest, image_size=args.side)
        bundle = load_dataset(cfg, check_files=False)

        def decode_all() -> None:
            for split in bundle.splits.values():
                for i in range(len(split)):
                    split.loader(i)

        def load(record: str) -> None:
            os.environ[ENV] = record
            load_dataset(cfg)

        med = interleaved({
            "load, no check": lambda: load_dataset(cfg, check_files=False),
            "load with header check": lambda: load(""),  # no record: every header read
            "load, headers recorded": lambda: load(str(Path(d) / "record")),
            "decode every image once": decode_all,
        }, repeats=args.repeats, warmup=1)
    check = med["load with header check"] - med["load, no check"]
    recorded = med["load, headers recorded"] - med["load, no check"]
    for name, s in med.items():
        print(f"{name:26s} {s * 1e3:8.1f} ms")
    print(f"header check: {check * 1e6 / args.images:.1f} us per image; "
          f"{med['load with header check'] / med['load, no check']:.1f}x loading without it; "
          f"{check / med['decode every image once']:.2f}x decoding every image once")
    print(f"recorded: {recorded * 1e6 / args.images:.1f} us per image; {recorded / check:.3f}x the full check")


if __name__ == "__main__":
    main()
