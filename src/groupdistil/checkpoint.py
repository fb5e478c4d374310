"""Checkpoints: written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict of tensors and primitives (no pickled classes), tagged with
``format = "groupdistil-checkpoint"``, so loading never runs code from the file.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from groupdistil import faults
from groupdistil.errors import CheckpointError, StorageError, first_line
from groupdistil.parallel import distributed

FORMAT = "groupdistil-checkpoint"
VERSION = 1

#: Fields that a checkpoint to resume from needs (``last.pt``; ``best.pt`` has no optimiser state).
RESUME_FIELDS = ("optimizer", "scheduler", "rng", "objective", "epoch", "step")
#: Sections of the recorded configuration that are mappings (a RunConfig dumped as JSON).
_CONFIG_SECTIONS = ("data", "model", "teacher", "objective", "optim", "train")
#: Selection metrics of ``best_metric`` that model selection compares (metrics.is_better).
_SELECTION_METRICS = ("worst_group_acc", "avg_acc", "balanced_acc", "worst_class_acc")
_Count = Annotated[int, Field(ge=0)]
_Tensors = dict[str, torch.Tensor]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, arbitrary_types_allowed=True, protected_namespaces=())


class _OptimizerState(_Strict):
    state: dict[int, dict[str, Any]]
    param_groups: list[dict[str, Any]]


class _SchedulerState(_Strict):
    last_epoch: int = 0
    base_lrs: list[float] = Field(default_factory=list)


class _RngState(_Strict):
    torch: torch.Tensor
    cuda: list[torch.Tensor] | None = None

    @field_validator("torch")
    @classmethod
    def _generator_state(cls, v: torch.Tensor) -> torch.Tensor:
        size = torch.get_rng_state().numel()
        if v.dtype != torch.uint8 or v.shape != (size,):
            raise ValueError(f"expected a uint8 tensor of {size} bytes (torch.get_rng_state()), "
                             f"got {v.dtype} of shape {tuple(v.shape)}")
        return v


class CheckpointSchema(_Strict):
    """What a groupdistil checkpoint holds, field by field (:func:`training_payload` writes it).

    Checked at every load, so a file of the right format with a field of the wrong type is one
    CheckpointError naming the file and the field, never a traceback deep in the loading code.
    Fields written by older versions only may be absent; none may have another type.
    """

    model: _Tensors
    model_name: str
    num_classes: int = Field(ge=1, le=1_000_000)
    in_channels: int = Field(3, ge=1)
    input_shape: list[Annotated[int, Field(ge=1)]] | None = None
    class_names: list[str] | None = None
    group_names: list[str] | None = None
    config: dict[str, Any] | None = None
    world_size: int = Field(1, ge=1)
    objective: _Tensors = Field(default_factory=dict)
    epoch: int = Field(-1, ge=-1)
    step: _Count = 0
    best_metric: dict[str, Any] | None = None
    best_epoch: int = Field(-1, ge=-1)
    skipped_steps: _Count = 0
    overflow_steps: _Count = 0
    batches: _Count = 0
    epoch_metrics: dict[str, Any] | None = None
    optimizer: _OptimizerState | None = None
    scheduler: _SchedulerState | None = None
    rng: _RngState | None = None
    scaler: dict[str, Any] | None = None

    @field_validator("config")
    @classmethod
    def _sections(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        for key in _CONFIG_SECTIONS:
            if v is not None and key in v and not isinstance(v[key], dict):
                raise ValueError(f"section {key!r} must be a mapping, got {type(v[key]).__name__}")
        return v

    @field_validator("best_metric")
    @classmethod
    def _selection(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        for key in _SELECTION_METRICS:
            x = (v or {}).get(key)
            if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float))):
                raise ValueError(f"{key} must be a number or null, got {type(x).__name__}")
        return v

    @model_validator(mode="after")
    def _names_match(self) -> CheckpointSchema:
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names for {self.num_classes} classes")
        return self


def _schema_error(path: Path, e: ValidationError) -> CheckpointError:
    err = e.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "(top level)"
    got = err.get("input")
    shown = repr(got) if isinstance(got, (int, float, str)) and len(repr(got)) <= 40 else type(got).__name__
    msg = re.sub(r" or instance of \w+", "", err["msg"]).removeprefix("Value error, ")
    detail = msg if err["type"] in ("missing", "value_error") else f"{msg} (got {shown})"
    return CheckpointError(f"{path}: checkpoint field {field!r}: {detail}")


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, write: Any) -> None:
    """Write a file atomically: ``write(fileobj)`` into a temporary file, fsync, rename.

    A process killed at any moment leaves either the old file or the new one, never a truncated one.

    Raises:
        StorageError: the file system refused (no space, read-only, quota, permission): one line
            naming ``path`` and the error. The temporary file is removed and ``path`` keeps its
            previous content, so the last good checkpoint stays loadable.
    """
    path = Path(path)
    tmp: str | None = None
    sink: _Recording | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            sink = _Recording(f, faults.no_space(path.name))
            write(sink)
            f.flush()
            os.fsync(f.fileno())
        faults.point(f"replace:{path.name}")
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(OSError):
                Path(tmp).unlink(missing_ok=True)
        # torch.save reports a failed write as a RuntimeError of its own ("enforce fail at
        # inline_container.cc"): the OSError the file object raised is what the user needs to see.
        cause = e if isinstance(e, OSError) else (sink.error if sink is not None else None)
        if cause is not None and isinstance(e, Exception):
            raise StorageError.from_os_error(path, cause) from None
        raise
    _fsync_dir(path.parent)


class _Recording:
    """A binary file that keeps the first OSError its ``write`` raised (torch.save replaces it with a
    RuntimeError) and, when ``fail`` (the fault injection of :func:`faults.no_space`), writes half of
    the first chunk and raises ENOSPC, as a disk that fills up mid-write does."""

    def __init__(self, f: Any, fail: bool) -> None:
        self.f, self.fail, self.error = f, fail, None

    def write(self, data: Any) -> int:
        try:
            if self.fail:
                raw = memoryview(data).cast("B")
                self.f.write(raw[: len(raw) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def remove_stale_tmp(folder: Path, names: Iterable[str]) -> list[Path]:
    """Remove the temporary files :func:`atomic_write` left in ``folder`` for files called ``names``
    (a kill between mkstemp and the rename); returns them.

    Only our own pattern matches: ``.<name>.<mkstemp's 8 characters>.tmp``, so a user's file is never touched.
    """
    removed = []
    for name in names:
        pattern = re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp")
        for tmp in Path(folder).glob(f".{glob.escape(name)}.*.tmp"):
            if pattern.fullmatch(tmp.name) and tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every file system allows opening a directory.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomically save ``payload`` (tensors, dicts, lists, numbers, strings) tagged with our format."""
    data = {"format": FORMAT, "version": VERSION, **payload}
    atomic_write(Path(path), lambda f: torch.save(data, f))


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a groupdistil checkpoint.

    Raises:
        CheckpointError: missing file, corrupt file, a file that needs code to load, or a file that
            is not a groupdistil checkpoint; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is damaged
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint (not a torch zip archive)")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused to load: it holds objects other than tensors and plain data "
            "(checkpoints load with weights_only=True, so no code from a file ever runs)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a groupdistil checkpoint (expected format {FORMAT!r})")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {data.get('version')!r}, expected {VERSION}")
    try:
        CheckpointSchema.model_validate(data)
    except ValidationError as e:
        raise _schema_error(path, e) from None
    return data


