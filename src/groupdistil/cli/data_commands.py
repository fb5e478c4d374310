"""``groupdistil datasets`` and ``groupdistil data inspect``."""

from __future__ import annotations

import inspect
import json
import sys
from typing import Annotated

import typer

from groupdistil.cli.app import app
from groupdistil.cli.flags import cli_text, command_with_flags, config_parameters
from groupdistil.config import validate_config
from groupdistil.data import DATASETS, load_dataset
from groupdistil.data.options import TRAINING_ONLY
from groupdistil.data.summary import format_counts, group_counts_json

data_app = typer.Typer(help="Look at datasets before training on them.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.command("datasets")
def datasets_command() -> None:
    """List the dataset names, one line each."""
    for name, spec in DATASETS.items():
        typer.echo(f"{name:18s} {cli_text(spec.summary)}")


def inspect_command(overrides: dict, as_json: bool = False) -> None:
    """Count samples per split x group and per class, and show warnings. Decodes no image (nor reads a
    header: a run checks every image's header when it loads the data)."""
    bundle = load_dataset(validate_config({"data": overrides.get("data", {})}, "data inspect").data,
                          check_files=False)
    if as_json:
        typer.echo(json.dumps(group_counts_json(bundle)))
        for w in bundle.warnings:  # stdout stays pure JSON
            print(f"warning: {w}", file=sys.stderr)
        return
    typer.echo(format_counts(bundle))


data_app.command("inspect", help="Count samples per split x group and per class, and show warnings. "
                 "Decodes no image.")(
    command_with_flags(
        inspect_command,
        [inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=False,
                           annotation=Annotated[bool, typer.Option("--json", help="print only the counts")])],
        config_parameters(["data"], skip=TRAINING_ONLY),
        "Count samples per split x group and per class.",
    )
)
