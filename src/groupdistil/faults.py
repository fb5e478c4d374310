"""Fault injection for the reliability tests (environment variables; unset, they cost one lookup).

``GROUPDISTIL_KILL_AT=<point>`` makes the process send itself SIGKILL at that point, exactly as an
out-of-memory killer or a pre-empted node would. ``GROUPDISTIL_NAN_AT=<n>[,<n>...]`` turns the
loss of the n-th training batch of the run (skipped batches counted) into NaN.

Points: ``step:<n>`` (right after optimisation step n, counted over the run, once a checkpoint write
still in flight on the background writer is on disk: so the point names one state of the run folder,
whatever the disk's speed), ``epoch:<e>`` (right after epoch e's ``last.pt`` is written, 0-based),
``replace:<file name>:<k>`` (the k-th time this process is about to rename a finished temporary file
onto ``<file name>``: the temporary file is complete and fsynced, the target still holds its old content).

``GROUPDISTIL_NOSPACE_AT=<file name>[:<k>]`` makes an atomic write of ``<file name>`` (every one, or
only the k-th of this process) and an append to it fail with ``OSError(ENOSPC)`` after part of the
bytes are written, as a disk that fills up does.

``GROUPDISTIL_PAUSE_AT=<point>`` makes the process print ``paused at <point>`` to stderr and wait
there for a signal that it handles (SIGTERM, SIGUSR1 while a run is training), so that a
test can act while the run is alive at a known point (signal it, start a second run on its folder).

All act in the first attempt of a torchrun job only (``TORCHELASTIC_RESTART_COUNT`` unset or 0), so
that the attempt torchrun restarts after the injected fault runs clean.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter
from collections.abc import Callable

from groupdistil.parallel import distributed

ENV = "GROUPDISTIL_KILL_AT"
_seen: Counter[str] = Counter()
#: What a ``step:`` kill or pause waits for first (the background checkpoint writer's join).
_settle: list[Callable[[], None]] = []


def settle_before_step_point(wait: Callable[[], None], active: bool) -> None:
    """Register (``active``) or drop ``wait``: called before a ``step:`` kill or pause."""
    if active and wait not in _settle:
        _settle.append(wait)
    elif not active and wait in _settle:
        _settle.remove(wait)


PAUSE_ENV = "GROUPDISTIL_PAUSE_AT"


def point(name: str) -> None:
    """SIGKILL this process if ``GROUPDISTIL_KILL_AT`` names this point; wait for a signal if
    ``GROUPDISTIL_PAUSE_AT`` does."""
    target, pause = os.environ.get(ENV), os.environ.get(PAUSE_ENV)
    if not (target or pause) or _restarted():
        return
    if name.startswith("replace:"):
        _seen[name] += 1
        name = f"{name}:{_seen[name]}"
    if name in (target, pause) and name.startswith("step:"):
        # A step point sees the checkpoint in flight on disk: what a kill leaves, and what a test
        # compares while the run waits, do not depend on how fast the background write was.
        for wait in list(_settle):
            wait()
    if name == target:
        os.kill(os.getpid(), signal.SIGKILL)
    if name == pause:
        _pause(name)


def armed(name: str) -> bool:
    """Whether ``GROUPDISTIL_KILL_AT`` or ``GROUPDISTIL_PAUSE_AT`` names the point ``name`` (not a
    ``replace:`` point, whose name gains its count in :func:`point`): a caller may then bring the
    point's precondition about first, on the thread that can pause."""
    return not _restarted() and name in (os.environ.get(ENV), os.environ.get(PAUSE_ENV))


def _pause(name: str) -> None:
    """Print ``paused at <name>`` and wait for a signal that the process handles. Python's own C-level
    handler writes each signal's number to the wakeup fd, whichever thread receives it, so a signal
    sent as soon as the line is read is never missed (``signal.pause`` could wait for it forever)."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    before = signal.set_wakeup_fd(w)
    try:
        # One write, line break included: ranks that pause together share a pipe, and print's two
        # writes could interleave their lines ("paused at Xpaused at X").
        sys.stderr.write(f"paused at {name}\n")
        sys.stderr.flush()
        os.read(r, 1)
    finally:
        signal.set_wakeup_fd(before)
        os.close(r)
        os.close(w)


NAN_ENV = "GROUPDISTIL_NAN_AT"


def poisoned(batch: int) -> bool:
    """True when ``GROUPDISTIL_NAN_AT`` (comma-separated batch numbers) names this training batch:
    the engine then turns its loss into NaN, to test the non-finite guard."""
    target = os.environ.get(NAN_ENV)
    return bool(target) and not _restarted() and str(batch) in target.split(",")


def _restarted() -> bool:
    return distributed.restart_count() > 0


NOSPACE_ENV = "GROUPDISTIL_NOSPACE_AT"


def no_space(name: str) -> bool:
    """True when ``GROUPDISTIL_NOSPACE_AT`` names this write of the file called ``name`` (each call
    counts one write): the writer then fails with ENOSPC part-way (checkpoint.atomic_write)."""
    target = os.environ.get(NOSPACE_ENV)
    if not target or _restarted():
        return False
    _seen[f"nospace:{name}"] += 1
    return target in (name, f"{name}:{_seen[f'nospace:{name}']}")

