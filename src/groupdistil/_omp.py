"""OpenMP's wait policy for the command line, set on import, before torch loads.

By default OpenMP threads spin at barriers (``OMP_WAIT_POLICY=ACTIVE`` behaviour in libgomp), which
costs nothing on an idle machine and a great deal on a busy one: with one core taken by another
process, a two-thread CPU run waited on its spinning partner and took four times longer. PASSIVE
threads sleep instead. The variable is read when the OpenMP runtime loads (with torch), so it is set
here, imported first by the package, and only when this process is the ``groupdistil`` command
(the console script or ``python -m groupdistil``, which is also how sweeps and torchrun start runs);
a library user's process, and a value the user set, are left alone.
"""

from __future__ import annotations

import itertools
import os
import sys


def launched_as_cli(argv: list[str] | None = None, orig_argv: list[str] | None = None) -> bool:
    """Whether this process is the ``groupdistil`` command (``sys.argv`` / ``sys.orig_argv`` by default)."""
    argv = sys.argv if argv is None else argv
    orig = list(getattr(sys, "orig_argv", [])) if orig_argv is None else orig_argv
    if argv and os.path.basename(argv[0]).split(".")[0] == "groupdistil":  # the console script
        return True
    return "-mgroupdistil" in orig or any(a == "-m" and b == "groupdistil" for a, b in itertools.pairwise(orig))


if launched_as_cli():
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