def check_resumable(path: Path, data: dict[str, Any]) -> None:
    """Raise a CheckpointError naming the first field that resuming needs and ``data`` lacks."""
    for key in RESUME_FIELDS:
        if key not in data:
            raise CheckpointError(f"{path}: cannot resume: checkpoint lacks {key!r}")


def state_dict_mismatch(expected: Mapping[str, torch.Tensor], got: Any, limit: int = 3) -> str | None:
    """Why the weights ``got`` (a checkpoint's state dict) do not fit a model whose state dict is
    ``expected``: the first mismatched tensors with both shapes, then missing and unexpected names;
    None when they fit (or ``got`` is not a mapping of tensors: ``load_state_dict`` reports that)."""
    if not isinstance(got, Mapping) or not all(isinstance(v, torch.Tensor) for v in got.values()):
        return None

    def first(names: list[str]) -> str:
        more = f" (and {len(names) - limit} more)" if len(names) > limit else ""
        return "; ".join(names[:limit]) + more

    parts = []
    sizes = [f"{k} is {tuple(got[k].shape)} in the file, {tuple(v.shape)} in the model"
             for k, v in expected.items() if k in got and got[k].shape != v.shape]
    if sizes:
        parts.append("size mismatch: " + first(sizes))
    missing = [k for k in expected if k not in got]
    if missing:
        parts.append("missing from the file: " + first(missing))
    unexpected = [k for k in got if k not in expected]
    if unexpected:
        parts.append("not in the model: " + first(unexpected))
    return ", ".join(parts) or None


