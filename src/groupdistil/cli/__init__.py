"""The ``groupdistil`` command line: a thin typer app over the library.

Each command group lives in its own module and registers itself on :data:`app`. Every user mistake
(:class:`groupdistil.errors.UserError`) becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

from groupdistil.cli.app import app, run_app

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``groupdistil`` script and ``python -m groupdistil``."""
    sys.exit(run_app(argv))
