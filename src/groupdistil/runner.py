"""One experiment from a :class:`RunConfig`: data -> model -> teacher -> objective -> fit -> final.json."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from groupdistil import distributed
from groupdistil.checkpoint import load_checkpoint
from groupdistil.config import RunConfig, TrainConfig, dump_yaml
from groupdistil.data import DatasetBundle, load_dataset
from groupdistil.engine import check_device, cpu_has_native, fit, resolve_device, weight_names
from groupdistil.errors import CheckpointError, UserError
from groupdistil.evaluation import evaluate
from groupdistil.models import create_model
from groupdistil.objectives import Objective, build_objective, objective_options
from groupdistil.outputs import RunWriter
from groupdistil.pseudogroups import (
    PSEUDO_GROUPS_CSV,
    InferredGroups,
    agreement,
    groups_from_model,
    single_group,
    write_assignment,
)
from groupdistil.teachers import LogitCache, Teacher, TeacherMember, cached_or_computed, teacher_class_weights

Echo = Callable[[str], None]


def seed_everything(seed: int) -> None:
    """Seed every RNG the run uses and make CPU kernels deterministic."""
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def default_cache_dir() -> Path:
    env = os.environ.get("GROUPDISTIL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "groupdistil" / "teacher-logits"


#: Written into the run folder by a torchrun job that may restart its workers (``--max-restarts``):
#: the job's id, so that a restarted attempt knows the folder is its own and continues the run.
ELASTIC_MARKER = ".torchelastic-run-id"


def _elastic_job() -> tuple[str, int] | None:
    """(run id, restart count) under a torchrun launch that may restart its workers, else None."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if not run_id or int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) <= 0:
        return None
    return run_id, distributed.restart_count()


def _refuse_finished(out: Path) -> None:
    if (out / "final.json").exists():
        raise UserError(f"--out {out}: holds a finished run; pass --force to overwrite it")


def _clean_tmp(out: Path) -> None:
    # Temporary files of a write that a kill interrupted: never renamed, never read; remove them.
    for tmp in (out / "checkpoints").glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def prepare_out(cfg: RunConfig) -> bool:
    """Check the output folder; returns True when the run resumes.

    A finished run (final.json present) is never overwritten without ``force``; an unfinished one
    needs ``resume`` or ``force``. Under DDP only rank 0 calls it (:func:`run_experiment`).

    When torchrun restarts the workers of a job (``--max-restarts``) after a failure, the restarted
    attempt finds the job's id in the folder (:data:`ELASTIC_MARKER`) and continues from
    ``last.pt`` as if ``--resume`` had been given, or, when the failed attempt had not saved a
    checkpoint yet, starts the run again in a cleared folder. A folder of another run or job is
    treated as usual.
    """
    out = Path(cfg.out)
    job = _elastic_job()
    marker = out / ELASTIC_MARKER
    if job is not None and job[1] > 0 and marker.is_file() and marker.read_text() == job[0]:
        _refuse_finished(out)
        if (out / "checkpoints" / "last.pt").is_file():
            _clean_tmp(out)
            return True
        shutil.rmtree(out)
        resume = False
    else:
        resume = _check_out(cfg, out)
    if job is not None:
        out.mkdir(parents=True, exist_ok=True)
        marker.write_text(job[0])
    return resume


def _check_out(cfg: RunConfig, out: Path) -> bool:
    if cfg.force and out.exists():
        shutil.rmtree(out)
        return False
    _refuse_finished(out)
    if cfg.resume:
        if not (out / "checkpoints" / "last.pt").is_file():
            raise UserError(
                f"--resume: {out / 'checkpoints' / 'last.pt'} not found (a run killed before its first epoch "
                "ended has nothing to resume: start it again without --resume, with --force)"
            )
        _clean_tmp(out)
        return True
    if (out / "checkpoints" / "last.pt").exists():
        raise UserError(f"--out {out}: holds an unfinished run; pass --resume to continue or --force")
    return False


def model_from_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by groupdistil and load its weights (``weights_only=True``)."""
    ck = load_checkpoint(path)
    try:
        model = create_model(
            ck["model_name"], num_classes=int(ck["num_classes"]),
            in_channels=int(ck.get("in_channels", 3)), input_shape=tuple(ck.get("input_shape") or ()) or None,
        )
        model.load_state_dict(ck["model"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: weights do not fit model {ck['model_name']!r}: {first}") from None
    return model.to(device).eval(), ck


def build_objective_for(cfg: RunConfig, bundle: DatasetBundle) -> Objective:
    """The configured objective, with the dataset's facts; options it does not take are errors."""
    method = cfg.objective.method
    options = cfg.objective.options()
    try:
        allowed = objective_options(method)
    except ValueError as e:
        raise UserError(f"--method: {e}".replace("objective: ", "")) from None
    for key in options:
        if key not in allowed:
            flag = "--" + key.replace("_", "-")
            takes = f"its options: {', '.join(allowed)}" if allowed else "it takes no options"
            raise UserError(f"{flag}: does not apply to method {method} ({takes})")
    counts = bundle.fit_group_counts()
    try:
        return build_objective(
            method, n_groups=bundle.fit_grouping.n_groups, n_classes=bundle.n_classes,
            group_counts=counts.float(), class_prior=bundle.class_prior(), **options,
        )
    except ValueError as e:
        raise UserError(f"objective {method}: {e}") from None


