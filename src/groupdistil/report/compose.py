"""What the report says: its sections, tables and notes, as blocks for :mod:`groupdistil.report.render`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from groupdistil.metrics import HEADLINE_METRICS
from groupdistil.report.aggregate import DatasetSummary, Row
from groupdistil.report.document import Block, Bullets, Heading, Image, Paragraph, Table
from groupdistil.report.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE, Summary

#: Per-group and per-class tables wider than this are left to the figure and summary.json.
MAX_TABLE_COLUMNS = 12
RESULT_HEADER = (
    "run", "role", "method", "seeds", "avg acc", "worst-group acc", f"worst-group {CONFIDENCE:.0%} CI",
    "balanced acc", "adjusted avg acc", "worst-class acc", "Pareto-optimal",
)
#: File-name suffixes of a dataset's figures, by figure kind.
FIGURES = {
    "group_acc": "group_acc.png",
    "pareto": "pareto.png",
    "weights": "weights.png",
    "calibration": "calibration.png",
}


def compose(
    datasets: dict[str, DatasetSummary],
    figures: dict[str, dict[str, str]],
    unfinished: Sequence[Path],
) -> list[Block]:
    """The report's blocks: how to read it, then per dataset its tables and figures.

    Args:
        datasets: the aggregated rows per dataset.
        figures: per dataset, {figure kind: PNG file name} of the figures drawn (kinds of FIGURES).
        unfinished: run directories skipped for having no final.json.
    """
    rows = [row for summary in datasets.values() for row in summary.rows]
    n_runs = sum(len(row.runs) for row in rows)
    blocks: list[Block] = [
        Paragraph(
            f"{n_runs} finished run{_s(n_runs)} in {len(rows)} configuration{_s(len(rows))} "
            f"on {len(datasets)} dataset{_s(len(datasets))}: {', '.join(datasets)}."
        ),
        Heading(1, "How to read this report"),
        Bullets(_how_to_read(rows)),
    ]
    for summary in datasets.values():
        blocks += _dataset_section(summary, figures.get(summary.dataset, {}))
    if unfinished:
        blocks += [
            Heading(1, "Unfinished runs (skipped)"),
            Paragraph("These folders hold training output but no final.json: they are not in the tables."),
            Bullets(tuple(str(path) for path in unfinished)),
        ]
    return blocks


def percent(summary: Summary) -> str:
    """'mean ± std' in percent with one decimal; the mean alone with one seed; 'n/a' without values."""
    if summary.mean is None:
        return "n/a"
    if summary.std is None:
        return f"{100 * summary.mean:.1f}"
    return f"{100 * summary.mean:.1f} ± {100 * summary.std:.1f}"


def _how_to_read(rows: list[Row]) -> tuple[str, ...]:
    selection = sorted({run.selection_metric or "unknown" for row in rows for run in row.runs})
    no_val_groups = sorted({row.label for row in rows for run in row.runs if run.val_groups == "none"})
    blind = (
        (f"Validation groups not used (--val-groups none) by {', '.join(no_val_groups)}: those runs select on "
         "validation worst-class accuracy (SubpopBench's rule without attributes).",) if no_val_groups else ()
    )
    return (
        *blind,
        f"Model selection: each run keeps the epoch with the best validation {' / '.join(selection)} "
        "(ties broken by validation average accuracy). Every number below is measured on the test split "
        "of that epoch: the test split is reported, never used to choose.",
        "A row is one configuration (role and run name) aggregated over its seeds: mean ± sample standard "
        "deviation over seeds, in percent.",
        f"worst-group {CONFIDENCE:.0%} CI: percentile bootstrap of the mean worst-group accuracy over seeds "
        f"({BOOTSTRAP_RESAMPLES} resamples, RNG seed {BOOTSTRAP_SEED}). It reflects seed-to-seed variation "
        "only, is optimistic with few seeds, and is the point itself with one seed.",
        "worst-group acc: the lowest accuracy over test groups present; balanced acc: the mean of group "
        "accuracies; adjusted avg acc: group accuracies weighted by the training group shares (the "
        "Waterbirds convention); worst-class acc: the lowest per-class recall.",
        "Pareto view: a row is Pareto-optimal when no other row has both a higher mean average accuracy and "
        "a higher mean worst-group (or worst-class) accuracy. Such rows are ringed in the plot and named in "
        "the table's last column. Runs of one class-robust tradeoff sweep (option beta) are joined by a "
        "dashed line in beta order: beta = 0 is standard distillation, beta = 1 fully robust.",
        "Robust weights: q (over groups) or λ (over classes) at every optimisation step, mean over seeds "
        "with a ± std band. A weight that rises marks a group or class the objective finds hard.",
        "Teacher calibration: reliability diagram of each teacher's test predictions (15 equal-width "
        "confidence bins, pooled over seeds) and its per-class expected calibration error (ECE). Per-class "
        "calibration decides how useful a teacher is to a class-robust student (Wang et al.).",
    )


def _dataset_section(summary: DatasetSummary, figures: dict[str, str]) -> list[Block]:
    blocks: list[Block] = [
        Heading(1, f"Dataset: {summary.dataset}"),
        Paragraph("Test metrics (%) of the selected checkpoints, mean ± std over seeds."),
        Table(RESULT_HEADER, tuple(_result_row(summary, i) for i in range(len(summary.rows)))),
        Heading(2, "Per-group test accuracy"),
    ]
    if len(summary.group_names) <= MAX_TABLE_COLUMNS:
        blocks.append(_group_table(summary.rows, summary.group_names))
    if "group_acc" in figures:
        blocks.append(Image(figures["group_acc"], f"{summary.dataset}: per-group test accuracy"))
    versus = " and worst-class" if summary.class_level else ""
    blocks.append(Heading(2, f"Average vs worst-group{versus} accuracy (Pareto view)"))
    if "pareto" in figures:
        blocks.append(Image(figures["pareto"], f"{summary.dataset}: average vs worst-group{versus} accuracy"))
    if "weights" in figures:
        blocks += [
            Heading(2, "Robust weights over training"),
            Image(figures["weights"], f"{summary.dataset}: robust weights over training"),
        ]
    teachers = [row for row in summary.rows if row.role == "teacher"]
    if teachers:
        blocks += _calibration(summary, teachers, figures)
    blocks += _training_groups(summary.rows)
    blocks += [Heading(2, "Runs"), _runs_table(summary.rows)]
    return blocks


def _training_groups(rows: Sequence[Row]) -> list[Block]:
    """Inferred training groups: per row the source, the group sizes, the adjusted Rand index against
    the data's groups, and the contingency table pooled over seeds."""
    inferred = [(row, [run.train_groups for run in row.runs if run.train_groups]) for row in rows]
    inferred = [(row, infos) for row, infos in inferred if infos]
    if not inferred:
        return []
    blocks: list[Block] = [
        Heading(2, "Inferred training groups"),
        Paragraph("Training group labels were not used by these runs: their groups were inferred "
                  "(pseudo_groups.csv in each run folder lists every training sample's group). Where the "
                  "data has groups, the adjusted Rand index (ARI: 1 = the same partition, about 0 = chance) "
                  "and the contingency table (rows: inferred groups, columns: the data's groups, summed "
                  "over seeds) say how well they agree."),
    ]
    cells = []
    for row, infos in inferred:
        ari = [info["ari"] for info in infos if "ari" in info]
        cells.append((row.label, infos[0]["source"], str(len(infos[0]["group_names"])),
                      f"{np.mean(ari):.2f} ± {np.std(ari, ddof=1) if len(ari) > 1 else 0:.2f}" if ari else "n/a",
                      infos[0]["description"]))
    blocks.append(Table(("run", "source", "groups", "ARI (mean ± std)", "first seed"), tuple(cells)))
    for row, infos in inferred:
        if "contingency" in infos[0] and all(i["group_names"] == infos[0]["group_names"] for i in infos):
            table = np.sum([info["contingency"] for info in infos], axis=0)
            header = ("inferred / data", *infos[0]["true_group_names"])
            body = tuple((name, *map(str, counts)) for name, counts in zip(infos[0]["group_names"], table.tolist()))
            blocks += [Paragraph(f"{row.label}: training samples, summed over {len(infos)} seed(s)."),
                       Table(header, body)]
    return blocks


