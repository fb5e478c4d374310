"""Why a robust student collapses (or not): each teacher's per-class accuracy on the training split,
and each robust student's lambda at the end of every epoch with its test per-class accuracy.

    python benchmarks/experiments/lt_diagnostics.py runs/bench/cifar10-lt > benchmarks/results/cifar10-lt/diagnostics.md
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def _final(run: Path) -> dict | None:
    path = run / "final.json"
    return json.loads(path.read_text()) if path.is_file() else None


def teacher_rows(root: Path) -> list[str]:
    lines = ["| teacher | seed | train per-class accuracy (class order) | test worst-class / avg |",
             "| --- | --- | --- | --- |"]
    for run in sorted(root.glob("teacher-*/seed*")):
        final = _final(run)
        if final is None:
            continue
        train, test = final["splits"]["train"], final["splits"]["test"]
        accs = " ".join(f"{100 * v:.0f}" for v in train["class_acc"].values())
        lines.append(f"| {run.parent.name} | {run.name} | {accs} | {100 * test['worst_class_acc']:.1f} / "
                     f"{100 * test['avg_acc']:.1f} |")
    return lines


def lambda_by_epoch(run: Path) -> tuple[list[str], list[list[float]]]:
    """Class names and, per epoch, lambda after that epoch's last step."""
    with open(run / "group_weights.csv", newline="") as f:
        rows = list(csv.reader(f))
    last: dict[int, list[float]] = {}
    for row in rows[1:]:
        last[int(row[1])] = [float(v) for v in row[2:]]
    return rows[0][2:], [last[e] for e in sorted(last)]


def student_rows(root: Path, pattern: str) -> list[str]:
    lines = ["| student | seed | lambda after each epoch: largest class (weight) | test worst-class / avg | "
             "test per-class accuracy |", "| --- | --- | --- | --- | --- |"]
    for run in sorted(root.glob(f"{pattern}/seed*")):
        final = _final(run)
        if final is None:
            continue
        names, epochs = lambda_by_epoch(run)
        trace = ", ".join(f"{names[max(range(len(q)), key=q.__getitem__)]} ({max(q):.2f})" for q in epochs)
        test = final["splits"]["test"]
        accs = " ".join(f"{100 * v:.0f}" for v in test["class_acc"].values())
        lines.append(f"| {run.parent.name} | {run.name} | {trace} | {100 * test['worst_class_acc']:.1f} / "
                     f"{100 * test['avg_acc']:.1f} | {accs} |")
    return lines


def main(root: Path) -> str:
    return "\n".join(["## Teachers", "", *teacher_rows(root), "", "## Robust students", "",
                      *student_rows(root, "robust<-*"), ""])


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
