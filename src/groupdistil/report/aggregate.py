"""Aggregate runs over seeds: one :class:`Row` per (dataset, role, name), plus the Pareto view.

A row's numbers are test-split metrics of the checkpoint each run selected on validation. Seeds are
the unit of variation: means, sample standard deviations and the bootstrap interval are over seeds.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from groupdistil.errors import UserError
from groupdistil.metrics import HEADLINE_METRICS
from groupdistil.objectives import OBJECTIVES
from groupdistil.report.runs import Run
from groupdistil.report.stats import Summary, bootstrap_mean_ci, summarise

#: Table order: the objectives' registry's (baselines first, then the distillation methods).
METHOD_ORDER = tuple(OBJECTIVES)
#: Objectives aimed at the worst class: their datasets get a worst-class Pareto panel.
CLASS_LEVEL_METHODS = frozenset(name for name, cls in OBJECTIVES.items() if cls.class_level)
#: The option that sweeps the class-robust tradeoff between average and worst-class accuracy.
TRADEOFF_OPTION = "beta"


@dataclass(frozen=True)
class Reliability:
    """A reliability diagram pooled over seeds: per confidence bin, mean confidence, accuracy, count.

    Bins without samples have NaN confidence and accuracy.
    """

    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray


@dataclass(frozen=True)
class Trajectory:
    """Robust weights over training, averaged over seeds (truncated to the shortest run).

    ``mean`` and ``std`` are (S, len(names)); ``seeds`` is how many runs contributed.
    """

    names: tuple[str, ...]
    step: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    seeds: int


@dataclass(frozen=True)
class Row:
    """One method configuration on one dataset, aggregated over its seeds."""

    dataset: str
    role: str
    name: str
    method: str
    options: dict[str, Any]
    teacher: str | None
    runs: tuple[Run, ...]
    metrics: dict[str, Summary]
    worst_group_ci: tuple[float, float] | None
    group_acc: dict[str, Summary]
    class_ece: dict[str, Summary]
    ece: Summary
    reliability: Reliability | None
    weights: Trajectory | None

    @property
    def label(self) -> str:
        """The row's name in tables and legends; teachers are marked since names can coincide."""
        return f"{self.name} (teacher)" if self.role == "teacher" else self.name

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(run.seed for run in self.runs)

    @property
    def beta(self) -> float | None:
        value = self.options.get(TRADEOFF_OPTION)
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if is_number else None


@dataclass(frozen=True)
class Curve:
    """Rows of one tradeoff sweep (same method, options and teacher; different beta), by beta."""

    label: str
    rows: tuple[int, ...]


@dataclass(frozen=True)
class DatasetSummary:
    """All rows of one dataset, with the Pareto-optimal rows and the tradeoff curves.

    ``pareto[metric]`` holds the indices of rows not dominated in (avg_acc, metric), with metric
    ``worst_group_acc`` and, when ``class_level``, ``worst_class_acc``.
    """

    dataset: str
    rows: tuple[Row, ...]
    group_names: tuple[str, ...]
    class_names: tuple[str, ...]
    class_level: bool
    pareto: dict[str, frozenset[int]]
    curves: tuple[Curve, ...]

    @property
    def tradeoff_metrics(self) -> tuple[str, ...]:
        """The metrics plotted against avg_acc: worst-group, and worst-class when class-level."""
        return ("worst_group_acc", "worst_class_acc") if self.class_level else ("worst_group_acc",)


def aggregate(runs: Iterable[Run]) -> dict[str, DatasetSummary]:
    """Group runs by dataset and (role, name), aggregate over seeds; datasets in sorted order.

    Raises:
        UserError: two runs of one row share a seed, or the seeds of one row disagree on the method.
    """
    by_row: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for run in runs:
        by_row[(run.dataset, run.role, run.name)].append(run)
    by_dataset: dict[str, list[Row]] = defaultdict(list)
    for (dataset, _, _), row_runs in by_row.items():
        by_dataset[dataset].append(_make_row(sorted(row_runs, key=lambda r: (r.seed, str(r.path)))))
    return {dataset: _summarise_dataset(dataset, by_dataset[dataset]) for dataset in sorted(by_dataset)}


def pareto_optimal(points: Sequence[tuple[float, float]]) -> frozenset[int]:
    """Indices of the points no other point dominates (>= in both coordinates, > in one); maximise both."""
    front = set()
    for i, (x, y) in enumerate(points):
        dominated = any(
            (u >= x and v >= y) and (u > x or v > y) for j, (u, v) in enumerate(points) if j != i
        )
        if not dominated:
            front.add(i)
    return frozenset(front)


def _make_row(runs: list[Run]) -> Row:
    first = runs[0]
    for a, b in itertools.pairwise(runs):
        if a.seed == b.seed:
            raise UserError(
                f"two runs of {first.role} {first.name!r} on {first.dataset} with seed {a.seed}: "
                f"{a.path} and {b.path}; pass only one of them"
            )
    for run in runs:
        if run.method != first.method:
            raise UserError(
                f"runs named {first.name!r} on {first.dataset} disagree on the method: "
                f"{first.method!r} in {first.path}, {run.method!r} in {run.path}"
            )
    metrics = {key: summarise([run.test.get(key) for run in runs]) for key in HEADLINE_METRICS}
    worst = metrics["worst_group_acc"]
    teachers = {run.teacher for run in runs}
    return Row(
        dataset=first.dataset,
        role=first.role,
        name=first.name,
        method=first.method,
        options=first.options,
        # A teacher given per seed (e.g. a checkpoint path per seed) is not one teacher: show none.
        teacher=first.teacher if len(teachers) == 1 else None,
        runs=tuple(runs),
        metrics=metrics,
        worst_group_ci=bootstrap_mean_ci(worst.values) if worst.n else None,
        group_acc=_named_summaries(run.test["group_acc"] for run in runs),
        class_ece=_named_summaries(run.test.get("class_ece") or {} for run in runs),
        ece=summarise([run.test.get("ece") for run in runs]),
        reliability=_pool_reliability(runs),
        weights=_mean_trajectory(runs),
    )