def _result_row(summary: DatasetSummary, i: int) -> tuple[str, ...]:
    row = summary.rows[i]
    ci = "n/a"
    if row.worst_group_ci is not None:
        low, high = row.worst_group_ci
        ci = f"[{100 * low:.1f}, {100 * high:.1f}]"
    front = ", ".join(
        metric.removesuffix("_acc").replace("_", "-")
        for metric in summary.tradeoff_metrics
        if i in summary.pareto[metric]
    )
    metrics = [percent(row.metrics[key]) for key in HEADLINE_METRICS]
    return (row.name, row.role, row.method, str(len(row.runs)), *metrics[:2], ci, *metrics[2:], front)


def _group_table(rows: Sequence[Row], groups: Sequence[str]) -> Table:
    cells = tuple(
        (row.label, *(percent(row.group_acc[g]) if g in row.group_acc else "n/a" for g in groups))
        for row in rows
    )
    return Table(("run", *groups), cells)


def _calibration(summary: DatasetSummary, teachers: list[Row], figures: dict[str, str]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Teacher calibration (test)")]
    if "calibration" in figures:
        blocks.append(Image(figures["calibration"], f"{summary.dataset}: teacher reliability diagrams"))
    names = tuple(dict.fromkeys(name for row in teachers for name in row.class_ece))
    if not names:
        return blocks
    header = ("class", *(row.label for row in teachers))
    cells = [(name, *(percent(row.class_ece[name]) if name in row.class_ece else "n/a" for row in teachers))
             for name in names]
    cells.append(("overall ECE", *(percent(row.ece) for row in teachers)))
    blocks += [
        Paragraph("Per-class expected calibration error (%) on test, mean ± std over seeds (lower: better)."),
        Table(header, tuple(cells)),
    ]
    return blocks


def _runs_table(rows: Sequence[Row]) -> Table:
    cells = tuple(
        (row.label, str(run.seed), "n/a" if run.selected_epoch is None else str(run.selected_epoch),
         run.model or "n/a", run.teacher or "none", str(run.path))
        for row in rows
        for run in row.runs
    )
    return Table(("run", "seed", "selected epoch", "model", "teacher", "directory"), cells)


def _s(n: int) -> str:
    return "" if n == 1 else "s"
