"""``groupdistil datasets`` and ``groupdistil data inspect``."""

from __future__ import annotations

import typer

from groupdistil.cli.app import app
from groupdistil.data import DATASETS


@app.command("datasets")
def datasets_command() -> None:
    """List the dataset names, one line each."""
    for name, spec in DATASETS.items():
        typer.echo(f"{name:18s} {spec.summary}")
