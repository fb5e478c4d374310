"""``groupdistil sweep``: every combination of a grid and seeds, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from groupdistil.cli.app import app
from groupdistil.cli.flags import cli_text
from groupdistil.config import load_yaml, set_dotted


@app.command("sweep")
def sweep_command(
    config: Annotated[Path, typer.Argument(help="experiment YAML file (as for `groupdistil run`)")],
    seeds: Annotated[int, typer.Option("--seeds", help="seeds 0..N-1 for every combination")] = 1,
    grid: Annotated[Optional[list[str]], typer.Option("--grid", help="key=v1,v2 (repeatable)")] = None,  # noqa: UP045
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="runs in parallel")] = 1,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override: key.sub=value")] = None,  # noqa: UP045
) -> None:
    """Run every combination of --grid values for --seeds seeds; finished runs are skipped, unfinished
    ones resume; writes <out>/index.json."""
    from groupdistil.app.sweep import expand, parse_grid, run_sweep

    raw = load_yaml(config)
    for assignment in set_ or []:
        set_dotted(raw, assignment)
    runs = expand(raw, seeds, parse_grid(grid or []), str(config))
    index = Path(runs[0].config.out).parent.parent / "index.json"
    done = run_sweep(runs, index, jobs=jobs, echo=lambda m: typer.echo(cli_text(m)))
    failed = sum(r.status == "failed" for r in done)
    typer.echo(f"{len(done)} runs ({failed} failed); index: {index}")
    if failed:
        raise typer.Exit(1)
