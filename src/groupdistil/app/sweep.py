"""Sweeps: every combination of a grid of config values and seeds, resumable, with an index.

Each run is a normal run folder ``<out>/<name>/seed<k>`` where ``name`` is the config's label plus the
grid values (``groupdistil-step_size=0.1``). String values may hold ``{seed}`` and ``{<grid leaf>}``
placeholders, so a student can point at the teacher of its own seed. Runs execute as separate
processes (``python -m groupdistil run``), ``jobs`` at a time; a finished run is skipped, an
unfinished one resumes, a failing one is recorded and the sweep goes on.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from groupdistil.checkpoint import atomic_write
from groupdistil.config import RunConfig, leaf_fields, parse_yaml, set_dotted, validate_config
from groupdistil.errors import UserError
from groupdistil.metrics import HEADLINE_METRICS
from groupdistil.runs.final import read_final
from groupdistil.runs.rundir import RunPaths

#: More seeds per combination than anyone runs; 10**30 would build runs until memory ran out.
MAX_SEEDS = 1000


@dataclass
class SweepRun:
    name: str
    seed: int
    grid: dict[str, Any]
    config: RunConfig
    status: str = "pending"
    error: str | None = None
    test: dict[str, Any] = field(default_factory=dict)

    def index_entry(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "grid": self.grid, "out": str(self.config.out),
                "status": self.status, "error": self.error, "test": self.test}


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["objective.beta=0,0.5"]`` -> ``{"objective.beta": [0, 0.5]}`` (values parsed as YAML)."""
    keys = dict(leaf_fields())
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"`grid` {item}: expected key=v1,v2,...")
        key, values = item.split("=", 1)
        key = key.strip()
        if key not in keys:
            raise UserError(f"`grid` {item}: unknown config key {key!r}")
        if key in ("train.seed", "out"):
            raise UserError(f"`grid` {item}: {key} is set by the sweep itself")
        try:
            parsed = [parse_yaml(v, f"`grid` {key}") for v in values.split(",") if v.strip()]
        except yaml.YAMLError:
            raise UserError(f"`grid` {item}: a value is not valid YAML; expected key=v1,v2,...") from None
        if not parsed:
            raise UserError(f"`grid` {item}: no values")
        grid[key] = parsed
    return grid


def _fill(value: Any, fields: dict[str, Any]) -> Any:
    if isinstance(value, str):
        try:
            return value.format(**fields)
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
            # {seed.nope} and {seed[0]} fail with AttributeError / TypeError: the same user mistake.
            raise UserError(f"placeholder in {value!r}: {e}; expected {{seed}} or {{<grid key>}}") from None
    if isinstance(value, dict):
        return {k: _fill(v, fields) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, fields) for v in value]
    return value


def _slug(value: Any) -> str:
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in str(value))


def expand(raw: dict[str, Any], seeds: int, grid: dict[str, list[Any]], source: str = "sweep") -> list[SweepRun]:
    """Every (grid combination, seed) as a validated run; problems are one UserError line."""
    if not 1 <= seeds <= MAX_SEEDS:
        raise UserError(f"`seeds`: expected an integer in [1, {MAX_SEEDS}], got {seeds}")
    base = validate_config(raw, source)
    base_out, label = Path(base.out), base.label
    runs = []
    for combo in itertools.product(*grid.values()) if grid else [()]:
        values = dict(zip(grid, combo))
        suffix = ",".join(f"{k.rsplit('.', 1)[-1]}={_slug(v)}" for k, v in values.items())
        name = f"{label}-{suffix}" if suffix else label
        for seed in range(seeds):
            r = copy.deepcopy(raw)
            for k, v in values.items():
                set_dotted(r, f"{k}={json.dumps(v)}")
            fields = {"seed": seed, **{k.rsplit(".", 1)[-1]: v for k, v in values.items()}}
            r = _fill(r, fields)
            r["name"], r["out"] = name, str(base_out / name / f"seed{seed}")
            r.setdefault("train", {})["seed"] = seed
            r["quiet"] = True
            runs.append(SweepRun(name, seed, values, validate_config(r, f"{source} ({name}, seed {seed})")))
    return runs


def _headline(paths: RunPaths) -> dict[str, Any]:
    record, _ = read_final(paths.final)
    return {k: getattr(record.splits.test, k) for k in HEADLINE_METRICS}


def _execute(run: SweepRun, threads: int) -> None:
    out = RunPaths(run.config.out)
    if out.final.is_file():
        run.status, run.test = "skipped", _headline(out)
        return
    # --resume continues an unfinished run, starts one that never ended an epoch, and refuses a
    # folder whose run was made with other settings (the failure is recorded, the sweep goes on).
    cfg = run.config.model_copy(update={"resume": True, "force": False})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(cfg.model_dump(mode="json"), f)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    try:
        proc = subprocess.run([sys.executable, "-m", "groupdistil", "run", f.name], capture_output=True,
                              text=True, env=env)
    finally:
        Path(f.name).unlink(missing_ok=True)
    if proc.returncode == 0 and out.final.is_file():
        run.status, run.test = "finished", _headline(out)
    else:
        lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
        run.status, run.error = "failed", (lines[-1] if lines else f"exit code {proc.returncode}")


def run_sweep(
    runs: list[SweepRun], index_path: Path, jobs: int = 1, echo: Callable[[str], None] = print
) -> list[SweepRun]:
    """Run (or skip) every run, ``jobs`` at a time, rewriting the index after each one."""
    threads = max(1, (os.cpu_count() or 1) // max(jobs, 1))

    def write_index() -> None:
        data = {"runs": [r.index_entry() for r in runs]}
        atomic_write(index_path, lambda f: f.write(json.dumps(data, indent=1).encode()))

    def one(run: SweepRun) -> SweepRun:
        _execute(run, threads)
        extra = f": {run.error}" if run.error else ""
        echo(f"{run.status:8s} {run.name} seed {run.seed}{extra}")
        write_index()
        return run

    write_index()
    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        list(pool.map(one, runs))
    write_index()
    return runs
