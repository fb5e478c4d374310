"""Tables of the issue-14 studies (study.py ablation / calibrate) from the run folders' final.json:

    python benchmarks/experiments/ablation.py runs/bench/spurious-digits-ablation \
        > benchmarks/results/spurious-digits-ablation/tables.md
    python benchmarks/experiments/ablation.py runs/bench/digits-lt-calibrate \
        > benchmarks/results/digits-lt-calibrate/tables.md

- the step-size grid: validation worst-group accuracy (mean ± std over seeds) per eta, for GroupDistil
  and for group DRO without a teacher; eta is chosen on the validation mean only;
- test accuracy of every row, with the 95% bootstrap interval of the worst-group mean;
- paired differences (same seed: same data order, initialisation and teacher) that isolate each
  mechanism, with 95% bootstrap intervals: per-group averaging (eta = 0 vs plain KD / ERM, and
  1/n_g weights vs plain KD), the dynamic weights (chosen eta vs eta = 0);
- the teacher ensembles with their cost in teacher passes; for digits-lt, the calibrated teachers'
  per-class ECE before and after.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from groupdistil.report.stats import bootstrap_mean_ci, summarise

ETAS = ("0.0", "0.001", "0.01", "0.1", "1.0")


def load(root: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """{run name: {seed: final.json}} for every finished run under root."""
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for f in sorted(root.glob("*/seed*/final.json")):
        runs.setdefault(f.parent.parent.name, {})[int(f.parent.name[4:])] = json.loads(f.read_text())
    return runs


def metric(runs: dict[int, dict[str, Any]], split: str, key: str) -> dict[int, float]:
    return {s: 100 * r["splits"][split][key] for s, r in runs.items() if r["splits"][split][key] is not None}


def fmt(values: dict[int, float]) -> str:
    s = summarise(list(values.values()))
    if s.mean is None:
        return "n/a"
    return f"{s.mean:.1f} ± {s.std or 0:.1f}" + ("" if s.n == 5 else f" ({s.n} seeds)")


def ci(values: dict[int, float]) -> str:
    if not values:
        return "n/a"
    lo, hi = bootstrap_mean_ci(list(values.values()))
    return f"[{lo:.1f}, {hi:.1f}]"


def grid(runs: dict[str, dict[int, dict[str, Any]]], prefix: str, worst: str) -> tuple[list[str], str | None]:
    """The validation table of a step-size grid and the eta with the best validation mean."""
    lines = [f"| eta | val {worst} | test {worst} | test avg_acc |", "| --- | --- | --- | --- |"]
    best, best_val, zero_val = None, -np.inf, -np.inf
    for eta in ETAS:
        r = runs.get(f"{prefix}{eta}")
        if not r:
            continue
        val = metric(r, "val", worst)
        lines.append(f"| {eta} | {fmt(val)} | {fmt(metric(r, 'test', worst))} | {fmt(metric(r, 'test', 'avg_acc'))} |")
        mean = float(np.mean(list(val.values())))
        if float(eta) == 0:
            zero_val = mean
        elif mean > best_val:  # "chosen step size": among eta > 0 (eta = 0 is its own row)
            best, best_val = eta, mean
    if best is not None:
        lines += ["", f"Chosen eta (best validation mean among eta > 0): **{best}**"
                  + ("; eta = 0 has the higher validation mean." if zero_val > best_val else ".")]
    return lines, best


def rows_table(runs: dict[str, dict[int, dict[str, Any]]], names: list[tuple[str, str]], worst: str) -> list[str]:
    lines = [f"| row | run | test avg_acc | test {worst} | 95% CI of {worst} |", "| --- | --- | --- | --- | --- |"]
    for label, name in names:
        if name in runs:
            w = metric(runs[name], "test", worst)
            lines.append(f"| {label} | `{name}` | {fmt(metric(runs[name], 'test', 'avg_acc'))} | {fmt(w)} | {ci(w)} |")
    return lines


def paired(runs: dict[str, dict[int, dict[str, Any]]], pairs: list[tuple[str, str, str]], worst: str) -> list[str]:
    """Per-seed differences a - b of test worst-group accuracy, mean and bootstrap interval."""
    lines = [f"| mechanism | a - b (test {worst}, points) | 95% CI | seeds |", "| --- | --- | --- | --- |"]
    for label, a, b in pairs:
        if a not in runs or b not in runs:
            continue
        va, vb = metric(runs[a], "test", worst), metric(runs[b], "test", worst)
        diff = {s: va[s] - vb[s] for s in va if s in vb}
        if diff:
            lines.append(f"| {label}: `{a}` - `{b}` | {fmt(diff)} | {ci(diff)} | {len(diff)} |")
    return lines


def ablation_tables(runs: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    worst = "worst_group_acc"
    gd_lines, gd_eta = grid(runs, "groupdistil<-erm-eta=", worst)
    dro_lines, dro_eta = grid(runs, "group-dro-eta=", worst)
    out = ["## Step-size grid, GroupDistil from the ERM teacher (eta chosen on validation mean)", "", *gd_lines,
           "", "## Step-size grid, group DRO without a teacher", "", *dro_lines, ""]
    gd, dro = f"groupdistil<-erm-eta={gd_eta}", f"group-dro-eta={dro_eta}"
    names = [("KD", "kd<-erm"), ("KD x 1/n_g", "kd-reweight<-erm"), ("GroupDistil eta=0", "groupdistil<-erm-eta=0.0"),
             ("GroupDistil chosen eta", gd), ("ERM x 1/n_g (reweight)", "reweight"),
             ("group DRO eta=0", "group-dro-eta=0.0"), ("group DRO chosen eta", dro)]
    out += ["## Test accuracy (selected on validation worst-group accuracy)", "", *rows_table(runs, names, worst), ""]
    pairs = [("per-group averaging (static, batch)", "groupdistil<-erm-eta=0.0", "kd<-erm"),
             ("per-group averaging (static, 1/n_g)", "kd-reweight<-erm", "kd<-erm"),
             ("dynamic DRO weights", gd, "groupdistil<-erm-eta=0.0"),
             ("dynamic DRO weights vs 1/n_g", gd, "kd-reweight<-erm"),
             ("no teacher: dynamic DRO weights", dro, "group-dro-eta=0.0"),
             ("no teacher: dynamic vs 1/n_g", dro, "reweight")]
    out += ["## Which mechanism carries the gain (paired by seed)", "", *paired(runs, pairs, worst), ""]
    if "kd<-ensemble" in runs:
        out += ensemble_table(runs, worst)
    return out


def ensemble_table(runs: dict[str, dict[int, dict[str, Any]]], worst: str) -> list[str]:
    """Students of single teachers and of the 4-teacher ensemble, with teacher passes per run."""
    single = max(("groupdistil<-erm-eta=0.01", "groupdistil<-group-dro"),
                 key=lambda n: np.mean(list(metric(runs.get(n, {}), "val", worst).values()) or [-1]))
    names = [("KD, ERM teacher", "kd<-erm", 1), ("GroupDistil, best single teacher (validation)", single, 1),
             ("KD, ensemble mean", "kd<-ensemble", 4), ("KD, ensemble AGRE-KD", "agre-kd<-ensemble", 5),
             ("GroupDistil, ensemble mean", "groupdistil<-ensemble", 4)]
    lines = [f"| row | run | teacher passes | test avg_acc | test {worst} | 95% CI |",
             "| --- | --- | --- | --- | --- | --- |"]
    for label, name, passes in names:
        if name in runs:
            w = metric(runs[name], "test", worst)
            lines.append(f"| {label} | `{name}` | {passes} | {fmt(metric(runs[name], 'test', 'avg_acc'))} | {fmt(w)} | "
                         f"{ci(w)} |")
    pairs = [("ensemble vs best single (GroupDistil)", "groupdistil<-ensemble", single),
             ("AGRE-KD vs mean (KD)", "agre-kd<-ensemble", "kd<-ensemble"),
             ("GroupDistil-ensemble vs AGRE-KD", "groupdistil<-ensemble", "agre-kd<-ensemble")]
    return ["## Teacher ensembles (ERM and group-DRO teachers of seeds s, s+1; AGRE-KD reference: ERM teacher "
            "of seed s+2)", "", *lines, "", *paired(runs, pairs, worst), ""]


def calibrate_tables(runs: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    worst = "worst_class_acc"
    names = [(n, n) for n in sorted(runs) if not n.startswith("teacher-")]
    out = ["## Robust students (class-robust-kd, mode robust) from calibrated teachers", "",
           *rows_table(runs, names, worst), ""]
    lines = ["| run | calibration | val NLL before -> after | test mean per-class ECE before -> after | "
             "test max per-class ECE before -> after |", "| --- | --- | --- | --- | --- |"]
    for name in names:
        reports = [r["teacher_calibration"][0] for r in runs[name[1]].values() if r.get("teacher_calibration")]
        if not reports:
            continue
        cells = [_before_after(reports, lambda r, k: r["val"]["nll"][k]),
                 _before_after(reports, lambda r, k: np.mean(list(r["test"]["class_ece"][k].values()))),
                 _before_after(reports, lambda r, k: max(r["test"]["class_ece"][k].values()))]
        lines.append(f"| `{name[1]}` | {reports[0]['method']} | " + " | ".join(cells) + " |")
    return [*out, "## The teachers' calibration (mean over the 5 seeds' teachers)", "", *lines, ""]


def _before_after(reports: list[dict[str, Any]], f: Any) -> str:
    """``mean before -> mean after`` over seeds of a statistic ``f(report, "before" | "after")``."""
    return f"{np.mean([f(r, 'before') for r in reports]):.3f} -> {np.mean([f(r, 'after') for r in reports]):.3f}"


def main(root: str) -> str:
    runs = load(Path(root))
    body = calibrate_tables(runs) if root.rstrip("/").endswith("-calibrate") else ablation_tables(runs)
    return "\n".join([f"# {Path(root).name}: tables from `benchmarks/experiments/ablation.py {root}`", "", *body])


if __name__ == "__main__":
    print(main(sys.argv[1]))
