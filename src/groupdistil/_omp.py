"""OpenMP's wait policy for the command line, chosen on import from the machine's load, before torch
loads.

By default OpenMP threads spin at barriers (``OMP_WAIT_POLICY=ACTIVE`` behaviour in libgomp). On an
idle machine that is the fastest choice; on a busy one it collapses a run: with one core taken by
another process, a two-thread CPU run waits on its descheduled, spinning partner (measured: the
short demo took 2.2x its idle time). PASSIVE threads sleep at barriers instead: 0.97x under load, but
1.39x slower when idle (benchmarks/results/perf-notes.md). So the command line looks before it
chooses: it samples, for 0.1 s while it sleeps, how many cores other processes keep busy (from
``/proc/stat``), and sets PASSIVE only when they leave fewer free cores than this process may use.

The variable is read once, when the OpenMP runtime loads (with torch), so the choice is made here,
imported first by the package, and only when this process is the ``groupdistil`` command (the
console script or ``python -m groupdistil``, which is also how sweeps and torchrun start runs) and
the command runs a model. A
library user's process and a value the user set are left alone. The policy changes waiting, not
arithmetic: results are the same under either.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable

#: How long the start-up sample lasts (/proc/stat counts in 10 ms ticks: 10 per core).
SAMPLE_S = 0.1
#: Free cores short of the usable ones beyond which the threads sleep: half a core, above the noise
#: of an idle machine (a few hundredths of a core).
MARGIN = 0.5


def launched_as_cli(argv: list[str] | None = None, orig_argv: list[str] | None = None) -> bool:
    """Whether this process is the ``groupdistil`` command (``sys.argv`` / ``sys.orig_argv`` by default)."""
    argv = sys.argv if argv is None else argv
    orig = list(getattr(sys, "orig_argv", [])) if orig_argv is None else orig_argv
    if argv and os.path.basename(argv[0]).split(".")[0] == "groupdistil":  # the console script
        return True
    return "-mgroupdistil" in orig or any(a == "-m" and b == "groupdistil" for a, b in itertools.pairwise(orig))


def cpu_times(stat: str = "/proc/stat") -> tuple[float, float, int] | None:
    """(busy ticks, all ticks, number of cores) of the whole machine, or None where the file is
    absent or unreadable (not Linux, a restricted container)."""
    try:
        with open(stat, encoding="ascii") as f:
            lines = f.read().splitlines()
        head, *values = lines[0].split()
        fields = [int(v) for v in values]
    except (OSError, ValueError, IndexError):
        return None
    if head != "cpu" or len(fields) < 8:
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user and nice]
    idle = sum(fields[3:5])
    total = sum(fields[:8])
    cores = sum(1 for line in lines[1:] if line.startswith("cpu"))
    return total - idle, total, cores


def busy_cores(sample: Callable[[], tuple[float, float, int] | None] = cpu_times,
               seconds: float = SAMPLE_S) -> tuple[float, int] | None:
    """(cores kept busy by other processes, cores of the machine), measured over ``seconds`` while this
    process sleeps; None when the machine's counters cannot be read."""
    first = sample()
    time.sleep(seconds)
    second = sample()
    if first is None or second is None or second[1] <= first[1]:
        return None
    share = (second[0] - first[0]) / (second[1] - first[1])
    return share * second[2], second[2]


def wait_policy(load: tuple[float, int] | None, usable: int) -> str | None:
    """PASSIVE when other processes leave fewer than ``usable`` cores (the ones this process's threads
    may run on) free, by more than :data:`MARGIN`; None (OpenMP's default) otherwise or when unknown."""
    if load is None:
        return None
    busy, cores = load
    return "PASSIVE" if cores - busy < usable - MARGIN else None


def _affinity_cores() -> int:
    """The cores this process may run on (its CPU affinity; the machine's where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def usable_cores(env: dict[str, str] | os._Environ[str] = os.environ) -> int:
    """The cores this process's OpenMP threads may run on: its CPU affinity, or fewer when
    ``OMP_NUM_THREADS`` says so (torchrun sets 1 per process when it starts several)."""
    cores = _affinity_cores()
    try:
        return max(1, min(cores, int(env.get("OMP_NUM_THREADS", ""))))
    except ValueError:
        return cores


def local_cores() -> int:
    """This process's share of the machine for work in other processes (loader workers, header checks):
    its CPU affinity divided among the ranks torchrun started on this machine (``LOCAL_WORLD_SIZE``)."""
    try:
        ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    except ValueError:
        ranks = 1
    return max(1, _affinity_cores() // ranks)


#: The commands that train or evaluate in this process.
_TRAINING_COMMANDS = {"train", "distill", "run", "evaluate", "demo"}


def trains(argv: list[str]) -> bool:
    """Whether the command line ``argv`` (without the program) runs a model, the only case where the
    policy matters: the 0.1 s sample is not spent on ``--help``, ``report``, ``sweep`` (each of its
    runs is a command of its own) or ``data``."""
    return bool(argv) and argv[0] in _TRAINING_COMMANDS


def _choose_policy() -> None:
    if not (launched_as_cli() and trains(sys.argv[1:])) or "OMP_WAIT_POLICY" in os.environ:
        return
    usable = usable_cores()
    if usable > 1:  # one thread has no barriers to wait at: no sample then
        policy = wait_policy(busy_cores(), usable)
        if policy is not None:
            os.environ["OMP_WAIT_POLICY"] = policy


_choose_policy()
