"""The run folder: its layout, the marker that says groupdistil made it, and what a new run may do
with a folder that exists already.

Layout (:class:`RunPaths`)::

    <out>/.groupdistil-run     the marker: written first, when groupdistil creates the folder
    <out>/config.yaml          the resolved configuration
    <out>/metrics.jsonl        a line per epoch and split
    <out>/group_weights.csv    a row per optimisation step
    <out>/final.json           written last: its presence marks a finished run
    <out>/tb/                  TensorBoard events
    <out>/checkpoints/last.pt, best.pt

A folder is *ours* when it holds the marker, or (a run written before the marker existed) when it
has config.yaml of a run and checkpoints/, and in both cases nothing that no run writes: ``--force``
replaces only such a folder, so a user's folder given as ``--out`` by mistake is never deleted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from groupdistil._validate import refuse_file
from groupdistil.checkpoint import check_resumable, load_checkpoint
from groupdistil.config import RunConfig, leaf_fields
from groupdistil.errors import StorageError, UserError
from groupdistil.parallel import distributed
from groupdistil.runs.lock import RunLock, check_unlocked

MARKER = ".groupdistil-run"
MARKER_TEXT = "groupdistil run folder (--force replaces only folders that hold this file)\n"

#: Written into the run folder by a torchrun job that may restart its workers (``--max-restarts``):
#: the job's id, so that a restarted attempt knows the folder is its own and continues the run.
ELASTIC_MARKER = ".torchelastic-run-id"

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
WEIGHTS = "group_weights.csv"
FINAL = "final.json"
PSEUDO_GROUPS = "pseudo_groups.csv"
LAST = "last.pt"
BEST = "best.pt"
TB = "tb"
CHECKPOINTS = "checkpoints"

#: The files a run writes with checkpoint.atomic_write, at the top of its folder and in checkpoints/.
RUN_FILES = (CONFIG, METRICS, WEIGHTS, FINAL, PSEUDO_GROUPS)
CHECKPOINT_FILES = (LAST, BEST)
#: What a run writes at the top of its folder, and in checkpoints/ and tb/.
_TOP = {MARKER, ELASTIC_MARKER, CONFIG, METRICS, WEIGHTS, FINAL, PSEUDO_GROUPS, CHECKPOINTS, TB}
_CHECKPOINTS = {LAST, BEST}
#: A temporary file of an atomic write (checkpoint.atomic_write) that a kill interrupted.
_TMP = re.compile(r"\..+\.tmp")
#: Sections of config.yaml: a folder from before the marker counts as a run only with all of them.
_CONFIG_KEYS = {"out", "data", "model", "objective", "optim", "train"}


def _entry(*parts: str, doc: str | None = None) -> property:
    """A read-only attribute: the path ``root / parts`` of a :class:`RunPaths`."""
    return property(lambda self: self.root.joinpath(*parts), doc=doc)


@dataclass(frozen=True)
class RunPaths:
    """Every path of one run folder; the single owner of the layout's file names."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    marker = _entry(MARKER)
    elastic = _entry(ELASTIC_MARKER)
    config = _entry(CONFIG)
    metrics = _entry(METRICS)
    weights = _entry(WEIGHTS)
    final = _entry(FINAL)
    pseudo_groups = _entry(PSEUDO_GROUPS, doc="The inferred training group of every training sample "
                                              "(``data.train_groups``).")
    tb = _entry(TB)
    checkpoints = _entry(CHECKPOINTS)
    last = _entry(CHECKPOINTS, LAST)
    best = _entry(CHECKPOINTS, BEST)

    @property
    def staging(self) -> Path:
        """Where ``--force`` writes the run that replaces this one, until it is finished."""
        return self.root.parent / f".{self.root.name}.new"

    @property
    def aside(self) -> Path:
        """Where the replaced run waits, for the moment of the swap, before it is deleted."""
        return self.root.parent / f".{self.root.name}.old"

    def is_empty(self) -> bool:
        """True when the folder does not exist or holds nothing."""
        return not self.root.exists() or (self.root.is_dir() and not any(self.root.iterdir()))

    def foreign(self) -> str | None:
        """Why this existing folder is not a run folder groupdistil made (None when it is one)."""
        if not self.root.is_dir():
            return "is not a folder"
        if not self.marker.is_file() and not self._legacy_run():
            return "is not a groupdistil run folder (it has no .groupdistil-run marker)"
        extra = _unknown_entry(self.root)
        return f"holds {extra}, which no groupdistil run writes" if extra else None

    def _legacy_run(self) -> bool:
        # A run folder from before the marker: config.yaml with a run's sections, and checkpoints/.
        if not (self.config.is_file() and self.checkpoints.is_dir()):
            return False
        try:
            raw = yaml.safe_load(self.config.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError, OSError):
            return False
        return isinstance(raw, dict) and set(raw) >= _CONFIG_KEYS

    def write_marker(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.marker.is_file():
            self.marker.write_text(MARKER_TEXT)


def _unknown_entry(root: Path) -> str | None:
    """The first entry (relative path) of a run folder that no run writes, or None."""
    for entry in sorted(root.iterdir()):
        if entry.name not in _TOP and not (_TMP.fullmatch(entry.name) and entry.is_file()):
            return entry.name
    for sub, allowed in ((CHECKPOINTS, _CHECKPOINTS), (TB, None)):
        folder = root / sub
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            return sub
        for entry in sorted(folder.iterdir()) if folder.is_dir() else ():
            known = entry.name in allowed if allowed else entry.name.startswith("events.out.tfevents.")
            if entry.is_symlink() or not entry.is_file() or not (known or _TMP.fullmatch(entry.name)):
                return f"{sub}/{entry.name}"
    return None


# ---- what a new run does with its folder -------------------------------------------------------------


@dataclass(frozen=True)
class OutPlan:
    """What a run does with its folder: decided (read only) before any input is loaded, done after.

    ``work`` is where the run writes: the run folder itself, or, to replace a run that holds a result
    or a checkpoint, :attr:`RunPaths.staging`, swapped in when the new run is finished.
    """

    paths: RunPaths
    work: Path
    resume: bool = False
    clear: bool = False  # empty ``work`` first: a folder of ours that holds nothing worth keeping
    finished: bool = False  # --resume of a finished run: nothing to do
    notice: str | None = None
    job: str | None = None  # the torchrun job id to write into the folder (ELASTIC_MARKER)

    @property
    def replaces(self) -> bool:
        return self.work != self.paths.root


def plan_out(cfg: RunConfig) -> OutPlan:
    """Decide what the run does with ``cfg.out``; refusals are one UserError line. Nothing is written,
    except to finish the swap of a replacing run that a kill interrupted (:func:`_recover_swap`).

    A finished run is never replaced without ``force`` (``resume`` then has nothing to do); an
    unfinished one needs ``resume`` or ``force``; ``force`` replaces only a folder of ours; a folder
    that is not ours is used only when empty. A torchrun attempt restarted after a failure
    (``--max-restarts``) continues the folder holding its job's id, as if ``--resume`` had been given
    (or starts again when no epoch had ended). A folder that a live run holds (runs/lock.py) is refused
    first, naming its PID and host. Under DDP only rank 0 calls it.
    """
    paths = RunPaths(cfg.out)
    check_location(paths.root)
    job = _elastic_job()
    try:
        check_unlocked(paths.root)
        _recover_swap(paths)
        plan = _elastic_plan(paths, job[0]) if job is not None and job[1] > 0 else None
        if plan is None:
            plan = _force_plan(cfg, paths) if cfg.force else _plan(cfg, paths)
    except OSError as e:
        raise UserError(f"`out` {paths.root}: cannot read the folder ({e.strerror or e})") from None
    return replace(plan, job=job[0] if job is not None else None)


def check_location(root: Path) -> None:
    """Refuse an output folder that is the current folder (``--out ''`` too) or is not a folder."""
    root = Path(root)
    if str(root) in ("", ".") or root.resolve() == Path.cwd().resolve():
        raise UserError(f"`out` {str(root)!r}: is the current folder; give the run a folder of its own "
                        "(an empty `out`, such as an unset shell variable, means the current folder)")
    refuse_file(root, "`out`")


def _elastic_job() -> tuple[str, int] | None:
    """(run id, restart count) under a torchrun launch that may restart its workers, else None."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if not run_id or int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) <= 0:
        return None
    return run_id, distributed.restart_count()


def _elastic_plan(paths: RunPaths, run_id: str) -> OutPlan | None:
    # The staging folder first: the failed attempt may have been replacing a run (--force).
    for here in (RunPaths(paths.staging), paths):
        if here.elastic.is_file() and here.elastic.read_text() == run_id:
            _refuse_finished(here)
            has_last = here.last.is_file()
            return OutPlan(paths, here.root, resume=has_last, clear=not has_last)
    return None


def _refuse_finished(paths: RunPaths) -> None:
    if paths.final.exists():
        raise UserError(f"`out` {paths.root}: holds a finished run; pass `force` to overwrite it")


def _force_plan(cfg: RunConfig, paths: RunPaths) -> OutPlan:
    if paths.is_empty():
        return OutPlan(paths, paths.root)
    _refuse_foreign(paths, "`force` replaces only a run folder that groupdistil made")
    if not (paths.final.exists() or paths.last.exists()):
        return OutPlan(paths, paths.root, clear=True)
    staged = RunPaths(paths.staging)
    if staged.root.exists():  # left by a --force run that was killed or stopped: ours, nobody else's
        _refuse_foreign(staged, "groupdistil writes a replacing run there")
        if cfg.resume and staged.last.is_file():  # `force` and `resume`: continue that replacing run
            check_resume_options(cfg, staged.last)
            return OutPlan(paths, staged.root, resume=True)
    return OutPlan(paths, staged.root, clear=True)


def _refuse_foreign(paths: RunPaths, why: str) -> None:
    problem = paths.foreign()
    if problem is not None:
        raise UserError(f"`out` {paths.root}: {problem}; {why}")


def _plan(cfg: RunConfig, paths: RunPaths) -> OutPlan:
    if paths.final.exists():
        if cfg.resume:
            return OutPlan(paths, paths.root, finished=True,
                           notice=f"warning: `resume`: the run in {paths.root} is finished (final.json); nothing to do")
        _refuse_finished(paths)
    if paths.last.exists():
        if not cfg.resume:
            raise UserError(f"`out` {paths.root}: holds an unfinished run; pass `resume` to continue or `force`")
        check_resume_options(cfg, paths.last)
        return OutPlan(paths, paths.root, resume=True)
    notice = (f"warning: `resume`: no epoch of a run in {paths.root} has ended (no checkpoints/last.pt); "
              "starting the run from the beginning") if cfg.resume else None
    if paths.is_empty():
        return OutPlan(paths, paths.root, notice=notice)
    _refuse_foreign(paths, "choose a new or empty folder")
    return OutPlan(paths, paths.root, clear=True, notice=notice)


@contextmanager
def holding_out(cfg: RunConfig, plan: OutPlan, echo: Callable[[str], None]) -> Iterator[OutPlan]:
    """Hold the run folder's lock (runs/lock.py) from before :func:`open_out` to after :func:`close_out`.

    Rank 0 takes the lock and plans again under it: a plan that another run made stale since
    :func:`plan_out` (it used the folder meanwhile) is refused rather than acted on. Every rank enters;
    rank 0's refusal reaches them all. Yields the plan.
    """
    held: list[RunLock] = []

    def take() -> OutPlan:
        held.append(RunLock.acquire(plan.paths.root))
        try:
            now = plan_out(cfg)
        except BaseException:
            held.pop().release()
            raise
        if now != plan:
            held.pop().release()
            raise UserError(f"`out` {plan.paths.root}: another run used the folder while this one was starting; "
                            "start again")
        return now

    plan = distributed.on_main(take)
    if held and held[0].notice:
        echo(held[0].notice)
    try:
        yield plan
    finally:
        for lock in held:
            lock.release()


def open_out(plan: OutPlan) -> None:
    """Create (or clear, or reopen) the folder the run writes into, with the marker; rank 0 only."""
    work = RunPaths(plan.work)
    try:
        if plan.clear and work.root.exists():
            shutil.rmtree(work.root)
        work.write_marker()
        if plan.job is not None:
            work.elastic.write_text(plan.job)
    except OSError as e:
        raise StorageError.from_os_error(e.filename or work.root, e) from None


def close_out(plan: OutPlan, ok: bool) -> None:
    """After the run: swap a finished replacing run in, or drop one that failed; rank 0 only."""
    if not plan.replaces:
        return
    if ok:
        _swap_in(plan.paths)
    elif plan.job is None:  # a torchrun job that may restart keeps it: the next attempt continues it
        shutil.rmtree(plan.work, ignore_errors=True)


def _swap_in(paths: RunPaths) -> None:
    # Two renames in one folder; a kill between them is repaired by the next run (_recover_swap).
    if paths.root.exists():
        os.rename(paths.root, paths.aside)
    os.rename(paths.staging, paths.root)
    shutil.rmtree(paths.aside, ignore_errors=True)


def _recover_swap(paths: RunPaths) -> None:
    """Finish a swap that a kill interrupted: the state is then that of a swap done, or never begun."""
    staged, aside = RunPaths(paths.staging), RunPaths(paths.aside)
    staged_finished = staged.final.is_file() and staged.foreign() is None
    if aside.root.is_dir() and aside.foreign() is None:
        if paths.root.exists():
            shutil.rmtree(aside.root)  # only the old run's removal was cut short
        elif not staged_finished:
            os.rename(aside.root, paths.root)
    if staged_finished:
        _swap_in(paths)  # the replacing run had finished; the kill came before its swap


# ---- what a resumed run must keep --------------------------------------------------------------------


#: Settings that a resumed run must keep: each changes the run's trajectory. Data options too, except
#: where the data lives. ``train.batch_size`` (global) and ``train.epochs`` are checked apart.
_KEPT = ("model.name", "train.seed", "train.sampler", "train.select_on", "teacher.combine",
         "teacher.adjust", "teacher.adjust_tau")
_KEPT_SECTIONS = ("objective.", "optim.", "data.")
_MOVABLE = ("data.root", "data.allow_outside_root")


def trajectory_keys() -> list[str]:
    """The config keys that a resumed run must keep (docs/reliability.md)."""
    return [k for k, _ in leaf_fields()
            if (k in _KEPT or k.startswith(_KEPT_SECTIONS)) and k not in _MOVABLE]


def check_resume_options(cfg: RunConfig, last: Path) -> None:
    """Refuse, in one line naming the option and both values, a resume that would change the run."""
    ck = load_checkpoint(last)
    check_resumable(last, ck)
    recorded = ck.get("config") or {}
    if not recorded:
        return  # a checkpoint without its configuration: nothing to compare
    now = cfg.model_dump(mode="json")
    for key in trajectory_keys():
        was = _get(recorded, key)
        if was is not _ABSENT and was != _get(now, key):
            _refuse_change(cfg, key, was, _get(now, key))
    world = distributed.world_size()
    rec_world = int(ck.get("world_size") or world)
    rec_batch = _get(recorded, "train.batch_size", None)
    if rec_batch is not None and rec_batch * rec_world != cfg.train.batch_size * world:
        raise UserError(
            f"`resume`: `train.batch_size` {cfg.train.batch_size} on {world} process(es) differs from the run's "
            f"recorded {rec_batch} on {rec_world} (global batch {rec_batch * rec_world}); keep the global "
            "batch, or start again with `force`")
    started = int(ck["epoch"]) + (1 if ck.get("batches") else 0)  # a mid-epoch checkpoint: within the next one
    if cfg.train.epochs <= started:
        more = " and started the next" if ck.get("batches") else ""
        raise UserError(f"`resume`: `train.epochs` {cfg.train.epochs}: the run in {cfg.out} has completed "
                        f"{int(ck['epoch']) + 1} epochs already{more}")
    rec_epochs = _get(recorded, "train.epochs", cfg.train.epochs)
    if cfg.optim.schedule == "cosine" and rec_epochs != cfg.train.epochs:
        _refuse_change(cfg, "train.epochs", rec_epochs, cfg.train.epochs,
                       "the cosine schedule spans the epochs")


def _refuse_change(cfg: RunConfig, key: str, recorded: Any, now: Any, why: str = "") -> None:
    because = f" ({why})" if why else ""
    raise UserError(f"`resume`: `{key}` is {_show(now)}, the run in {cfg.out} was recorded with "
                    f"{_show(recorded)}{because}; resume with the recorded value, or start again with `force`")


def _show(value: Any) -> str:
    return "none" if value is None else json.dumps(value)


#: What :func:`_get` returns for a key the tree does not hold (None is a value a setting can have).
_ABSENT = object()


def _get(tree: dict[str, Any], key: str, default: Any = _ABSENT) -> Any:
    """The value at a dotted ``key`` of a nested dict, or ``default`` where the tree does not hold it."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node
