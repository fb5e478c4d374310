"""gpu_check.sh part 1's table: each run on the device beside the same command's run on the CPU.

    python benchmarks/gpu_check_table.py WORK DEVICE DEST

WORK holds one folder per device (``WORK/<device>``, ``WORK/cpu``), each with the teacher's and the
students' run folders and ``ms`` (wall milliseconds per student run). Every run must have written
final.json and kept q on the simplex (asserted).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def _run(folder: Path) -> dict[str, float] | None:
    if not (folder / "final.json").is_file():
        return None
    final = json.loads((folder / "final.json").read_text())
    test = final["splits"]["test"]
    row = {"avg": test["avg_acc"], "worst": test["worst_group_acc"]}
    weights = folder / "group_weights.csv"
    rows = list(csv.reader(weights.read_text().splitlines()))[1:] if weights.is_file() else []
    if rows:
        gap = max(abs(sum(float(v) for v in r[2:]) - 1) for r in rows)
        assert gap < 1e-5, (folder, gap)
        row["gap"] = gap
        lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        row["overflow"] = [x for x in lines if x["split"] == "train"][-1]["overflow_steps"]  # a running total
    return row


def _ms(folder: Path) -> dict[str, str]:
    path = folder / "ms"
    return dict(line.split() for line in path.read_text().splitlines()) if path.is_file() else {}


def table(work: Path, device: str) -> list[str]:
    here, cpu = work / device, work / "cpu"
    ms = _ms(here)
    names = ["teacher", *ms]
    lines = [f"# GroupDistil on spurious-digits (cnn teacher, group DRO; cnn-small students), device {device}", "",
             f"| run | {device} test avg | {device} worst-group | cpu test avg | cpu worst-group | overflow steps "
             "| max abs(sum q - 1) | seconds |", "|" + " --- |" * 8]
    for name in names:
        mine = _run(here / name)
        assert mine is not None, f"{here / name}: no final.json"
        ref = _run(cpu / name) if device != "cpu" else mine
        ref_s = (f"{ref['avg']:.3f} | {ref['worst']:.3f}" if ref else "n/a | n/a")
        secs = f"{int(ms[name]) / 1000:.1f}" if name in ms else ""
        gap = f"{mine['gap']:.1e}" if "gap" in mine else ""
        lines.append(f"| {name} | {mine['avg']:.3f} | {mine['worst']:.3f} | {ref_s} | {mine.get('overflow', '')} "
                     f"| {gap} | {secs} |")
    return lines


if __name__ == "__main__":
    work, device, dest = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    text = "\n".join(table(work, device)) + "\n"
    dest.write_text(text)
    print(text)
