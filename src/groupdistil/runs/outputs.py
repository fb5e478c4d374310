"""Everything a run writes into its folder (only the main process writes; the layout is
:class:`groupdistil.runs.rundir.RunPaths`).

- ``config.yaml``: the resolved configuration.
- ``metrics.jsonl``: a line per epoch and split (``train``, ``val``), and per epoch a ``time`` line (where
  the epoch's time went: training/timing.py).
- ``group_weights.csv``: header ``step,epoch,<group or class names>``, then a row per optimisation step.
- ``final.json``: the selected checkpoint's metrics per split (written last: its presence marks a
  finished run); its schema is :class:`groupdistil.runs.final.FinalRecord`.
- ``tb/``: TensorBoard events. ``checkpoints/``: ``last.pt`` and ``best.pt``.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from groupdistil import faults
from groupdistil.checkpoint import atomic_write, remove_stale_tmp
from groupdistil.errors import StorageError
from groupdistil.metrics import HEADLINE_METRICS
from groupdistil.parallel import distributed
from groupdistil.runs.final import FinalRecord
from groupdistil.runs.rundir import CHECKPOINT_FILES, RUN_FILES, RunPaths

#: What TensorBoard plots per split and epoch.
SCALARS = ("loss", *HEADLINE_METRICS, "ece")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(_json_safe(data), indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


class RunWriter:
    """Appends per-epoch metrics and per-step group weights; a no-op on ranks other than 0."""

    def __init__(self, directory: Path, weight_names: Sequence[str], tensorboard: bool = True) -> None:
        self.dir = Path(directory)
        self.paths = RunPaths(self.dir)
        self.active = distributed.is_main_process()
        self.weight_names = list(weight_names)
        self._tb = None
        self._rows: list[list[Any]] = []
        if not self.active:
            return
        with _storage(self.dir):
            self.dir.mkdir(parents=True, exist_ok=True)
        with _storage(self.paths.checkpoints):
            self.paths.checkpoints.mkdir(exist_ok=True)
        if tensorboard:
            # Imported here: it costs about two seconds and only a writing process needs it.
            from torch.utils.tensorboard import SummaryWriter

            with _storage(self.paths.tb):
                self._tb = SummaryWriter(str(self.paths.tb))

    def start(self, config_yaml: str, resume_epoch: int | None, resume_step: int | None = None) -> None:
        """Write config.yaml; on resume drop any line logged after the checkpoint's epoch (``resume_epoch``,
        the last whole one), keeping the weight rows of the next epoch up to ``resume_step`` when the
        checkpoint was written within that epoch."""
        if not self.active:
            return
        # A kill during an atomic write leaves a temporary file; this is the one place that removes
        # them (every start and resume of a run goes through here).
        with _storage(self.paths.root):
            remove_stale_tmp(self.paths.root, RUN_FILES)
            remove_stale_tmp(self.paths.checkpoints, CHECKPOINT_FILES)
        atomic_write(self.paths.config, lambda f: f.write(config_yaml.encode()))
        if resume_epoch is None:
            with _storage(self.paths.metrics):
                self.paths.metrics.unlink(missing_ok=True)
            atomic_write(self.paths.weights, lambda f: f.write(self._header().encode()))
            return
        self._truncate(resume_epoch, resume_step)

    def _header(self) -> str:
        # csv quoting: a group name may hold a comma, a quote or a line break.
        return _csv_line(["step", "epoch", *self.weight_names])

    def _truncate(self, last_epoch: int, last_step: int | None) -> None:
        # A kill mid-epoch leaves lines of an epoch the resumed run will redo: keep what the
        # checkpoint covers, drop the rest (including a half-written or non-UTF-8 last line).
        kept = []
        for line in _utf8_lines(self.paths.metrics):
            try:
                if json.loads(line)["epoch"] <= last_epoch:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        atomic_write(self.paths.metrics, lambda f: f.write("".join(x + "\n" for x in kept).encode()))
        rows = [self._header()]
        # The header is this run's own (its names may hold line breaks); each data row is one line of
        # numbers, parsed on its own so that damage stays within its line.
        for line in _utf8_lines(self.paths.weights)[self._header().count("\n"):]:
            if self._kept_row(line, last_epoch, last_step):
                rows.append(line + "\n")
        atomic_write(self.paths.weights, lambda f: f.write("".join(rows).encode()))

    def _kept_row(self, line: str, last_epoch: int, last_step: int | None) -> bool:
        """Whether a group_weights.csv line is a whole row (step, epoch, one number per weight) that the
        checkpoint covers: of a whole epoch, or of the next up to ``last_step``."""
        row = line.split(",")
        step = _int(row[0])
        if len(row) != len(self.weight_names) + 2 or step is None:
            return False
        epoch = _int(row[1])
        covered = epoch is not None and (epoch <= last_epoch or (
            last_step is not None and epoch == last_epoch + 1 and step <= last_step))
        return covered and all(_float(v) is not None for v in row[2:])

    def log_weights(self, step: int, epoch: int, weights: Sequence[float] | None) -> None:
        if self.active and weights is not None and self.weight_names:
            self._rows.append([step, epoch, *(f"{w:.8g}" for w in weights)])

    def log_epoch(self, epoch: int, split: str, metrics: dict[str, Any]) -> None:
        """Append one metrics line (and flush the step rows of this epoch)."""
        if not self.active:
            return
        self.flush_weights()
        line = {"epoch": epoch, "split": split, **metrics}
        _append(self.paths.metrics, json.dumps(_json_safe(line)) + "\n")
        if self._tb is not None:
            with _storage(self.paths.tb):  # the event writer's thread raises its I/O errors here
                for k in SCALARS:
                    v = metrics.get(k)
                    if isinstance(v, (int, float)) and math.isfinite(v):
                        self._tb.add_scalar(f"{split}/{k}", v, epoch)
                self._tb.flush()

    def flush_weights(self) -> None:
        """Append the step rows logged so far to group_weights.csv (at an epoch's end, and before a
        mid-epoch checkpoint, which covers them)."""
        if self.active and self._rows:
            _append(self.paths.weights, "".join(_csv_line(row) for row in self._rows))
            self._rows = []

    def log_time(self, epoch: int, record: dict[str, Any]) -> None:
        """Append the epoch's ``time`` line (wall seconds, images/s, the phases; a measurement, so it
        differs between runs where every other line is the same) and its TensorBoard scalars."""
        if not self.active:
            return
        with open(self.paths.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(_json_safe({"epoch": epoch, "split": "time", **record})) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(f"time/{k}", v, epoch)
            self._tb.flush()

    def finish(self, final: dict[str, Any]) -> None:
        """Write final.json (checked against its schema first: what is written can be read back)."""
        if not self.active:
            return
        # A ValidationError here is a bug of the writer, not a user's mistake: it stays a traceback.
        FinalRecord.model_validate(_json_safe(final))
        write_json(self.paths.final, final)
        self.close()

    def close(self) -> None:
        if self._tb is not None:
            tb, self._tb = self._tb, None
            with _storage(self.paths.tb):
                tb.close()


@contextlib.contextmanager
def _storage(path: Path) -> Iterator[None]:
    """Turn an OSError of the file system (no space, read-only, quota, permission) while writing
    ``path`` into one StorageError line naming it."""
    try:
        yield
    except OSError as e:
        raise StorageError.from_os_error(path, e) from None


def _append(path: Path, text: str) -> None:
    """Append ``text`` to one of the run's logs. A failed append may leave part of a line: resuming
    drops it, like a line a kill cut short (:meth:`RunWriter._truncate`)."""
    with _storage(path), open(path, "a", newline="", encoding="utf-8") as f:
        if faults.no_space(path.name):
            f.write(text[: len(text) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        f.write(text)


def _csv_line(row: Sequence[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(row)
    return buf.getvalue()


def _utf8_lines(path: Path) -> list[str]:
    """The file's lines that are UTF-8 text (none when it is absent): bytes a kill or another program
    left behind are dropped like a truncated line."""
    if not path.is_file():
        return []
    lines = []
    data = path.read_bytes()
    for raw in data.removesuffix(b"\n").split(b"\n") if data else []:
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            continue
    return lines


def _int(s: str) -> int | None:
    try:
        return int(s)
    except ValueError:
        return None


def _float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None
