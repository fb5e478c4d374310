"""`make bench`: every performance figure as a ratio measured within one run, written to
benchmarks/results/perf.json and perf.md with a description of the machine.

    python benchmarks/run.py [--only objectives|train_step|cache|e2e|ddp|layout|paper_scale|load|steady|gpu] [--quick]
        [--threads N] [--out DIR]

The GPU benchmark runs by default only where CUDA is available; record it with
`python benchmarks/run.py --only gpu --out benchmarks/results/gpu`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_cache
import bench_ddp
import bench_e2e
import bench_gpu
import bench_layout
import bench_load
import bench_objectives
import bench_paper_scale
import bench_steady
import bench_train_step
from timing import interleaved

#: The profile and history of every figure, which each perf.md links to.
NOTES = Path(__file__).resolve().parent / "results" / "perf-notes.md"

BENCHES = {"objectives": bench_objectives, "train_step": bench_train_step, "cache": bench_cache, "e2e": bench_e2e,
           "ddp": bench_ddp, "layout": bench_layout, "paper_scale": bench_paper_scale, "load": bench_load,
           "steady": bench_steady, "gpu": bench_gpu}
#: What a plain `make bench` runs: the GPU benchmark only where there is a GPU.
DEFAULT = ["objectives", "train_step", "cache", "e2e", "ddp", "layout", "paper_scale", "load", "steady"] + (
    ["gpu"] if torch.cuda.is_available() else [])


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "kernels": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            **({"gpu": torch.cuda.get_device_name(0)} if torch.cuda.is_available() else {})}


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _verdict(row: dict[str, Any]) -> str:
    target = row.get("target")
    if target is None:
        return ""
    ratios = [v for k, v in row.items() if (k.endswith("_over_kd") and not k.startswith("dense"))
              or k in ("cached_over_no_teacher", "reader_over_pillow", "more_epoch_over_bare", "fixed_over_allowed")]
    return "pass" if all(r <= target for r in ratios) else "MISS"


def markdown(results: dict[str, list[dict[str, Any]]], info: dict[str, Any], command: str,
             notes: str = "perf-notes.md") -> str:
    """perf.md's text; ``notes`` is the link to perf-notes.md from the folder it is written to."""
    lines = ["# Performance", "", f"Command: `{command}`", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "",
             "Every ratio is a ratio of medians of interleaved repeats measured in this one run "
             "(lower is cheaper); absolute times are for orientation only. What each figure means, "
             "what was profiled and fixed (before and after), and what is left: "
             f"[perf-notes.md]({notes}).", ""]
    for name, rows in results.items():
        keys = list(dict.fromkeys(k for r in rows for k in r))
        lines += [f"## {name}", "", "| " + " | ".join([*keys, "verdict"]) + " |",
                  "|" + " --- |" * (len(keys) + 1)]
        lines += ["| " + " | ".join([*(_fmt(r.get(k, "")) for k in keys), _verdict(r)]) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--only", choices=list(BENCHES), action="append")
    p.add_argument("--quick", action="store_true", help="3 repeats instead of 20 (smoke test)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved samples per variant (default 20; 3 quick)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's own choice, one per core)")
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads: expected a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 20)
    if repeats < 1:
        p.error(f"--repeats: expected a positive integer, got {repeats}")
    results = {}
    for name in args.only or DEFAULT:
        print(f"running {name} ...", flush=True)
        extra = {"quick": args.quick} if name == "gpu" else {}
        results[name] = BENCHES[name].run(repeats, interleaved, **extra)
    info = machine()
    command = "python benchmarks/run.py" + "".join(f" --only {n}" for n in args.only or []) + (
        " --quick" if args.quick else "") + (f" --threads {args.threads}" if args.threads else "") + (
        f" --repeats {args.repeats}" if args.repeats else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "perf.json").write_text(json.dumps({"machine": info, "command": command, "results": results},
                                                   indent=2) + "\n")
    notes = Path(os.path.relpath(NOTES, args.out.resolve())).as_posix()
    text = markdown(results, info, command, notes)
    (args.out / "perf.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
