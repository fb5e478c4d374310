"""Synthetic run directories in the engine's exact format, for the report tests.

The numbers are made up but consistent (worst-group = min of the groups, balanced = their mean), and
they differ by seed so that standard deviations and bootstrap intervals are not degenerate.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

GROUPS = ("landbird_land", "landbird_water", "waterbird_land", "waterbird_water")
CLASSES = ("landbird", "waterbird")
SEEDS = (0, 1, 2)
N_BINS = 15
STEPS = 40

#: (role, name, method, options, base accuracy per group, weight columns) of the spurious-digits study.
SPURIOUS_RUNS: tuple[tuple[str, str, str, dict[str, Any], tuple[float, ...], tuple[str, ...]], ...] = (
    ("teacher", "erm-teacher", "erm", {}, (0.99, 0.86, 0.74, 0.98), ()),
    ("student", "erm", "erm", {}, (0.95, 0.70, 0.55, 0.93), ()),
    ("student", "group-dro", "group-dro", {"eta": 0.01}, (0.90, 0.84, 0.80, 0.88), GROUPS),
    ("student", "kd", "kd", {"alpha": 0.5, "temperature": 4.0}, (0.96, 0.72, 0.60, 0.94), ()),
    ("student", "groupdistil-dro_on=both", "groupdistil",
     {"alpha": 0.5, "temperature": 4.0, "dro_on": "both"}, (0.91, 0.86, 0.83, 0.89), GROUPS),
)
#: The class-robust tradeoff sweep: beta -> base accuracies (more robust, lower average).
SWEEP = {0.0: (0.95, 0.71, 0.58, 0.93), 0.5: (0.93, 0.78, 0.70, 0.91), 1.0: (0.89, 0.80, 0.76, 0.86)}


def split_metrics(group_acc: dict[str, float], seed: int, with_calibration: bool) -> dict[str, Any]:
    """One split's metrics M, computed from the group accuracies like the engine would."""
    counts = dict(zip(GROUPS, (300, 300, 90, 90), strict=True))
    total = sum(counts.values())
    correct = {g: group_acc[g] * counts[g] for g in GROUPS}
    class_acc = {
        "landbird": (correct[GROUPS[0]] + correct[GROUPS[1]]) / (counts[GROUPS[0]] + counts[GROUPS[1]]),
        "waterbird": (correct[GROUPS[2]] + correct[GROUPS[3]]) / (counts[GROUPS[2]] + counts[GROUPS[3]]),
    }
    train_share = dict(zip(GROUPS, (0.73, 0.04, 0.01, 0.22), strict=True))
    m: dict[str, Any] = {
        "avg_acc": sum(correct.values()) / total,
        "worst_group_acc": min(group_acc.values()),
        "balanced_acc": sum(group_acc.values()) / len(group_acc),
        "adjusted_avg_acc": sum(train_share[g] * group_acc[g] for g in GROUPS),
        "worst_class_acc": min(class_acc.values()),
        "group_acc": dict(group_acc),
        "group_count": counts,
        "class_acc": class_acc,
        "group_ece": {g: 0.02 + 0.01 * k for k, g in enumerate(GROUPS)},
        "class_ece": {"landbird": 0.03 + 0.01 * seed, "waterbird": 0.12 + 0.02 * seed},
        "ece": 0.05 + 0.01 * seed,
        "reliability": _reliability(seed) if with_calibration else _empty_reliability(),
    }
    return m


def _reliability(seed: int) -> dict[str, list[Any]]:
    """An over-confident teacher: accuracy below confidence in the upper bins; low bins empty."""
    confidence, accuracy, count = [], [], []
    for b in range(N_BINS):
        centre = (b + 0.5) / N_BINS
        if centre < 0.5:
            confidence.append(None)
            accuracy.append(None)
            count.append(0)
        else:
            confidence.append(centre)
            accuracy.append(max(0.0, centre - 0.08 - 0.01 * seed))
            count.append(10 + 5 * b + seed)
    return {"confidence": confidence, "accuracy": accuracy, "count": count}


