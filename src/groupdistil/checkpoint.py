"""Checkpoints: written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict of tensors and primitives (no pickled classes), tagged with
``format = "groupdistil-checkpoint"``, so loading never runs code from the file.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from groupdistil import distributed, faults
from groupdistil.errors import CheckpointError, first_line

FORMAT = "groupdistil-checkpoint"
VERSION = 1


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
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        faults.point(f"replace:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


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
    missing = [k for k in ("model", "model_name", "num_classes") if k not in data]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing[0]!r}")
    return data


def rng_state() -> dict[str, Any]:
    """The torch RNG states (CPU and, when present, CUDA) as plain tensors."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
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
    history: list[dict[str, Any]] = field(default_factory=list)


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
    }
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
    for key in ("optimizer", "scheduler", "rng", "objective", "epoch", "step"):
        if key not in ck:
            raise CheckpointError(f"{path}: cannot resume: checkpoint lacks {key!r}")
    try:
        # models imports this module (file hashes): imported here, not at the top, to avoid the cycle.
        from groupdistil.models import upgrade_legacy_keys

        distributed.unwrap(model).load_state_dict(upgrade_legacy_keys(str(ck.get("model_name", "")), ck["model"]))
        objective.load_state_dict(ck["objective"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        # A checkpoint of a run without fp16 has no loss scale: the scaler then starts afresh.
        if scaler.is_enabled() and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: does not match this run's model or objective: {first_line(e)}") from None
    set_rng_state(ck["rng"])
    return FitState(
        epoch=int(ck["epoch"]),
        step=int(ck["step"]),
        best_metrics=ck.get("best_metric"),
        best_epoch=int(ck.get("best_epoch", -1)),
        skipped_steps=int(ck.get("skipped_steps", 0)),
        overflow_steps=int(ck.get("overflow_steps", 0)),
    )
