"""Find and load finished run directories (``final.json`` and ``group_weights.csv``).

The run-directory format is written by the training engine; this module checks it once, at the
boundary, and raises :class:`~groupdistil.errors.UserError` naming the file when it is malformed.
Everything downstream trusts the :class:`Run` objects it returns.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from groupdistil.errors import UserError
from groupdistil.runs.final import read_final
from groupdistil.runs.rundir import CONFIG, FINAL, METRICS, WEIGHTS

#: Files the engine writes before ``final.json``: a directory with one of them is an unfinished run.
RUN_MARKERS = (CONFIG, METRICS, WEIGHTS)


@dataclass(frozen=True)
class GroupWeights:
    """The DRO weights (q over groups, or lambda over classes) logged at every optimisation step.

    Attributes:
        names: one name per weight column (group or class names).
        step: (S,) optimisation step of each row.
        epoch: (S,) epoch of each row.
        values: (S, len(names)) the weights; each row lies on the simplex.
    """

    names: tuple[str, ...]
    step: np.ndarray
    epoch: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class Run:
    """One finished training run: the fields of ``final.json`` the report uses."""

    path: Path
    name: str
    method: str
    role: str
    dataset: str
    seed: int
    model: str | None
    teacher: str | None
    options: dict[str, Any]
    selected_epoch: int | None
    selection_metric: str | None
    #: The test split's metrics: the scalars of HEADLINE_METRICS plus group_acc, class_ece, reliability.
    test: dict[str, Any]
    weights: GroupWeights | None = field(default=None, compare=False)
    #: final.json's ``train_groups`` (inferred training groups: source, counts, agreement), or None.
    train_groups: dict[str, Any] | None = field(default=None, compare=False)
    #: ``labels``, or ``none`` when validation groups were not used (selection on worst-class accuracy).
    val_groups: str = "labels"


@dataclass(frozen=True)
class Discovery:
    """Run directories found under the paths given: finished ones and unfinished ones (no final.json)."""

    finished: tuple[Path, ...]
    unfinished: tuple[Path, ...]


def discover_runs(paths: list[Path] | tuple[Path, ...]) -> Discovery:
    """Find run directories: each path is a run directory or a folder searched recursively.

    A directory with ``final.json`` is a finished run (its subfolders, e.g. checkpoints, are not
    searched). A directory with engine output but no ``final.json`` is unfinished. Duplicates (a
    run reached from two of the paths) are listed once; the order is sorted, so output is stable.

    Raises:
        UserError: a path does not exist or is not a directory.
    """
    finished: set[Path] = set()
    unfinished: set[Path] = set()
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise UserError(f"run directory not found: {path}")
        if not path.is_dir():
            raise UserError(f"expected a run directory or a folder of runs, got a file: {path}")
        for dirpath, dirnames, filenames in os.walk(path):
            here = Path(dirpath)
            if FINAL in filenames:
                finished.add(here)
                dirnames.clear()  # a run's own subfolders (checkpoints, logs) hold no runs
            elif any(marker in filenames for marker in RUN_MARKERS):
                unfinished.add(here)
            dirnames.sort()
    return Discovery(tuple(sorted(finished)), tuple(sorted(unfinished - finished)))


def load_run(path: Path) -> Run:
    """Load and validate one finished run directory.

    Raises:
        UserError: ``final.json`` or ``group_weights.csv`` is missing or malformed (the message names it).
    """
    path = Path(path)
    record, data = read_final(path / FINAL)
    return Run(
        path=path,
        name=record.name,
        method=record.method,
        role=record.role,
        dataset=record.dataset,
        seed=record.seed,
        model=record.model,
        teacher=record.teacher,
        options=record.options or {},
        selected_epoch=record.selected_epoch,
        selection_metric=record.selection_metric,
        # As written (every key, ints as ints): the report reads more of it than the schema names.
        test=data["splits"]["test"],
        weights=load_group_weights(path / WEIGHTS),
        train_groups=record.train_groups,
        val_groups=record.val_groups,
    )


def load_group_weights(path: Path) -> GroupWeights | None:
    """Read ``group_weights.csv``; None when it is absent or has no data rows (objectives without weights).

    Raises:
        UserError: the header does not start with ``step,epoch``, or a line is not numeric or has
            another number of columns than the header.
    """
    if not path.is_file():
        return None
    rows = _csv_rows(path)
    if not rows:
        return None
    header = rows[0][1]
    if header[:2] != ["step", "epoch"]:
        raise UserError(f"{path}: expected a header 'step,epoch,<weight names...>', got {','.join(header)!r}")
    if len(header) == 2 or len(rows) == 1:
        return None
    values = []
    for number, row in rows[1:]:
        if len(row) != len(header):
            raise UserError(f"{path}: line {number}: expected {len(header)} columns, got {len(row)}")
        try:
            values.append([float(v) for v in row])
        except ValueError:
            raise UserError(f"{path}: line {number}: expected numbers, got {','.join(row)!r}") from None
    table = np.asarray(values, dtype=np.float64)
    return GroupWeights(names=tuple(header[2:]), step=table[:, 0], epoch=table[:, 1], values=table[:, 2:])


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-empty row, read with the csv module (group names may hold
    commas, quotes and line breaks); bytes that are not UTF-8 are an error naming their line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line}: expected UTF-8 text, got byte {data[e.start]:#04x}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return [(reader.line_num, row) for row in reader if row]
    except csv.Error as e:
        raise UserError(f"{path}: line {reader.line_num}: not a CSV row ({e})") from None
