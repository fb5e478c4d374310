"""``groupdistil datasets`` and ``groupdistil data inspect``."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from groupdistil.cli.app import app
from groupdistil.cli.data_options import data_options
from groupdistil.data import DATASETS, DataConfig, load_dataset
from groupdistil.data.summary import format_counts, group_counts_json

data_app = typer.Typer(help="Look at datasets before training on them.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.command("datasets")
def datasets_command() -> None:
    """List the dataset names, one line each."""
    for name, spec in DATASETS.items():
        typer.echo(f"{name:18s} {spec.summary}")


@data_app.command("inspect")
@data_options
def inspect_command(
    data: DataConfig,
    as_json: Annotated[bool, typer.Option("--json", help="print only the split x group counts")] = False,
) -> None:
    """Count samples per split x group and per class, and show warnings. Decodes no image."""
    bundle = load_dataset(data)
    if as_json:
        typer.echo(json.dumps(group_counts_json(bundle)))
        for w in bundle.warnings:  # stdout stays pure JSON
            print(f"warning: {w}", file=sys.stderr)
        return
    typer.echo(format_counts(bundle))
