"""Checkpoints: written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict of tensors and primitives (no pickled classes), tagged with
``format = "groupdistil-checkpoint"``, so loading never runs code from the file.
"""

from __future__ import annotations

import glob
import os
import pickle
import re
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from groupdistil import faults
from groupdistil.errors import CheckpointError

FORMAT = "groupdistil-checkpoint"
VERSION = 1


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
    missing = [k for k in ("model", "model_name", "num_classes") if k not in data]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing[0]!r}")
    return data


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
