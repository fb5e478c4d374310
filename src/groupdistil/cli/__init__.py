"""The ``groupdistil`` command line: a thin typer app over the library.

Each command group lives in its own module and registers itself on :data:`app`. Every user mistake
(:class:`groupdistil.errors.UserError`) becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import traceback

from groupdistil.cli.app import app, run_app

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``groupdistil`` script and ``python -m groupdistil``."""
    from groupdistil.parallel.distributed import exit_process

    try:
        code = run_app(argv)
    except Exception:  # a bug: its traceback, then the same exit as any other (see exit_process)
        traceback.print_exc()
        code = 1
    exit_process(code)
