"""The end-to-end demo on built-in data: teachers, then students, then one table.

On ``spurious-digits`` (label = digit >= 5; background colour agrees with the label in 95% of the
training images and is independent of it in validation and test) it trains an ERM teacher and a
group-DRO teacher, then students by ERM (no teacher), KD and GroupDistil from each teacher, over a few
seeds, and prints average and worst-group test accuracy (mean +- std over seeds) with the per-group
accuracies. Every run is a normal run folder under ``out``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from groupdistil.app.runner import run_experiment
from groupdistil.config import RunConfig, validate_config
from groupdistil.report.stats import summarise
from groupdistil.runs.rundir import RunPaths, check_location

#: Hyper-parameters of the demo; chosen on validation worst-group accuracy (README.md, "What the demo shows").
DEMO = {
    "dataset": "spurious-digits",
    "teacher_model": "cnn",
    "student_model": "cnn-small",
    "epochs": 20,
    "batch_size": 64,
    "lr": 0.05,
    "step_size": 0.01,
    "alpha": 0.5,
    "temperature": 4.0,
}


def _config(out: Path, name: str, role: str, model: str, method: str, seed: int, epochs: int,
            teacher: Path | None = None, **objective: Any) -> RunConfig:
    raw: dict[str, Any] = {
        "name": name, "role": role, "out": str(out / f"{name}-seed{seed}"), "quiet": True, "force": True,
        "data": {"dataset": DEMO["dataset"]},
        "model": {"name": model},
        "objective": {"method": method, **objective},
        "optim": {"lr": DEMO["lr"]},
        "train": {"epochs": epochs, "batch_size": DEMO["batch_size"], "seed": seed},
    }
    if teacher is not None:
        raw["teacher"] = {"checkpoints": [str(teacher)], "cache_dir": str(out / "teacher-cache")}
    return validate_config(raw, "demo")


def demo_plan(out: Path, seed: int, epochs: int) -> list[RunConfig]:
    """The runs of one seed, teachers first."""
    eta, a, t = DEMO["step_size"], DEMO["alpha"], DEMO["temperature"]
    tm, sm = DEMO["teacher_model"], DEMO["student_model"]
    runs = [
        _config(out, "teacher-erm", "teacher", tm, "erm", seed, epochs),
        _config(out, "teacher-group-dro", "teacher", tm, "group-dro", seed, epochs, step_size=eta),
        _config(out, "student-erm", "student", sm, "erm", seed, epochs),
    ]
    for tname in ("teacher-erm", "teacher-group-dro"):
        ckpt = RunPaths(out / f"{tname}-seed{seed}").best
        short = tname.removeprefix("teacher-")
        runs.append(_config(out, f"kd<-{short}", "student", sm, "kd", seed, epochs, ckpt, alpha=a, temperature=t))
        runs.append(_config(out, f"groupdistil<-{short}", "student", sm, "groupdistil", seed, epochs, ckpt,
                            alpha=a, temperature=t, step_size=eta))
    return runs


def run_demo(
    out: Path, seeds: int = 3, epochs: int = DEMO["epochs"], echo: Callable[[str], None] = print
) -> dict[str, list[dict[str, Any]]]:
    """Run every demo run for ``seeds`` seeds; returns final.json contents grouped by run name."""
    out = Path(out)
    check_location(out)  # before the first run: each run's own folder is checked as it starts
    results: dict[str, list[dict[str, Any]]] = {}
    for seed in range(seeds):
        for cfg in demo_plan(out, seed, epochs):
            echo(f"[seed {seed}] {cfg.label} ({cfg.objective.method}, {cfg.model.name})")
            results.setdefault(cfg.label, []).append(run_experiment(cfg, echo=lambda _m: None))
    echo(format_table(results))
    return results


def _mean_std(values: list[float | None]) -> str:
    s = summarise([100 * x for x in values if x is not None])
    return "n/a" if s.mean is None else f"{s.mean:5.1f} +- {s.std or 0.0:4.1f}"


def format_table(results: dict[str, list[dict[str, Any]]], split: str = "test") -> str:
    """Average and worst-group accuracy (mean +- std over seeds) and per-group means, one row a model."""
    first = next(iter(results.values()))[0]
    groups = list(first["splits"][split]["group_acc"])
    head = f"{'model':22s} {'avg acc':>13s} {'worst-group':>13s}  " + "  ".join(f"{g:>15s}" for g in groups)
    n_seeds = len(next(iter(results.values())))
    lines = [f"{split} accuracy (%), mean +- std over {n_seeds} seeds", head]
    for name, finals in results.items():
        m = [f["splits"][split] for f in finals]
        per_group = "  ".join(f"{_mean_std([x['group_acc'][g] for x in m]):>15s}" for g in groups)
        lines.append(
            f"{name:22s} {_mean_std([x['avg_acc'] for x in m]):>13s} "
            f"{_mean_std([x['worst_group_acc'] for x in m]):>13s}  {per_group}"
        )
    return "\n".join(lines)
