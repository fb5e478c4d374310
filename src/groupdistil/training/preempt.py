"""Pre-emption: a run asked to stop by a signal finishes its step, writes a resumable checkpoint and
exits with :data:`EXIT_CODE`; ``train.checkpoint_every`` writes such checkpoints during epochs too.

While :func:`stop_on_signals` is active (the command line's train, distill and run), SIGTERM and
SIGUSR1 only set a flag. The training loop reads it after every batch (:class:`Watch`); under
torchrun the ranks sum their flags in one all-reduce of two numbers per step, so that every rank
stops after the same step, whichever ranks received the signal. A signal that comes again changes
nothing (SLURM may signal torchrun and its workers both); SIGKILL or SIGINT still stop at once.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from groupdistil.parallel import distributed

#: The signals that stop a run resumably.
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
#: The exit code of a run stopped resumably: EX_TEMPFAIL of sysexits.h, "a temporary failure; the
#: user is invited to retry" (a batch script requeues on it; 143, SIGTERM's default, means killed).
EXIT_CODE = 75

_received: list[int] = []  # the signals received while stop_on_signals is active
_installed = False


def _record(signum: int, frame: object) -> None:
    _received.append(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: SIGTERM and SIGUSR1 ask a training run to stop after its current step (see the module's
    docstring) instead of ending the process. Outside the main thread, where Python cannot install
    handlers, it does nothing."""
    global _installed
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.signal(s, _record) for s in SIGNALS}
    _installed, _received[:] = True, []
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        _installed = False
        _received.clear()


class Preempted(Exception):
    """A run stopped by a signal after writing the resumable checkpoint ``checkpoint``."""

    def __init__(self, signame: str, checkpoint: Path | None, epoch: int, batches: int, step: int) -> None:
        self.signame, self.checkpoint = signame, checkpoint
        self.epoch, self.batches, self.step = epoch, batches, step
        where = f"after batch {batches} of epoch {epoch + 1}" if batches else f"after epoch {epoch + 1}"
        super().__init__(f"stopped by {signame} {where} (step {step}); resumable checkpoint: {checkpoint}")


class Watch:
    """After every batch: is a mid-epoch checkpoint due, and is the run to stop? Every rank gets the
    same answer. ``every_minutes``: ``train.checkpoint_every`` (None: only a signal makes one)."""

    def __init__(self, every_minutes: float | None) -> None:
        self.every = None if every_minutes is None else 60.0 * every_minutes
        self.last = time.monotonic()
        # Without handlers or a timer nothing can ever be due: no all-reduce either (every rank agrees,
        # since every rank runs the same command).
        self.active = _installed or self.every is not None

    def saved(self) -> None:
        """A checkpoint was just written: the interval starts again."""
        self.last = time.monotonic()

    def poll(self) -> tuple[bool, bool]:
        """(write a checkpoint now, then stop)."""
        if not self.active:
            return False, False
        stop = bool(_received)
        due = self.every is not None and time.monotonic() - self.last >= self.every
        if distributed.is_distributed():
            flags = distributed.all_reduce_sum(torch.tensor([float(stop), float(due)]))
            stop, due = bool(flags[0] > 0), bool(flags[1] > 0)
        return due or stop, stop

    @staticmethod
    def signame() -> str:
        """The name of the signal that stops the run (another rank's, when this one received none)."""
        return signal.Signals(_received[0]).name if _received else "a signal to another rank"
