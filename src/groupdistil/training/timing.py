"""Where a run's time goes: per epoch (the ``time`` line of metrics.jsonl, the console line and
TensorBoard) and once per run (final.json's ``time``: the start-up phases).

Everything is timed with ``time.perf_counter`` at boundaries the loop passes anyway: between batches
of the step loop and around validation, the checkpoint and the log writes. Nothing here adds a host
synchronisation to the step loop; on CUDA the clock synchronises once, at the end of the epoch's
steps, so that the queued GPU work is counted in ``train_steps`` and not in whatever phase comes next.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch

#: The phases of an epoch, in the order the loop passes them. ``train_steps``: the steps (forward,
#: loss, backward, optimiser) and their bookkeeping; ``data_wait``: the step loop waiting for the
#: loader's next batch (the first includes starting the workers); ``validation``; ``checkpoint``: the
#: snapshot of the state for last.pt/best.pt and any wait for the previous epoch's write; ``logs``:
#: metrics.jsonl lines, group_weights.csv rows and TensorBoard scalars.
PHASES = ("train_steps", "data_wait", "validation", "checkpoint", "logs")


def _digits(x: float) -> float:
    # Microseconds: an epoch of inputs held in memory can take a few milliseconds, where phases rounded
    # to 0.1 ms would no longer add up to the wall time.
    return round(x, 6)


class EpochClock:
    """The time of one epoch, phase by phase (seconds), and the training images it saw."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.start = time.perf_counter()
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.images = 0
        self.first_batch_s: float | None = None  # the wait for the epoch's first batch

    def batches(self, loader: Iterable[tuple[torch.Tensor, ...]]) -> Iterator[tuple[torch.Tensor, ...]]:
        """``loader``'s batches ``(x, y, g, idx)``; the wait for each is ``data_wait``, the time until
        the next is asked for is ``train_steps``."""
        t = time.perf_counter()
        it = iter(loader)  # starts the workers of a loader whose workers do not persist
        for batch in it:
            now = time.perf_counter()
            self.seconds["data_wait"] += now - t
            if self.first_batch_s is None:
                self.first_batch_s = now - t
            self.images += len(batch[1])
            yield batch
            t = time.perf_counter()
            self.seconds["train_steps"] += t - now
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the queued steps belong to train_steps
            self.seconds["train_steps"] += time.perf_counter() - t

    def phase(self, name: str) -> AbstractContextManager[None]:
        """Add the time spent in the ``with`` block to phase ``name`` (one of :data:`PHASES`)."""
        return _timed(self.seconds, name)

    def record(self) -> dict[str, Any]:
        """The epoch so far: ``wall_s``, ``images``, ``images_per_s`` (over the step loop: steps and
        data waits), ``data_wait_share`` (of the step loop, in [0, 1]), ``<phase>_s`` and ``other_s``
        (what no phase covers: the schedule, tqdm, the epoch line)."""
        wall = time.perf_counter() - self.start
        loop = self.seconds["train_steps"] + self.seconds["data_wait"]
        return {
            "wall_s": _digits(wall),
            "images": self.images,
            "images_per_s": _digits(self.images / loop) if loop > 0 else 0.0,
            "data_wait_share": _digits(min(1.0, self.seconds["data_wait"] / loop)) if loop > 0 else 0.0,
            **{f"{k}_s": _digits(v) for k, v in self.seconds.items()},
            "other_s": _digits(max(0.0, wall - sum(self.seconds.values()))),
        }


def time_text(record: dict[str, Any]) -> str:
    """The console's part of an epoch line: wall seconds, images/s, the share waiting for data."""
    return (f"{record['wall_s']:.1f} s  {record['images_per_s']:.0f} img/s  "
            f"data wait {100 * record['data_wait_share']:.0f}%")


class RunClock:
    """The start-up phases of a run (final.json's ``time``), each timed in a ``with`` block."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.teacher_images = 0  # images the teacher's pass over the training set computed (cache misses)

    def phase(self, name: str) -> AbstractContextManager[None]:
        """Add the time spent in the ``with`` block to start-up phase ``name``."""
        return _timed(self.seconds, name)

    def record(self, first_batch_s: float | None) -> dict[str, Any]:
        """final.json's ``time``: ``wall_s`` so far; ``data_index_s``, ``model_build_s``,
        ``teacher_s`` (loading the teacher and its pass over the training set; 0 without a teacher),
        ``teacher_pass_s`` and ``teacher_images_per_s`` (null when every logit came from the cache),
        ``first_batch_s`` (null when no epoch ran) and ``fit_s``."""
        s = self.seconds
        passed = s.get("teacher_pass", 0.0)
        rate = self.teacher_images / passed if self.teacher_images and passed > 0 else None
        return {
            "wall_s": _digits(time.perf_counter() - self.start),
            "data_index_s": _digits(s.get("data_index", 0.0)),
            "model_build_s": _digits(s.get("model_build", 0.0)),
            "teacher_s": _digits(s.get("teacher", 0.0)),
            "teacher_pass_s": _digits(passed) if self.teacher_images else None,
            "teacher_images_per_s": None if rate is None else _digits(rate),
            "first_batch_s": None if first_batch_s is None else _digits(first_batch_s),
            "fit_s": _digits(s.get("fit", 0.0)),
        }


@contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the ``with`` block to ``seconds[name]``."""
    t = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t
