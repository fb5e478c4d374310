"""``groupdistil train | distill | run | evaluate | demo``: thin wrappers over the runner."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from groupdistil.cli.app import app
from groupdistil.cli.flags import cli_text, command_with_flags, config_parameters, deep_merge
from groupdistil.config import load_yaml, set_dotted, validate_config
from groupdistil.data.options import TRAINING_ONLY
from groupdistil.errors import ConfigError, UserError, first_line
from groupdistil.objectives import OBJECTIVES

#: Methods that distill a teacher (the rest train without one).


def _echo(quiet: bool):
    from groupdistil.parallel.distributed import env_rank_info

    # Under torchrun every rank runs the same code: only rank 0 speaks. --quiet silences progress, not
    # warnings: those go to stderr in every case.
    main = env_rank_info()[0] == 0

    def echo(msg: str) -> None:
        msg = cli_text(msg)
        if main and msg.startswith("warning: "):
            typer.echo(msg, err=True)
        elif main and not quiet:
            typer.echo(msg)

    return echo


def _run(raw: dict[str, Any], source: str) -> dict[str, Any]:
    from groupdistil.app.runner import run_experiment
    from groupdistil.parallel.distributed import session  # heavy imports only when a command runs
    from groupdistil.runs.rundir import RunPaths
    from groupdistil.training.preempt import stop_on_signals

    cfg = validate_config(raw, source)
    echo = _echo(cfg.quiet)
    # --resume of a finished run does nothing (and says so): a requeued job may always pass --resume.
    done = cfg.resume and not cfg.force and RunPaths(cfg.out).final.is_file()
    # SIGTERM and SIGUSR1 stop the run resumably (training/preempt.py; the command line reports it).
    with session(cfg.train.device), stop_on_signals():  # the process group when torchrun launched several
        final = run_experiment(cfg, echo=echo)
    echo(format_final(final))
    if not done:
        echo(f"wrote {cfg.out}")
    return final


def train(overrides: dict[str, Any]) -> None:
    raw = deep_merge({"role": "teacher", "out": "runs/train"}, overrides)
    method = raw.get("objective", {}).get("method", "erm")
    if method in OBJECTIVES and OBJECTIVES[method].distills:
        raise UserError(f"--method {method}: needs a teacher; use `groupdistil distill`")
    _run(raw, "train")


def distill(overrides: dict[str, Any]) -> None:
    raw = deep_merge({"role": "student", "out": "runs/distill", "objective": {"method": "kd"}}, overrides)
    if not raw.get("teacher", {}).get("checkpoints"):
        raise UserError("--teacher: distill needs a teacher checkpoint (a run's checkpoints/best.pt)")
    _run(raw, "distill")


app.command("train", help="Train a model without a teacher: a teacher (erm, group-dro, balanced, "
            "robust-teacher) or a baseline student (erm, reweight, group-dro).")(
    command_with_flags(train, [], config_parameters(), "Train a model without a teacher.")
)
app.command("distill", help="Distill a teacher checkpoint into a student (kd, groupdistil, "
            "class-robust-kd).")(
    command_with_flags(distill, [], config_parameters(), "Distill a teacher into a student.")
)


@app.command("run")
def run_command(
    config: Annotated[Path, typer.Argument(help="experiment YAML file")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override: key.sub=value")] = None,  # noqa: UP045
) -> None:
    """Run the experiment a YAML file describes (keys as in `groupdistil train --help`)."""
    raw = load_yaml(config)
    for assignment in set_ or []:
        set_dotted(raw, assignment)
    _run(raw, str(config))


def evaluate_body(
    overrides: dict[str, Any], checkpoint: Path, split: str = "test", json_out: bool = False
) -> None:
    from groupdistil.app.runner import check_fits_data, model_from_checkpoint
    from groupdistil.data import DataConfig, load_dataset
    from groupdistil.training.evaluation import evaluate

    if split not in ("train", "val", "test", "all"):
        raise UserError(f"--split: expected train, val, test or all, got {split!r}")
    model, ck = model_from_checkpoint(checkpoint)
    saved = (ck.get("config") or {}).get("data") or {}
    try:
        data_cfg = DataConfig.model_validate(deep_merge(saved, overrides.get("data", {})))
    except ValueError as e:
        raise ConfigError(f"--checkpoint {checkpoint}: dataset options: {first_line(e)}") from None
    bundle = load_dataset(data_cfg)
    check_fits_data(model, ck, bundle, checkpoint)
    names = ("train", "val", "test") if split == "all" else (split,)
    counts = bundle.group_counts("train")
    result = {n: evaluate(model, bundle.splits[n], bundle.grouping, train_group_counts=counts) for n in names}
    if json_out:
        typer.echo(json.dumps({"checkpoint": str(checkpoint), "splits": result}, indent=2))
    else:
        typer.echo(format_final({"name": str(checkpoint), "splits": result}))


app.command("evaluate", help="Evaluate a checkpoint on a split (dataset options default to its run's).")(
    command_with_flags(
        evaluate_body,
        [
            inspect.Parameter("checkpoint", inspect.Parameter.KEYWORD_ONLY,
                              annotation=Annotated[Path, typer.Option("--checkpoint", help="checkpoint file")]),
            inspect.Parameter("split", inspect.Parameter.KEYWORD_ONLY, default="test",
                              annotation=Annotated[str, typer.Option("--split", help="train, val, test or all")]),
            inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, default=False,
                              annotation=Annotated[bool, typer.Option("--json", help="print JSON")]),
        ],
        config_parameters(["data"], skip=TRAINING_ONLY),
        "Evaluate a checkpoint.",
    )
)


def _pct(v: float | None) -> str:
    return "   n/a" if v is None else f"{100 * v:6.1f}"


def format_final(final: dict[str, Any]) -> str:
    """A plain-text table: headline metrics per split, then per-group accuracy."""
    lines = [f"== {final.get('name', '')}"]
    splits = final["splits"]
    lines.append(f"{'split':6s} {'avg':>6s} {'worst-grp':>9s} {'balanced':>8s} {'adj-avg':>7s} {'worst-cls':>9s}")
    for s, m in splits.items():
        lines.append(
            f"{s:6s} {_pct(m['avg_acc'])} {_pct(m['worst_group_acc']):>9s} {_pct(m['balanced_acc']):>8s} "
            f"{_pct(m['adjusted_avg_acc']):>7s} {_pct(m['worst_class_acc']):>9s}"
        )
    last = next(reversed(splits.values()))
    groups = "  ".join(f"{g} {_pct(a).strip()}" for g, a in last["group_acc"].items())
    lines.append(f"groups ({next(reversed(splits))}): {groups}")
    return "\n".join(lines)


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", help="folder for every run of the demo")] = Path("demo-out"),
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="seeds per model")] = 3,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="epochs per run")] = None,  # noqa: UP045
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, max=1024,  # noqa: UP045
                                                   help="CPU threads of torch's kernels")] = None,
) -> None:
    """The end-to-end demo on spurious-digits: teachers, then ERM, KD and GroupDistil students."""
    import torch

    from groupdistil.app.demo import DEMO, run_demo

    if threads is not None:
        torch.set_num_threads(threads)

    run_demo(out, seeds=seeds, epochs=epochs or DEMO["epochs"], echo=typer.echo)
    typer.echo(f"runs written under {out}")