#: Objectives whose aggregation uses the training groups.
GROUP_METHODS = ("reweight", "jtt", "group-dro", "groupdistil")


def _group_model(cfg: RunConfig) -> Path:
    """The checkpoint whose outputs define inferred groups: --group-reference, else the one teacher."""
    source = cfg.data.train_groups
    if cfg.data.group_reference is not None:
        return cfg.data.group_reference
    if len(cfg.teacher.checkpoints) == 1:
        return cfg.teacher.checkpoints[0]
    if not cfg.teacher.checkpoints:
        raise UserError(f"--train-groups {source}: needs a teacher (--teacher) or --group-reference CKPT")
    raise UserError(f"--train-groups {source}: with {len(cfg.teacher.checkpoints)} teachers, name the model "
                    "that defines the groups with --group-reference")


def training_groups(
    cfg: RunConfig, bundle: DatasetBundle, device: torch.device, echo: Echo
) -> tuple[DatasetBundle, InferredGroups | None]:
    """The bundle with the training groups of ``data.train_groups``, and the inferred groups (None
    for ``labels``). Rank 0 infers them (through the cache) and every rank receives the same ids."""
    source, method = cfg.data.train_groups, cfg.objective.method
    if method == "jtt" and source != "teacher-errors":
        raise UserError("--method jtt: needs --train-groups teacher-errors (the error set of --group-reference)")
    if source == "labels":
        return bundle, None
    names = bundle.grouping.class_names
    if source == "none":
        if method in GROUP_METHODS:
            raise UserError(f"--train-groups none: method {method} needs training groups "
                            "(labels, teacher-errors or teacher-clusters)")
        inferred, status, path = single_group(bundle.train.y, names), "off", None
    else:
        path = _group_model(cfg)

        def infer() -> tuple[InferredGroups, str]:
            model, ck = model_from_checkpoint(path, device)
            if int(ck["num_classes"]) != bundle.n_classes:
                raise UserError(f"--group-reference {path}: has {ck['num_classes']} classes, the dataset has "
                                f"{bundle.n_classes}")
            cache = LogitCache(cfg.teacher.cache_dir or default_cache_dir()) if cfg.teacher.cache else None
            return groups_from_model(model, bundle.train, source, names, cache=cache, clusters=cfg.data.clusters,
                                     seed=cfg.train.seed, device=device)

        inferred, status = distributed.on_main(infer)
    echo(f"training groups: {inferred.description}" + (f" (from {path}, cache {status})" if path else ""))
    return bundle.with_train_groups(inferred.grouping, inferred.ids), inferred


def group_report(out: Path, bundle: DatasetBundle, inferred: InferredGroups) -> dict[str, Any]:
    """Write ``pseudo_groups.csv`` and return final.json's ``train_groups``: what the groups are and,
    where the data has groups of its own, how they agree with them."""
    y = bundle.train.y
    write_assignment(out / PSEUDO_GROUPS_CSV, inferred, y)
    g = bundle.grouping
    info: dict[str, Any] = {
        "source": inferred.source, "description": inferred.description,
        "group_names": list(inferred.grouping.group_names),
        "counts": torch.bincount(inferred.ids, minlength=inferred.grouping.n_groups).tolist(),
    }
    if g.group_names != g.class_names:  # the data knows groups beyond the classes
        info["true_group_names"] = list(g.group_names)
        info.update(agreement(inferred.ids, bundle.train.g, inferred.grouping.n_groups, g.n_groups))
    return info


def build_teacher(
    cfg: RunConfig, bundle: DatasetBundle, objective: Objective, device: torch.device, echo: Echo
) -> Teacher | None:
    """Load the teacher checkpoint(s), check them against the data, and set up the logit cache."""
    tc = cfg.teacher
    if not objective.requires_teacher:
        if tc.checkpoints:
            echo(f"note: method {cfg.objective.method} uses no teacher; --teacher is ignored")
        return None
    if not tc.checkpoints:
        raise UserError(f"--teacher: method {cfg.objective.method} needs a teacher checkpoint")
    use_cache = tc.cache and not bundle.train.has_random_augmentation
    cache = LogitCache(tc.cache_dir or default_cache_dir())

    def member(path: Path, adjust: str) -> TeacherMember:
        model, ck = model_from_checkpoint(path, device)
        if int(ck["num_classes"]) != bundle.n_classes:
            raise UserError(
                f"--teacher {path}: has {ck['num_classes']} classes, the dataset has {bundle.n_classes}"
            )
        lam = teacher_class_weights(ck)
        if adjust == "weighted" and lam is None:
            raise UserError(f"--teacher-adjust weighted: {path} has no class weights (not a robust teacher)")
        m = TeacherMember(model, adjust, tc.adjust_tau, lam)
        if use_cache:
            # Rank 0 fills the cache, then the other ranks read the same file.
            m.cached, status = distributed.main_first(lambda: cached_or_computed(
                model, bundle.train.without_augmentation(), cache, bundle.n_classes,
                batch_size=256, device=device,
            ))
            echo(f"teacher logits for {path}: cache {status} ({cache.directory})")
        return m

    members = [member(p, tc.adjust) for p in tc.checkpoints]
    reference = member(tc.reference, "none") if tc.reference is not None else None
    if not use_cache:
        why = "the training view has random augmentation" if tc.cache else "--no-teacher-cache"
        echo(f"teacher logits: computed online ({why})")
    return Teacher(
        members, bundle.class_prior(), combine=tc.combine, reference=reference,
        temperature=getattr(objective, "temperature", 1.0),
    ).to(device)


