"""Compact Markdown tables for benchmarks/results/README.md from a report's summary.json:

    python benchmarks/experiments/tables.py benchmarks/results/spurious-digits/summary.json avg_acc,worst_group_acc
"""

from __future__ import annotations

import json
import sys


def table(path: str, metrics: list[str]) -> str:
    with open(path) as f:
        data = json.load(f)
    lines = []
    for rows in (d["rows"] for d in data["datasets"].values()):
        lines += ["| run | role | " + " | ".join(metrics) + " |", "| --- | --- |" + " --- |" * len(metrics)]
        for r in rows:
            cells = []
            for m in metrics:
                s = r["test"][m]
                cells.append("n/a" if s["mean"] is None else f"{100 * s['mean']:.1f} ± {100 * (s['std'] or 0):.1f}")
            lines.append(f"| {r['name']} | {r['role']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1], sys.argv[2].split(",")))
