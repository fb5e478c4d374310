"""Build a report folder from run directories: report.md, report.html, summary.json and the PNGs."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from groupdistil._validate import check_writable_folder
from groupdistil.errors import UserError
from groupdistil.metrics import HEADLINE_METRICS
from groupdistil.report import plots
from groupdistil.report.aggregate import DatasetSummary, Row, aggregate
from groupdistil.report.compose import FIGURES, compose
from groupdistil.report.render import to_html, to_markdown
from groupdistil.report.runs import discover_runs, load_run
from groupdistil.report.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE, Summary

DEFAULT_TITLE = "groupdistil report"


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`build_report` wrote, and the unfinished run directories it skipped."""

    markdown: Path
    html: Path
    summary: Path
    images: tuple[Path, ...]
    runs: int
    skipped: tuple[Path, ...]


def build_report(paths: Sequence[Path], out_dir: Path, title: str | None = None) -> ReportFiles:
    """Aggregate the finished runs under ``paths`` and write the report into ``out_dir``.

    Args:
        paths: run directories, or folders searched recursively for them.
        out_dir: created if needed; files of the same names are overwritten, nothing else is touched.
        title: the report's title (default: DEFAULT_TITLE).

    Raises:
        UserError: a path is missing, a final.json or group_weights.csv is malformed, or no run is finished.
    """
    title = title or DEFAULT_TITLE
    check_writable_folder(out_dir, "`out`")
    discovery = discover_runs(list(paths))
    if not discovery.finished:
        searched = ", ".join(str(p) for p in paths)
        raise UserError(
            f"no finished runs (directories with final.json) under {searched}"
            + (f"; {len(discovery.unfinished)} unfinished skipped" if discovery.unfinished else "")
        )
    runs = [load_run(path) for path in discovery.finished]
    datasets = aggregate(runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = draw_figures(datasets, out_dir)
    blocks = compose(datasets, figures, discovery.unfinished)
    markdown, page, summary = out_dir / "report.md", out_dir / "report.html", out_dir / "summary.json"
    markdown.write_text(to_markdown(title, blocks), encoding="utf-8")
    page.write_text(to_html(title, blocks, out_dir), encoding="utf-8")
    summary.write_text(
        json.dumps(summary_dict(title, datasets, discovery.unfinished), indent=2) + "\n", encoding="utf-8"
    )
    images = tuple(out_dir / name for named in figures.values() for name in named.values())
    return ReportFiles(markdown, page, summary, images, len(runs), discovery.unfinished)


def draw_figures(datasets: dict[str, DatasetSummary], out_dir: Path) -> dict[str, dict[str, str]]:
    """Draw each dataset's figures into ``out_dir``; returns {dataset: {figure kind: file name}}."""
    drawn: dict[str, dict[str, str]] = {}
    used: set[str] = set()
    for dataset, summary in datasets.items():
        stem = _file_stem(dataset, used)
        wanted = {
            "group_acc": plots.plot_group_accuracy,
            "pareto": plots.plot_pareto,
        }
        if any(row.weights is not None for row in summary.rows):
            wanted["weights"] = plots.plot_weights
        if any(row.role == "teacher" and row.reliability is not None for row in summary.rows):
            wanted["calibration"] = plots.plot_calibration
        drawn[dataset] = {}
        for kind, draw in wanted.items():
            name = f"{stem}_{FIGURES[kind]}"
            draw(summary, out_dir / name)
            drawn[dataset][kind] = name
    return drawn


def summary_dict(
    title: str, datasets: dict[str, DatasetSummary], unfinished: Sequence[Path]
) -> dict[str, Any]:
    """The aggregated numbers as JSON-ready data: accuracies and ECE as fractions in [0, 1]."""
    return {
        "title": title,
        "units": "fractions in [0, 1]; std is the sample standard deviation over seeds (null with one seed)",
        "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "confidence": CONFIDENCE},
        "datasets": {
            name: {
                "group_names": list(summary.group_names),
                "class_names": list(summary.class_names),
                "rows": [_row_dict(summary, i) for i in range(len(summary.rows))],
            }
            for name, summary in datasets.items()
        },
        "unfinished": [str(path) for path in unfinished],
    }


def _row_dict(summary: DatasetSummary, i: int) -> dict[str, Any]:
    row: Row = summary.rows[i]
    return {
        "role": row.role,
        "name": row.name,
        "method": row.method,
        "options": row.options,
        "teacher": row.teacher,
        "n_seeds": len(row.runs),
        "seeds": list(row.seeds),
        "runs": [str(run.path) for run in row.runs],
        "selected_epochs": [run.selected_epoch for run in row.runs],
        "test": {key: _summary_dict(row.metrics[key]) for key in HEADLINE_METRICS},
        "worst_group_ci": None if row.worst_group_ci is None else list(row.worst_group_ci),
        "pareto_optimal": [metric for metric in summary.tradeoff_metrics if i in summary.pareto[metric]],
        "group_acc": {name: _summary_dict(s) for name, s in row.group_acc.items()},
        "class_ece": {name: _summary_dict(s) for name, s in row.class_ece.items()},
        "ece": _summary_dict(row.ece),
    }


def _summary_dict(summary: Summary) -> dict[str, Any]:
    return {"mean": summary.mean, "std": summary.std, "n": summary.n, "values": list(summary.values)}


def _file_stem(dataset: str, used: set[str]) -> str:
    """A file-name-safe stem for the dataset's figures, unique among the report's datasets."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset).strip("._") or "dataset"
    unique, k = stem, 2
    while unique in used:
        unique, k = f"{stem}-{k}", k + 1
    used.add(unique)
    return unique