def load_state_dict_checked(model: nn.Module, state: Any) -> None:
    """``model.load_state_dict(state)``, refusing first with a ValueError that names the first
    mismatched tensors and both shapes (torch's own message puts them after a line break, where a
    one-line error ends).

    A model that reads an earlier layout of its weights says so with an ``upgrade_state_dict(state)``
    method (models/tv_resnet.py), applied first: the model code owns its legacy names, and this module
    imports no model.
    """
    upgrade = getattr(model, "upgrade_state_dict", None)
    if upgrade is not None and isinstance(state, Mapping):
        state = upgrade(state)
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise ValueError(mismatch)
    model.load_state_dict(state)


def rng_state() -> dict[str, Any]:
    """The torch RNG states (CPU and, when present, CUDA) as plain tensors."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (a checkpoint's ``rng``, checked by :class:`CheckpointSchema`)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- the training payload: what fit() writes into last.pt and best.pt, and restores on resume ----


@dataclass
class FitState:
    """Progress that a checkpoint carries."""

    epoch: int = -1  # last completed epoch
    step: int = 0
    best_metrics: dict[str, Any] | None = None
    best_epoch: int = -1
    skipped_steps: int = 0
    overflow_steps: int = 0  # fp16 steps the grad scaler skipped (gradient overflow)
    # A mid-epoch checkpoint (a signal, `train.checkpoint_every`): the batches of epoch ``epoch + 1``
    # done so far, and that epoch's metric accumulators (metrics.GroupMetrics.state_dict); 0 and None
    # at an epoch's end.
    batches: int = 0
    epoch_metrics: dict[str, Any] | None = None


def training_payload(
    model: nn.Module,
    objective: nn.Module,
    state: FitState,
    meta: dict[str, Any],
    opt: torch.optim.Optimizer | None = None,
    sched: Any = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, Any]:
    """The payload of a training checkpoint: ``meta``, the model's and the objective's state and the
    progress; with ``opt`` (last.pt) also what resuming needs: optimiser, scheduler, RNG, loss scale."""
    p: dict[str, Any] = {
        **meta,
        "model": distributed.unwrap(model).state_dict(),
        "objective": objective.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "best_metric": state.best_metrics,
        "best_epoch": state.best_epoch,
        "skipped_steps": state.skipped_steps,
        "overflow_steps": state.overflow_steps,
        "batches": state.batches,
    }
    if state.epoch_metrics is not None:
        p["epoch_metrics"] = state.epoch_metrics
    if opt is not None:
        p.update(optimizer=opt.state_dict(), scheduler=sched.state_dict(), rng=rng_state())
    if scaler is not None and scaler.is_enabled():
        p["scaler"] = scaler.state_dict()  # the loss scale: resuming with a fresh one would change the run
    return p


def restore_training(
    path: Path,
    model: nn.Module,
    objective: nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    scaler: torch.amp.GradScaler,
) -> FitState:
    """Load :func:`training_payload`'s ``last.pt`` into a run's objects and return its progress.

    Raises:
        CheckpointError: the file lacks what resuming needs, or does not fit the model or objective.
    """
    ck = load_checkpoint(path)
    check_resumable(path, ck)
    try:
        load_state_dict_checked(distributed.unwrap(model), ck["model"])
        objective.load_state_dict(ck["objective"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        # A checkpoint of a run without fp16 has no loss scale: the scaler then starts afresh.
        if scaler.is_enabled() and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        set_rng_state(ck["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise CheckpointError(f"{path}: does not match this run's model or objective: {first_line(e)}") from None
    return FitState(
        epoch=int(ck["epoch"]),
        step=int(ck["step"]),
        best_metrics=ck.get("best_metric"),
        best_epoch=int(ck.get("best_epoch", -1)),
        skipped_steps=int(ck.get("skipped_steps", 0)),
        overflow_steps=int(ck.get("overflow_steps", 0)),
        batches=int(ck.get("batches", 0)),
        epoch_metrics=ck.get("epoch_metrics"),
    )
