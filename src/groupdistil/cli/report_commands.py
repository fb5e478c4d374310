"""``groupdistil report``: tables and figures over finished runs."""

from __future__ import annotations

from pathlib import Path

import typer

from groupdistil.cli.app import app


@app.command("report")
def report_command(
    run_dirs: list[Path] = typer.Argument(
        ...,
        metavar="RUN_DIR",
        help="Run directories, or folders searched recursively for runs (directories with final.json).",
    ),
    out: Path = typer.Option(
        ..., "--out", metavar="DIR", help="Folder for report.md, report.html, summary.json and PNGs."
    ),
    title: str | None = typer.Option(
        None, "--title", metavar="TEXT", help="The report's title [default: groupdistil report]."
    ),
) -> None:
    """Aggregate runs over seeds into report.md, one self-contained report.html and summary.json."""
    # Imported here so that other commands do not pay for matplotlib at start-up.
    from groupdistil.report import build_report

    files = build_report(run_dirs, out, title=title)
    for path in files.skipped:
        typer.echo(f"warning: skipping unfinished run (no final.json): {path}", err=True)
    written = ", ".join(str(p) for p in (files.html, files.markdown, files.summary))
    typer.echo(f"{files.runs} runs -> {written} and {len(files.images)} figures")