def _named_summaries(per_run: Iterable[dict[str, float | None]]) -> dict[str, Summary]:
    """{name: Summary over runs}; names in first-seen order (the engine writes them in id order)."""
    values: dict[str, list[float | None]] = {}
    for named in per_run:
        for name, value in named.items():
            values.setdefault(name, []).append(value)
    return {name: summarise(v) for name, v in values.items()}


def _ordered_names(dicts: Iterable[dict[str, Any]]) -> tuple[str, ...]:
    """The union of the dicts' keys in first-seen order."""
    return tuple(dict.fromkeys(name for named in dicts for name in named))


def _pool_reliability(runs: list[Run]) -> Reliability | None:
    """Pool the seeds' bins: counts add up, confidence and accuracy are count-weighted means."""
    diagrams = [run.test["reliability"] for run in runs if run.test.get("reliability")]
    if not diagrams or len({len(d["count"]) for d in diagrams}) != 1:
        return None
    count = np.zeros(len(diagrams[0]["count"]))
    conf_sum = np.zeros_like(count)
    acc_sum = np.zeros_like(count)
    for d in diagrams:
        n = np.asarray(d["count"], dtype=np.float64)
        count += n
        # An empty bin's confidence and accuracy are null; its count of 0 makes it contribute nothing.
        conf_sum += n * np.array([0.0 if v is None else v for v in d["confidence"]])
        acc_sum += n * np.array([0.0 if v is None else v for v in d["accuracy"]])
    with np.errstate(invalid="ignore", divide="ignore"):
        return Reliability(conf_sum / count, acc_sum / count, count.astype(np.int64))


def _mean_trajectory(runs: list[Run]) -> Trajectory | None:
    logged = [run.weights for run in runs if run.weights is not None]
    if not logged:
        return None
    names = logged[0].names
    same = [w for w in logged if w.names == names]  # seeds with other columns cannot be averaged
    length = min(len(w.step) for w in same)
    stack = np.stack([w.values[:length] for w in same])
    return Trajectory(names, same[0].step[:length], stack.mean(axis=0), stack.std(axis=0), len(same))


def _sort_key(row: Row) -> tuple[Any, ...]:
    method_rank = METHOD_ORDER.index(row.method) if row.method in METHOD_ORDER else len(METHOD_ORDER)
    others = {k: v for k, v in row.options.items() if k != TRADEOFF_OPTION}
    beta = row.beta if row.beta is not None else -math.inf
    return (row.role != "teacher", method_rank, row.method, _canonical(others), beta, row.name)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _summarise_dataset(dataset: str, rows: list[Row]) -> DatasetSummary:
    rows = sorted(rows, key=_sort_key)
    group_names = _ordered_names(run.test["group_acc"] for row in rows for run in row.runs)
    class_names = _ordered_names(run.test["class_acc"] for row in rows for run in row.runs)
    class_level = set(group_names) != set(class_names) and any(
        row.method in CLASS_LEVEL_METHODS for row in rows
    )
    metrics = ("worst_group_acc", "worst_class_acc") if class_level else ("worst_group_acc",)
    pareto = {}
    for metric in metrics:
        plotted = [i for i, row in enumerate(rows) if _point(row, metric) is not None]
        front = pareto_optimal([_point(rows[i], metric) for i in plotted])
        pareto[metric] = frozenset(plotted[k] for k in front)
    return DatasetSummary(
        dataset=dataset,
        rows=tuple(rows),
        group_names=group_names,
        class_names=class_names,
        class_level=class_level,
        pareto=pareto,
        curves=_tradeoff_curves(rows),
    )


def _point(row: Row, metric: str) -> tuple[float, float] | None:
    x, y = row.metrics["avg_acc"].mean, row.metrics[metric].mean
    return None if x is None or y is None else (x, y)


def _tradeoff_curves(rows: list[Row]) -> tuple[Curve, ...]:
    """Rows that differ only in beta form one curve; a sweep needs at least two betas."""
    sweeps: dict[tuple[str, str, str, str | None], list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        if row.beta is not None:
            others = {k: v for k, v in row.options.items() if k != TRADEOFF_OPTION}
            sweeps[(row.role, row.method, _canonical(others), row.teacher)].append(i)
    curves = []
    for (role, method, others, teacher), members in sweeps.items():
        if len(members) < 2:
            continue
        options = ", ".join(f"{k}={v}" for k, v in json.loads(others).items())
        label = f"β sweep: {method}" + (f" ({options})" if options else "")
        label += f", teacher {teacher}" if teacher else ""
        label += " (teacher)" if role == "teacher" else ""
        curves.append(Curve(label, tuple(sorted(members, key=lambda i: _sort_key(rows[i])))))
    return tuple(curves)