def _empty_reliability() -> dict[str, list[Any]]:
    return {"confidence": [None] * N_BINS, "accuracy": [None] * N_BINS, "count": [0] * N_BINS}


def seeded(base: tuple[float, ...], seed: int) -> dict[str, float]:
    """Group accuracies of one seed: the base moved by a seed- and group-dependent amount."""
    return {g: round(min(1.0, a + 0.01 * ((seed * 3 + k) % 4) - 0.015), 4) for k, (g, a) in enumerate(zip(
        GROUPS, base, strict=True))}


def weights_rows(names: tuple[str, ...], seed: int) -> list[list[float]]:
    """q drifting towards the later columns (the minority groups), a little differently per seed."""
    rows = []
    for step in range(STEPS):
        logits = [0.02 * step * k * (1 + 0.1 * seed) for k in range(len(names))]
        z = sum(math.exp(v) for v in logits)
        rows.append([step, step // 10, *(math.exp(v) / z for v in logits)])
    return rows


def write_run(
    root: Path,
    *,
    role: str,
    name: str,
    method: str,
    options: dict[str, Any],
    seed: int,
    group_acc: dict[str, float],
    dataset: str = "spurious-digits",
    weight_names: tuple[str, ...] = (),
    teacher: str | None = None,
) -> Path:
    """Write one finished run directory in the engine's format; returns its path."""
    path = root / dataset / f"{name}" / f"seed{seed}"
    path.mkdir(parents=True)
    test = split_metrics(group_acc, seed, with_calibration=role == "teacher")
    final = {
        "name": name,
        "method": method,
        "role": role,
        "dataset": dataset,
        "seed": seed,
        "model": "mlp" if role == "student" else "cnn",
        "teacher": teacher,
        "options": options,
        "selected_epoch": 3 + seed,
        "selection_metric": "worst_group_acc",
        "splits": {"train": test, "val": test, "test": test},
    }
    (path / "final.json").write_text(json.dumps(final, indent=1))
    (path / "config.yaml").write_text(f"dataset: {dataset}\nseed: {seed}\nobjective: {method}\n")
    scalars = {k: test[k] for k in ("avg_acc", "worst_group_acc")}
    lines = [
        {"epoch": e, "split": s, "loss": 1 / (e + 1), **scalars} for e in range(3) for s in ("train", "val")
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    header = "step,epoch" + "".join(f",{n}" for n in weight_names) + "\n"
    body = "".join(",".join(f"{v:g}" for v in row) + "\n" for row in weights_rows(weight_names, seed))
    (path / "group_weights.csv").write_text(header + (body if weight_names else ""))
    return path


def make_study(root: Path) -> Path:
    """The whole synthetic study under ``root``: 5 configurations x 3 seeds, a beta sweep x 3 seeds,
    a one-seed run on a second dataset, and one unfinished run. Returns ``root``."""
    for role, name, method, options, base, weight_names in SPURIOUS_RUNS:
        for seed in SEEDS:
            write_run(root, role=role, name=name, method=method, options=options, seed=seed,
                      group_acc=seeded(base, seed), weight_names=weight_names,
                      teacher="erm-teacher" if method in ("kd", "groupdistil") else None)
    for beta, base in SWEEP.items():
        for seed in SEEDS:
            write_run(root, role="student", name=f"class-robust-kd-beta={beta:g}", method="class-robust-kd",
                      options={"alpha": 0.5, "mode": "tradeoff", "beta": beta}, seed=seed,
                      group_acc=seeded(base, seed), weight_names=CLASSES, teacher="erm-teacher")
    write_run(root, role="student", name="erm", method="erm", options={}, seed=0, dataset="digits-lt",
              group_acc=seeded((0.9, 0.8, 0.7, 0.6), 0))
    unfinished = root / "spurious-digits" / "groupdistil-dro_on=kd" / "seed0"
    unfinished.mkdir(parents=True)
    (unfinished / "config.yaml").write_text("dataset: spurious-digits\n")
    (unfinished / "metrics.jsonl").write_text('{"epoch": 0, "split": "train", "loss": 0.7}\n')
    return root
