"""Checkpoint writes off the step loop.

The state is snapshotted on the calling thread (every tensor copied to the CPU, every container
copied), so training can go on changing the model and optimiser at once; one background thread then
writes the files through :func:`groupdistil.checkpoint.save_checkpoint` (temporary file, fsync,
rename: atomic as before). One write is in flight at most: the next :meth:`CheckpointWriter.submit`
and :meth:`CheckpointWriter.wait` wait for it, and re-raise on the calling thread the very exception
the write raised (what a synchronous write would have raised there). A write that fails leaves the
previous file in place, so the last good checkpoint stays intact.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from groupdistil import faults
from groupdistil.checkpoint import save_checkpoint


def cpu_snapshot(obj: Any) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples of tensors and plain values) that shares no storage
    with it: tensors are copied to the CPU (detached), containers rebuilt, plain values kept."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        return t.to("cpu", copy=True) if t.device.type != "cpu" else t.clone()
    if isinstance(obj, dict):
        return {k: cpu_snapshot(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [cpu_snapshot(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(cpu_snapshot(v) for v in obj)
    return obj


class CheckpointWriter:
    """Writes checkpoints on one background thread, one batch of files at a time."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, files: Sequence[tuple[Path, dict[str, Any]]]) -> None:
        """Write ``files`` (path, payload already snapshotted) in order, in the background, after the
        previous write has finished (its error is raised here)."""
        self.wait()

        def work() -> None:
            try:
                for path, payload in files:
                    save_checkpoint(path, payload)
            except BaseException as e:  # handed to the main thread by wait()
                self._error = e

        # Not a daemon: an interpreter that exits still finishes the write it started.
        self._thread = threading.Thread(target=work, name="groupdistil-checkpoint")
        self._thread.start()
        faults.settle_before_step_point(self._join, True)

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def wait(self) -> None:
        """Wait for the write in flight; raise its exception, if it raised one."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            faults.settle_before_step_point(self._join, False)
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    @contextlib.contextmanager
    def settled(self) -> Iterator[None]:
        """A block after which no write is in flight: on success :meth:`wait` (a write's error is
        raised), on an error :meth:`drain` (the block's own error is raised)."""
        try:
            yield
        except BaseException:
            self.drain()
            raise
        self.wait()

    def drain(self) -> None:
        """Wait for the write in flight, keeping quiet about its error (for a run already failing with
        another one: that one is what the user must see)."""
        with contextlib.suppress(BaseException):
            self.wait()
