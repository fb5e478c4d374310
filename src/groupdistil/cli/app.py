"""The typer app and the error boundary shared by every command."""

from __future__ import annotations

import importlib
import os
import shlex
import sys

import typer

from groupdistil.cli.flags import cli_text
from groupdistil.errors import STORAGE_EXIT_CODE, NumericalError, StorageError, UserError
from groupdistil.parallel import distributed
from groupdistil.training.preempt import EXIT_CODE as PREEMPTED_EXIT
from groupdistil.training.preempt import Preempted

app = typer.Typer(
    name="groupdistil",
    help="Knowledge distillation that keeps minority groups and rare classes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

#: Modules that register commands on ``app`` when imported.
COMMAND_MODULES = (
    "groupdistil.cli.data_commands",
    "groupdistil.cli.train_commands",
    "groupdistil.cli.report_commands",
    "groupdistil.cli.sweep_commands",
)


def _register() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name)


def _is_usage_error(e: BaseException) -> bool:
    # typer bundles its own click; its exceptions carry exit_code and format_message().
    return hasattr(e, "format_message") and hasattr(e, "exit_code")


def _print_error(message: str) -> None:
    print(f"error: {cli_text(message)}", file=sys.stderr, flush=True)


def _rank_zero() -> bool:
    """Whether this process is rank 0 (or alone), after the process group is gone: torchrun's RANK says."""
    return distributed.env_rank_info()[0] == 0


def run_app(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code: user errors print one line and return 2, numerical faults
    (a non-finite loss) one line and 3, a file the file system refused to write (no space, read-only)
    one line and 74 (STORAGE_EXIT_CODE)."""
    _register()
    distributed.set_error_reporter(_print_error)
    try:
        result = app(args=argv, prog_name="groupdistil", standalone_mode=False)
    except UserError as e:
        # An error every rank shares is printed once, by rank 0, before the others learn of it.
        if not getattr(e, "from_rank0", False) and not getattr(e, "reported", False):
            _print_error(str(e))
        return STORAGE_EXIT_CODE if isinstance(e, StorageError) else 2
    except NumericalError as e:
        if _rank_zero():  # every rank stops at the same step; one line
            print(f"error: {cli_text(str(e))}", file=sys.stderr)
        return 3
    except Preempted as e:
        if _rank_zero():
            print(f"{e}; continue with: {resume_command(sys.argv[1:] if argv is None else argv)}",
                  file=sys.stderr, flush=True)
        return PREEMPTED_EXIT
    except typer.Exit as e:
        return int(getattr(e, "exit_code", 0) or 0)
    except (typer.Abort, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if _is_usage_error(e):
            print(f"error: {e.format_message()}", file=sys.stderr)  # type: ignore[attr-defined]
            return 2
        raise
    return result if isinstance(result, int) else 0


def resume_command(argv: list[str]) -> str:
    """The command that continues a run stopped by a signal: this one, with ``--resume`` (``run``:
    ``--set resume=true``); under torchrun, inside the same torchrun launch."""
    args = list(argv)
    if "--resume" not in args and "resume=true" not in args:
        args += ["--set", "resume=true"] if args[:1] == ["run"] else ["--resume"]
    launcher = "torchrun <its options> -m groupdistil" if "TORCHELASTIC_RUN_ID" in os.environ else "groupdistil"
    return f"{launcher} {shlex.join(args)}"


@app.callback()
def _root() -> None:
    """Knowledge distillation that keeps minority groups and rare classes."""