def run_experiment(cfg: RunConfig, echo: Echo = print) -> dict[str, Any]:
    """Run one experiment end to end; returns the contents of final.json."""
    # Checked before the run folder is touched: a bad --device writes nothing. Rank 0 alone
    # checks (and with --force empties) the folder; every rank gets its answer or error.
    distributed.on_main(lambda: check_device(cfg.train.device))
    resume = distributed.on_main(lambda: prepare_out(cfg))
    device = resolve_device(cfg.train.device)
    if cfg.train.amp != "none" and device.type == "cpu" and not cpu_has_native(cfg.train.amp):
        isa = {"bf16": "AVX-512 BF16 or AMX", "fp16": "AVX-512 FP16 or AMX-FP16"}[cfg.train.amp]
        echo(f"warning: --amp {cfg.train.amp} on a CPU without {cfg.train.amp} instructions ({isa}) runs many "
             "times slower than float32; use --amp none here")
    seed_everything(cfg.train.seed)
    bundle = load_dataset(cfg.data)
    for w in bundle.warnings:
        echo(f"warning: {w}")
    bundle, inferred = training_groups(cfg, bundle, device, echo)
    objective = build_objective_for(cfg, bundle)
    teacher = build_teacher(cfg, bundle, objective, device, echo)
    train_cfg = selection_settings(cfg, echo)
    seed_everything(cfg.train.seed)  # the model's initialisation does not depend on teacher loading
    in_shape = tuple(bundle.input_shape)
    model = create_model(
        cfg.model.name, num_classes=bundle.n_classes, in_channels=in_shape[0],
        input_shape=in_shape, weights=cfg.model.weights,
    )
    meta = {
        "model_name": cfg.model.name, "num_classes": bundle.n_classes, "in_channels": in_shape[0],
        "input_shape": list(in_shape), "class_names": list(bundle.grouping.class_names),
        "group_names": list(bundle.grouping.group_names), "config": cfg.model_dump(mode="json"),
    }
    writer = RunWriter(cfg.out, weight_names(objective, bundle))
    try:
        writer.start(dump_yaml(cfg), resume_epoch=_resume_epoch(cfg) if resume else None)
        groups_info = (distributed.on_main(lambda: group_report(Path(cfg.out), bundle, inferred))
                       if inferred is not None else None)
        result = fit(
            model, objective, bundle, train=train_cfg, optim=cfg.optim, teacher=teacher, out=cfg.out,
            writer=writer, meta=meta, resume=resume, quiet=cfg.quiet, echo=echo,
        )
        best, _ = model_from_checkpoint(Path(cfg.out) / "checkpoints" / "best.pt", device)
        counts = bundle.group_counts("train")
        splits = {
            name: evaluate(best, bundle.splits[name], bundle.grouping, train_group_counts=counts,
                           batch_size=max(cfg.train.batch_size, 256), device=device, quiet=cfg.quiet)
            for name in ("train", "val", "test")
        }
        final = {
            "name": cfg.label, "method": cfg.objective.method, "role": cfg.role,
            "dataset": cfg.data.dataset, "seed": cfg.train.seed, "model": cfg.model.name,
            "teacher": ",".join(str(p) for p in cfg.teacher.checkpoints) if teacher is not None else None,
            "options": cfg.objective.options(), "selected_epoch": result.best_epoch,
            "selection_metric": train_cfg.select_on, "skipped_steps": result.skipped_steps,
            "splits": splits, "val_groups": cfg.data.val_groups,
            **({"train_groups": groups_info} if groups_info is not None else {}),
        }
        writer.finish(final)
    finally:
        writer.close()
    return final


def selection_settings(cfg: RunConfig, echo: Echo) -> TrainConfig:
    """The training settings with the selection rule: ``--val-groups none`` selects on worst-class
    accuracy instead of worst-group accuracy (SubpopBench's rule without attributes)."""
    if cfg.data.val_groups == "none" and cfg.train.select_on == "worst_group_acc":
        echo("validation groups not used (--val-groups none): selecting on validation worst-class accuracy")
        return cfg.train.model_copy(update={"select_on": "worst_class_acc"})
    return cfg.train


def _resume_epoch(cfg: RunConfig) -> int:
    return int(load_checkpoint(Path(cfg.out) / "checkpoints" / "last.pt")["epoch"])
