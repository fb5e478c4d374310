"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no display).

Each function draws one PNG for one dataset. Accuracies are plotted in percent; error bars are the
sample standard deviation over seeds (none with one seed).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from groupdistil.report.aggregate import DatasetSummary, Row
from groupdistil.report.stats import Summary

#: Above this many bars the per-group chart draws markers joined by lines instead (still readable).
MAX_BARS = 150
#: At most about this many group names under the per-group chart.
MAX_TICKS = 40
#: Trajectories are thinned to at most this many points per line: the PNG stays small and the shape is kept.
MAX_POINTS = 2000
#: Legends with more entries than this are left out (e.g. 100 classes); the colours still follow order.
MAX_LEGEND = 12
DPI = 100
METRIC_LABELS = {
    "avg_acc": "average accuracy (%)",
    "worst_group_acc": "worst-group accuracy (%)",
    "worst_class_acc": "worst-class accuracy (%)",
}


def row_colors(n: int) -> list[tuple[float, ...]]:
    """One colour per row, stable across the figures of a dataset."""
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def plot_group_accuracy(summary: DatasetSummary, path: Path) -> None:
    """Grouped bars: test accuracy of every group (x) for every row (bar), error bars over seeds."""
    rows, groups = summary.rows, summary.group_names
    colors = row_colors(len(rows))
    width_in = min(max(7.0, 2.5 + 0.22 * len(groups) * len(rows)), 18.0)
    fig = _figure(width_in, 4.5)
    ax = fig.add_subplot()
    x = np.arange(len(groups))
    as_bars = len(groups) * len(rows) <= MAX_BARS
    bar_width = 0.8 / len(rows)
    for i, row in enumerate(rows):
        mean, std = _percent([row.group_acc.get(g) for g in groups])
        if as_bars:
            offset = (i - (len(rows) - 1) / 2) * bar_width
            ax.bar(x + offset, mean, bar_width, yerr=std, color=colors[i], label=row.label,
                   error_kw={"elinewidth": 0.8, "capsize": 2})
        else:
            ax.errorbar(x, mean, yerr=std, color=colors[i], label=row.label, marker="o", markersize=3,
                        linewidth=0.8, elinewidth=0.6)
    every = max(1, len(groups) // MAX_TICKS)  # 100 class names cannot all be read: label every k-th
    if len(groups) > 4:
        ax.set_xticks(x[::every], groups[::every], rotation=30, ha="right")
    else:
        ax.set_xticks(x, groups)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"{summary.dataset}: per-group test accuracy (mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    _legend(ax, len(rows))
    _save(fig, path)


def plot_pareto(summary: DatasetSummary, path: Path) -> None:
    """Average vs worst-group (and worst-class) accuracy: a point per row, Pareto points ringed,
    tradeoff sweeps (beta) joined in beta order."""
    metrics = summary.tradeoff_metrics
    colors = row_colors(len(summary.rows))
    fig = _figure(6.0 * len(metrics) + 3.0, 5.0)
    axes = [fig.add_subplot(1, len(metrics), k + 1) for k in range(len(metrics))]
    for ax, metric in zip(axes, metrics, strict=True):
        for curve in summary.curves:
            xs = [summary.rows[i].metrics["avg_acc"].mean for i in curve.rows]
            ys = [summary.rows[i].metrics[metric].mean for i in curve.rows]
            if any(v is None for v in xs + ys):
                continue
            ax.plot(100 * np.array(xs), 100 * np.array(ys), color="0.4", linestyle="--", linewidth=1,
                    zorder=1, label=curve.label)
            for i, x, y in zip(curve.rows, xs, ys, strict=True):
                ax.annotate(f"β={summary.rows[i].beta:g}", (100 * x, 100 * y), textcoords="offset points",
                            xytext=(4, -10), fontsize=7, color="0.3")
        front = summary.pareto[metric]
        for i, row in enumerate(summary.rows):
            x, y = row.metrics["avg_acc"], row.metrics[metric]
            if x.mean is None or y.mean is None:
                continue
            ax.errorbar(100 * x.mean, 100 * y.mean, xerr=100 * (x.std or 0.0), yerr=100 * (y.std or 0.0),
                        color=colors[i], marker="s" if row.role == "teacher" else "o", markersize=6,
                        capsize=2, linewidth=0, elinewidth=1, zorder=3, label=row.label)
            if i in front:
                ax.scatter([100 * x.mean], [100 * y.mean], s=220, facecolors="none", edgecolors="black",
                           linewidths=1.3, zorder=4, label="Pareto-optimal" if i == min(front) else None)
        ax.set_xlabel(METRIC_LABELS["avg_acc"])
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.grid(alpha=0.3)
        ax.set_title(f"{summary.dataset}: average vs {metric.removesuffix('_acc').replace('_', '-')}")
    _legend(axes[-1], len(summary.rows) + len(summary.curves) + 1)
    _save(fig, path)


def plot_weights(summary: DatasetSummary, path: Path) -> None:
    """Robust weights over training (q over groups, lambda over classes): mean over seeds ± std band."""
    rows = [row for row in summary.rows if row.weights is not None]
    cols = min(3, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig = _figure(5.0 * cols + 1.5, 3.6 * nrows)
    for k, row in enumerate(rows):
        ax = fig.add_subplot(nrows, cols, k + 1)
        w = row.weights
        assert w is not None
        keep = np.unique(np.linspace(0, len(w.step) - 1, min(len(w.step), MAX_POINTS)).round().astype(int))
        colors = row_colors(len(w.names))
        for j, name in enumerate(w.names):
            mean, std = w.mean[keep, j], w.std[keep, j]
            ax.plot(w.step[keep], mean, color=colors[j], linewidth=1.2, label=name)
            if w.seeds > 1:
                ax.fill_between(w.step[keep], mean - std, mean + std, color=colors[j], alpha=0.15, lw=0)
        symbol = "λ (classes)" if _over_classes(row, summary) else "q (groups)"
        ax.set_title(f"{row.label}: {symbol}, {w.seeds} seed{'s' if w.seeds > 1 else ''}", fontsize=9)
        ax.set_xlabel("optimisation step")
        ax.set_ylabel("weight")
        ax.set_ylim(0, max(1.0, float(np.nanmax(w.mean + w.std))) * 1.02)
        ax.grid(alpha=0.3)
        if len(w.names) <= MAX_LEGEND:
            ax.legend(fontsize=7, loc="upper right")
    _save(fig, path)


def plot_calibration(summary: DatasetSummary, path: Path) -> None:
    """Reliability diagram of each teacher's test predictions, pooled over seeds."""
    rows = [row for row in summary.rows if row.role == "teacher" and row.reliability is not None]
    cols = min(3, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig = _figure(4.2 * cols, 4.2 * nrows)
    for k, row in enumerate(rows):
        ax = fig.add_subplot(nrows, cols, k + 1)
        _reliability_diagram(ax, row)
    _save(fig, path)


def _reliability_diagram(ax: Axes, row: Row) -> None:
    rel = row.reliability
    assert rel is not None
    n_bins = len(rel.count)
    centres = (np.arange(n_bins) + 0.5) / n_bins
    filled = rel.count > 0
    ax.bar(centres[filled], rel.accuracy[filled], width=1 / n_bins, color="tab:blue", edgecolor="white",
           label="accuracy")
    # The gap to the diagonal at each bin's mean confidence is what ECE averages (count-weighted).
    ax.bar(centres[filled], rel.confidence[filled] - rel.accuracy[filled], bottom=rel.accuracy[filled],
           width=1 / n_bins, color="tab:red", alpha=0.3, edgecolor="none", label="gap to confidence")
    ax.plot([0, 1], [0, 1], color="0.3", linestyle="--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ece = "n/a" if row.ece.mean is None else f"{100 * row.ece.mean:.1f}%"
    ax.set_title(f"{row.label}\nECE {ece}, {int(rel.count.sum())} test predictions", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")


def _over_classes(row: Row, summary: DatasetSummary) -> bool:
    assert row.weights is not None
    names = set(row.weights.names)
    return names <= set(summary.class_names) and not names <= set(summary.group_names)


def _percent(summaries: list[Summary | None]) -> tuple[np.ndarray, np.ndarray]:
    """Means and stds in percent; NaN mean where a group has no value (nothing is drawn)."""
    mean = [math.nan if s is None or s.mean is None else 100 * s.mean for s in summaries]
    std = [0.0 if s is None or s.std is None else 100 * s.std for s in summaries]
    return np.array(mean), np.array(std)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _legend(ax: Axes, entries: int) -> None:
    if entries <= 3 * MAX_LEGEND:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _save(fig: Figure, path: Path) -> None:
    # No "Software" metadata: the PNG bytes depend on the data only (and on the matplotlib release).
    fig.savefig(path, format="png", metadata={"Software": None})
