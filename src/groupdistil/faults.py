"""Fault injection for the reliability tests (environment variables; unset, they cost one lookup).

``GROUPDISTIL_KILL_AT=<point>`` makes the process send itself SIGKILL at that point, exactly as an
out-of-memory killer or a pre-empted node would. ``GROUPDISTIL_NAN_AT=<n>[,<n>...]`` turns the
loss of the n-th training batch of the run (skipped batches counted) into NaN.

Points: ``step:<n>`` (right after optimisation step n, counted over the run), ``epoch:<e>`` (right
after epoch e's ``last.pt`` is written, 0-based), ``replace:<file name>:<k>`` (the k-th time this
process is about to rename a finished temporary file onto ``<file name>``: the temporary file is
complete and fsynced, the target still holds its old content).

``GROUPDISTIL_PAUSE_AT=<point>`` makes the process print ``paused at <point>`` to stderr and wait
there for SIGTERM or SIGUSR1 (which it then raises again for the process's own handler), so that a
test can act while the run is alive at a known point (signal it, start a second run on its folder).

All act in the first attempt of a torchrun job only (``TORCHELASTIC_RESTART_COUNT`` unset or 0), so
that the attempt torchrun restarts after the injected fault runs clean.
"""

from __future__ import annotations

import os
import signal
import sys
from collections import Counter

from groupdistil.parallel import distributed

ENV = "GROUPDISTIL_KILL_AT"
_seen: Counter[str] = Counter()


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
    if name == target:
        os.kill(os.getpid(), signal.SIGKILL)
    if name == pause:
        # Blocked before the line is printed: a signal sent as soon as the test reads it is kept pending
        # for sigwait, then raised again unblocked, for the process's own handler (signal.pause would
        # wait forever for a signal that came just before it).
        waited = {signal.SIGTERM, signal.SIGUSR1}
        signal.pthread_sigmask(signal.SIG_BLOCK, waited)
        print(f"paused at {name}", file=sys.stderr, flush=True)
        got = signal.sigwait(waited)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, waited)
        os.kill(os.getpid(), got)


NAN_ENV = "GROUPDISTIL_NAN_AT"


def poisoned(batch: int) -> bool:
    """True when ``GROUPDISTIL_NAN_AT`` (comma-separated batch numbers) names this training batch:
    the engine then turns its loss into NaN, to test the non-finite guard."""
    target = os.environ.get(NAN_ENV)
    return bool(target) and not _restarted() and str(batch) in target.split(",")


def _restarted() -> bool:
    return distributed.restart_count() > 0
