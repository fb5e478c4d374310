"""Why a robust student collapses (or not): each teacher's per-class accuracy on the training split,
and each robust student's lambda at the end of every epoch with its test per-class accuracy.

    python benchmarks/experiments/lt_diagnostics.py runs/bench/cifar10-lt [IMAGES] > diagnostics.md

With IMAGES (the CIFAR-10 image folder) it also loads each teacher and reads its training-split
logits from the study's teacher-logit cache.
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


def main(root: Path, images: str | None = None) -> str:
    mass = []
    for temperature in (2.0, 1.0) if images else ():  # the grid's T and the ablation's
        mass += ["", f"## Teachers' soft class membership on the training split (T = {temperature:g})", "",
                 *teacher_mass(root, images, temperature)]
    return "\n".join(["## Teachers", "", *teacher_rows(root), *mass, "", "## Robust students", "",
                      *student_rows(root, "robust<-*"), ""])


def teacher_mass(root: Path, images: str, temperature: float = 2.0) -> list[str]:
    """Per class k, the teacher's soft membership sum_i p_ik (at the students' T) over the training
    split divided by the class's n_k: the factor by which the distillation part of R_k outweighs the
    class's own samples (read from the students' teacher-logit cache; computed on a miss)."""
    import sys as _sys

    import torch

    from groupdistil.app.runner import model_from_checkpoint
    from groupdistil.data import DataConfig, load_dataset
    from groupdistil.teachers import LogitCache, cached_or_computed

    _sys.path.insert(0, str(Path(__file__).parent))
    import study

    bundle = load_dataset(DataConfig(**{**study.REAL_DATA, "root": images}))
    train = bundle.train.without_augmentation()
    n = bundle.class_counts("train").float()
    lines = ["| teacher | seed | sum_i p_ik / n_k per class (class order) |", "| --- | --- | --- |"]
    for ckpt in sorted(root.glob("teacher-*/seed*/checkpoints/best.pt")):
        if not (ckpt.parents[1] / "final.json").is_file():
            continue
        model, _ = model_from_checkpoint(ckpt)
        logits = cached_or_computed(model, train, LogitCache(root / "teacher-cache"), bundle.n_classes).logits
        mass = torch.softmax(logits.float() / temperature, dim=1).sum(0) / n
        lines.append(f"| {ckpt.parents[2].name} | {ckpt.parents[1].name} | "
                     + " ".join(f"{v:.2f}" for v in mass.tolist()) + " |")
    return lines


if __name__ == "__main__":
    print(main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
