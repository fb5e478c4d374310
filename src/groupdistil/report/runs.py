"""Find and load finished run directories (``final.json`` and ``group_weights.csv``).

The run-directory format is written by the training engine; this module checks it once, at the
boundary, and raises :class:`~groupdistil.errors.UserError` naming the file when it is malformed.
Everything downstream trusts the :class:`Run` objects it returns.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from groupdistil.errors import UserError
from groupdistil.metrics import HEADLINE_METRICS
from groupdistil.runs.rundir import CONFIG, FINAL, METRICS, WEIGHTS

#: Files the engine writes before ``final.json``: a directory with one of them is an unfinished run.
RUN_MARKERS = (CONFIG, METRICS, WEIGHTS)
ROLES = ("teacher", "student")


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
    final_path = path / FINAL
    try:
        data = json.loads(final_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{final_path}: file not found") from None
    except (ValueError, UnicodeDecodeError) as e:  # ValueError: JSONDecodeError, or over 4300 digits
        raise UserError(f"{final_path}: not valid JSON ({e})") from None
    check = _Checker(final_path)
    check.kind(data, dict, "the top level", "an object")
    role = check.kind(data.get("role"), str, "role", "a string")
    if role not in ROLES:
        check.fail("role", f"one of {', '.join(ROLES)}", role)
    splits = check.kind(data.get("splits"), dict, "splits", "an object with a 'test' split")
    test = _check_split(check, splits.get("test"), "splits.test")
    options = data.get("options") or {}
    check.kind(options, dict, "options", "an object")
    return Run(
        path=path,
        name=check.kind(data.get("name"), str, "name", "a string"),
        method=check.kind(data.get("method"), str, "method", "a string"),
        role=role,
        dataset=check.kind(data.get("dataset"), str, "dataset", "a string"),
        seed=check.integer(data.get("seed"), "seed"),
        model=check.optional(data.get("model"), str, "model", "a string or null"),
        teacher=check.optional(data.get("teacher"), str, "teacher", "a string or null"),
        options=options,
        selected_epoch=check.optional_integer(data.get("selected_epoch"), "selected_epoch"),
        selection_metric=check.optional(
            data.get("selection_metric"), str, "selection_metric", "a string or null"
        ),
        test=test,
        weights=load_group_weights(path / WEIGHTS),
        train_groups=check.optional(data.get("train_groups"), dict, "train_groups", "an object or null"),
        val_groups=check.kind(data.get("val_groups", "labels"), str, "val_groups", "a string"),
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


def _check_split(check: _Checker, split: Any, where: str) -> dict[str, Any]:
    """Validate the parts of a split's metrics the report reads; return them unchanged."""
    check.kind(split, dict, where, "an object of metrics")
    for key in HEADLINE_METRICS:
        check.fraction(split.get(key), f"{where}.{key}")
    for key in ("group_acc", "class_acc"):
        named = check.kind(split.get(key), dict, f"{where}.{key}", "an object {name: accuracy}")
        for name, value in named.items():
            check.fraction(value, f"{where}.{key}.{name}")
    for key in ("group_ece", "class_ece"):
        named = check.optional(split.get(key), dict, f"{where}.{key}", "an object {name: ECE}") or {}
        for name, value in named.items():
            check.fraction(value, f"{where}.{key}.{name}")
    check.fraction(split.get("ece"), f"{where}.ece")
    reliability = check.optional(split.get("reliability"), dict, f"{where}.reliability", "an object")
    if reliability is not None:
        lists = [
            check.kind(reliability.get(k), list, f"{where}.reliability.{k}", "a list")
            for k in ("confidence", "accuracy", "count")
        ]
        if len({len(v) for v in lists}) != 1:
            lengths = [len(v) for v in lists]
            check.fail(f"{where}.reliability", "confidence, accuracy and count of equal length", lengths)
        for k, values in zip(("confidence", "accuracy"), lists[:2], strict=True):
            for i, value in enumerate(values):
                check.fraction(value, f"{where}.reliability.{k}[{i}]")
        for i, value in enumerate(lists[2]):
            check.integer(value, f"{where}.reliability.count[{i}]")
    return split


class _Checker:
    """Type checks on parsed JSON that raise a UserError naming the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, expected: str, got: Any) -> None:
        raise UserError(f"{self.path}: {where}: expected {expected}, got {got!r}")

    def kind(self, value: Any, kind: type, where: str, expected: str) -> Any:
        if not isinstance(value, kind):
            self.fail(where, expected, value)
        return value

    def optional(self, value: Any, kind: type, where: str, expected: str) -> Any:
        return None if value is None else self.kind(value, kind, where, expected)

    def integer(self, value: Any, where: str) -> int:
        # Bounded: a count of 10**400 is a valid JSON integer that no float (or int64) holds.
        if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
            self.fail(where, "an integer (64-bit)", _short(value))
        return value

    def optional_integer(self, value: Any, where: str) -> int | None:
        return None if value is None else self.integer(value, where)

    def fraction(self, value: Any, where: str) -> None:
        if value is None:
            return
        # Compared before any float conversion: math.isfinite(10**400) raises OverflowError.
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
        if not ok:
            self.fail(where, "a number in [0, 1] or null", _short(value))


def _short(value: Any) -> Any:
    """``value`` for a message: a huge integer by its digit count, not its 400 digits."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return f"an integer of {len(str(abs(value)))} digits"  # json.loads stops at 4300 digits
    return value
