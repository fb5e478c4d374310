"""One experiment from a :class:`RunConfig`: data -> model -> teacher -> objective -> fit -> final.json."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.utils.deterministic
from torch import nn

from groupdistil._validate import check_writable_folder
from groupdistil.calibration import Calibration, calibration_report, fit_calibration
from groupdistil.checkpoint import file_sha256, load_checkpoint, load_state_dict_checked
from groupdistil.config import RunConfig, TrainConfig, dump_yaml
from groupdistil.data import DatasetBundle, load_dataset
from groupdistil.errors import CheckpointError, NumericalError, UserError, first_line
from groupdistil.loaders import HeldInputs, default_workers
from groupdistil.models import create_model
from groupdistil.objectives import OBJECTIVES, Objective, build_objective, objective_options
from groupdistil.parallel import distributed
from groupdistil.pseudogroups import (
    InferredGroups,
    agreement,
    groups_from_model,
    single_group,
    write_assignment,
)
from groupdistil.runs.final import read_final
from groupdistil.runs.outputs import RunWriter
from groupdistil.runs.rundir import OutPlan, RunPaths, close_out, holding_out, open_out, plan_out
from groupdistil.teachers import (
    CachedPass,
    LogitCache,
    Teacher,
    TeacherMember,
    cached_or_computed,
    compute_logits,
    teacher_class_weights,
)
from groupdistil.training.devices import check_device, cpu_has_native, resolve_device
from groupdistil.training.engine import FitResult, fit, held_splits, train_holder, weight_names
from groupdistil.training.evaluation import evaluate_splits
from groupdistil.training.preempt import Preempted
from groupdistil.training.timing import RunClock

Echo = Callable[[str], None]


def seed_everything(seed: int, compiled: bool = False, deterministic: bool = True) -> None:
    """Seed every RNG the run uses and, with ``deterministic``, make the kernels deterministic (and, for
    a ``compiled`` run, inductor's generated kernels); without, torch's defaults."""
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS is deterministic only with a fixed workspace, read when its first handle is made (no
        # CUDA matmul has run yet); a value the user set is kept. Without it torch only warns.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # With deterministic algorithms torch also fills the memory of every new tensor, so that a kernel
    # reading memory it never wrote would read the same values each time: a pass per allocation (3% of
    # a ResNet-20 step on a CPU; benchmarks/results/perf-notes.md) to guard against a bug that no
    # kernel of a run has; the tests compare re-runs byte for byte.
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    # torch.use_deterministic_algorithms also sets inductor's flag, and importing inductor's config for
    # it costs seconds of every run's start; only a torch.compile run reads that flag.
    set_kernels = getattr(torch._C, "_set_deterministic_algorithms", None)
    if compiled or set_kernels is None:
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
    else:
        set_kernels(deterministic, warn_only=True)


def default_cache_dir() -> Path:
    env = os.environ.get("GROUPDISTIL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "groupdistil" / "teacher-logits"


def record_pretrained(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the SHA-256 of its ``--pretrained`` file in ``model.pretrained_sha256`` (written to
    config.yaml), so a run names the exact weights it started from; a recorded hash that differs from
    the file's is an error (the file changed since)."""
    path = cfg.model.pretrained
    if path is None:
        return cfg
    if not Path(path).is_file():
        raise CheckpointError(f"`model.pretrained` {path}: file not found")
    digest = file_sha256(Path(path))
    expected = cfg.model.pretrained_sha256
    if expected is not None and expected != digest:
        raise CheckpointError(f"`model.pretrained` {path}: its SHA-256 {digest} differs from the recorded "
                              f"model.pretrained_sha256 {expected}")
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained_sha256": digest})})


def check_output_folders(cfg: RunConfig) -> None:
    """The folders a run writes (``out``, the teacher-logit cache) can be written: one line if not."""
    check_writable_folder(cfg.out, "`out`")
    if cfg.teacher.checkpoints and cfg.teacher.cache:
        check_writable_folder(cfg.teacher.cache_dir or default_cache_dir(), "`teacher.cache_dir`")


def model_from_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by groupdistil and load its weights (``weights_only=True``)."""
    ck = load_checkpoint(path)
    try:
        model = create_model(
            ck["model_name"], num_classes=int(ck["num_classes"]),
            in_channels=int(ck.get("in_channels", 3)), input_shape=tuple(ck.get("input_shape") or ()) or None,
        )
        load_state_dict_checked(model, ck["model"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: weights do not fit model {ck['model_name']!r}: {first_line(e)}") from None
    return model.to(device).eval(), ck


def check_fits_data(
    model: nn.Module, ck: dict[str, Any], bundle: DatasetBundle, path: Path, key: str | None = None
) -> None:
    """One line, before any use, when a saved model does not fit the dataset: another number of classes
    (a UserError naming ``key`` and the file) or another input shape (a CheckpointError naming both
    shapes, found by one forward pass of a zero input, instead of a RuntimeError later)."""
    if int(ck["num_classes"]) != bundle.n_classes:
        where = f"{key} {path}" if key else str(path)
        raise UserError(f"{where}: has {ck['num_classes']} classes, the dataset has {bundle.n_classes}")
    shape = tuple(bundle.input_shape)
    device = next(model.parameters(), torch.empty(0)).device
    try:
        with torch.no_grad():
            model(torch.zeros((1, *shape), device=device))
    except RuntimeError as e:
        made = tuple(ck.get("input_shape") or ()) or "unrecorded"
        raise CheckpointError(f"{path}: made for inputs of shape {made}, the dataset's are {shape} "
                              f"({first_line(e)})") from None


def build_objective_for(cfg: RunConfig, bundle: DatasetBundle) -> Objective:
    """The configured objective, with the dataset's facts; options it does not take are errors."""
    method = cfg.objective.method
    options = cfg.objective.options()
    try:
        allowed = objective_options(method)
    except ValueError as e:
        raise UserError(f"`objective.method`: {e}".replace("objective: ", "")) from None
    for key in options:
        if key not in allowed:
            takes = f"its options: {', '.join(allowed)}" if allowed else "it takes no options"
            raise UserError(f"`objective.{key}`: does not apply to method {method} ({takes})")
    counts = bundle.fit_group_counts()
    try:
        return build_objective(
            method, n_groups=bundle.fit_grouping.n_groups, n_classes=bundle.n_classes,
            group_counts=counts.float(), class_prior=bundle.class_prior(), **options,
        )
    except ValueError as e:
        raise UserError(f"objective {method}: {e}") from None


def _group_model(cfg: RunConfig) -> Path:
    """The checkpoint whose outputs define inferred groups: `data.group_reference`, else the one teacher."""
    source = cfg.data.train_groups
    if cfg.data.group_reference is not None:
        return cfg.data.group_reference
    if len(cfg.teacher.checkpoints) == 1:
        return cfg.teacher.checkpoints[0]
    if not cfg.teacher.checkpoints:
        raise UserError(f"`data.train_groups` {source}: needs a teacher (`teacher.checkpoints`) or "
                        "`data.group_reference` CKPT")
    raise UserError(f"`data.train_groups` {source}: with {len(cfg.teacher.checkpoints)} teachers, name the model "
                    "that defines the groups with `data.group_reference`")


def training_groups(
    cfg: RunConfig, bundle: DatasetBundle, device: torch.device, echo: Echo
) -> tuple[DatasetBundle, InferredGroups | None]:
    """The bundle with the training groups of ``data.train_groups``, and the inferred groups (None
    for ``labels``). Rank 0 infers them (through the cache) and every rank receives the same ids."""
    source, method = cfg.data.train_groups, cfg.objective.method
    if method == "jtt" and source != "teacher-errors":
        raise UserError("`objective.method` jtt: needs `data.train_groups` teacher-errors (the error set of "
                        "`data.group_reference`)")
    if source == "labels":
        return bundle, None
    names = bundle.grouping.class_names
    if source == "none":
        if method in OBJECTIVES and OBJECTIVES[method].uses_groups:
            raise UserError(f"`data.train_groups` none: method {method} needs training groups "
                            "(labels, teacher-errors or teacher-clusters)")
        inferred, status, path = single_group(bundle.train.y, names), "off", None
    else:
        path = _group_model(cfg)

        def infer() -> tuple[InferredGroups, str]:
            model, ck = model_from_checkpoint(path, device)
            check_fits_data(model, ck, bundle, path, "`data.group_reference`")
            cache = LogitCache(cfg.teacher.cache_dir or default_cache_dir()) if cfg.teacher.cache else None
            return groups_from_model(model, bundle.train, source, names, cache=cache, clusters=cfg.data.clusters,
                                     seed=cfg.train.seed, device=device)

        inferred, status = distributed.on_main(infer)
    echo(f"training groups: {inferred.description}" + (f" (from {path}, cache {status})" if path else ""))
    return bundle.with_train_groups(inferred.grouping, inferred.ids), inferred


def group_report(paths: RunPaths, bundle: DatasetBundle, inferred: InferredGroups) -> dict[str, Any]:
    """Write ``pseudo_groups.csv`` and return final.json's ``train_groups``: what the groups are and,
    where the data has groups of its own, how they agree with them."""
    y = bundle.train.y
    write_assignment(paths.pseudo_groups, inferred, y)
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
    cfg: RunConfig, bundle: DatasetBundle, objective: Objective, device: torch.device, echo: Echo,
    clock: RunClock | None = None, held: HeldInputs | None = None,
) -> Teacher | None:
    """Load the teacher checkpoint(s), check them against the data, and set up the logit cache.

    The pass over the training set runs as the training loop's data does (its workers, batch size,
    precision and memory layout); ``clock`` records its time and the images it computed. ``held``:
    the training run's holder of the training split's decoded inputs, which a pass fills or reads
    (:func:`~groupdistil.training.engine.train_holder`)."""
    tc = cfg.teacher
    if not objective.requires_teacher:
        if tc.checkpoints:
            echo(f"note: method {cfg.objective.method} uses no teacher; `teacher.checkpoints` is ignored")
        return None
    if not tc.checkpoints:
        raise UserError(f"`teacher.checkpoints`: method {cfg.objective.method} needs a teacher checkpoint")
    use_cache = tc.cache and not bundle.train.has_random_augmentation
    cache = LogitCache(tc.cache_dir or default_cache_dir())
    reports: list[dict[str, Any]] = []

    def member(path: Path, adjust: str) -> TeacherMember:
        model, ck = model_from_checkpoint(path, device)
        check_fits_data(model, ck, bundle, path, "`teacher.checkpoints`")
        lam = teacher_class_weights(ck)
        if adjust == "weighted" and lam is None:
            raise UserError(f"`teacher.adjust` weighted: {path} has no class weights (not a robust teacher)")
        m = TeacherMember(model, adjust, tc.adjust_tau, lam)
        if tc.calibrate != "none":
            m.calibration, info = _calibrate(tc.calibrate, model, ck, path, bundle, device)
            reports.append(info)
            echo(f"teacher {path}: calibrated by {tc.calibrate}; validation NLL "
                 f"{info['val']['nll']['before']:.4f} -> {info['val']['nll']['after']:.4f}")
        if use_cache:
            m.cached = _teacher_pass(cfg, model, bundle, cache, device, clock or RunClock(), path, echo, held)
        return m

    members = [member(p, tc.adjust) for p in tc.checkpoints]
    reference = member(tc.reference, "none") if tc.reference is not None else None
    if not use_cache:
        why = "the training view has random augmentation" if tc.cache else "`teacher.cache` is off"
        echo(f"teacher logits: computed online ({why})")
    teacher = Teacher(
        members, bundle.class_prior(), combine=tc.combine, reference=reference,
        temperature=getattr(objective, "temperature", 1.0),
    ).to(device)
    teacher.calibration_report = reports
    return teacher


def _teacher_pass(
    cfg: RunConfig, model: nn.Module, bundle: DatasetBundle, cache: LogitCache, device: torch.device,
    clock: RunClock, path: Path, echo: Echo, held: HeldInputs | None = None,
) -> torch.Tensor:
    """(N, C) a teacher's logits on the training split, from the cache or computed (and stored) at the
    training loader's speed: its workers, batch size, ``train.amp`` and ``train.channels_last``; the
    inputs it decodes go to ``held`` (or come from it, when an earlier teacher's pass filled it)."""
    tr, train = cfg.train, bundle.train.without_augmentation()

    def compute() -> CachedPass:
        return cached_or_computed(
            model, train, cache, bundle.n_classes, device=device, batch_size=max(tr.batch_size, 256),
            num_workers=default_workers(train, tr.num_workers), amp=tr.amp, channels_last=tr.channels_last,
            held=held,
        )

    with clock.phase("teacher_pass"):
        # Rank 0 fills the cache, then the other ranks read the same file.
        logits, _, status = distributed.main_first(compute)
    if status == "miss":
        clock.teacher_images += len(train)
    echo(f"teacher logits for {path}: cache {status} ({cache.directory})")
    return logits


def _calibrate(
    method: str, model: nn.Module, ck: dict[str, Any], path: Path, bundle: DatasetBundle, device: torch.device
) -> tuple[Calibration, dict[str, Any]]:
    """A teacher's calibration (fitted on the validation split) and its before/after report.

    The teacher's raw logits on validation and test are computed here, once; the training logits
    (cached or online) stay raw and are calibrated when read, so the cache key is unaffected.
    """
    logits = {name: compute_logits(model, bundle.splits[name], device=device) for name in ("val", "test")}
    cal = fit_calibration(method, logits["val"], bundle.splits["val"].y, ck.get("logit_adjustment"),
                          teacher_class_weights(ck), path)
    return cal, calibration_report(cal, path, logits, bundle.splits, bundle.grouping)


def run_experiment(cfg: RunConfig, echo: Echo = print) -> dict[str, Any]:
    """Run one experiment end to end; returns the contents of final.json.

    Every check that can fail comes before the run folder is touched: what the folder holds (rank 0
    alone looks; every rank gets its answer or error), then the device, data, objective, teacher and
    model. A bad input so writes nothing and deletes nothing; a run that replaces another (``force``)
    is written beside it and swapped in when finished, so a failed one leaves the old run as it was.
    """
    plan = distributed.on_main(lambda: plan_out(cfg))
    final = distributed.on_main(lambda: read_final(plan.paths.final)[1]) if plan.finished else None
    if plan.notice:
        echo(plan.notice)
    if final is not None:
        return final
    distributed.on_main(lambda: check_device(cfg.train.device))
    distributed.on_main(lambda: check_output_folders(cfg))
    cfg = record_pretrained(cfg)
    device = resolve_device(cfg.train.device)
    if cfg.train.amp != "none" and device.type == "cpu" and not cpu_has_native(cfg.train.amp):
        isa = {"bf16": "AVX-512 BF16 or AMX", "fp16": "AVX-512 FP16 or AMX-FP16"}[cfg.train.amp]
        echo(f"warning: `train.amp` {cfg.train.amp} on a CPU without {cfg.train.amp} instructions ({isa}) runs "
             "many times slower than float32; use none here")
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed, cfg.train.compile, cfg.train.deterministic)
    clock = RunClock()
    with clock.phase("data_index"):
        bundle = load_dataset(cfg.data)
    for w in bundle.warnings:
        echo(f"warning: {w}")
    bundle, inferred = training_groups(cfg, bundle, device, echo)
    objective = build_objective_for(cfg, bundle)
    held = train_holder(bundle, cfg.train)  # the training split decoded once, by the first pass over it
    # Timed where the method has a teacher: final.json's teacher_s is 0 without one.
    with clock.phase("teacher") if objective.requires_teacher else contextlib.nullcontext():
        teacher = build_teacher(cfg, bundle, objective, device, echo, clock, held)
    train_cfg = selection_settings(cfg, echo)
    # The model's initialisation does not depend on teacher loading.
    seed_everything(cfg.train.seed, cfg.train.compile, cfg.train.deterministic)
    in_shape = tuple(bundle.input_shape)
    with clock.phase("model_build"):
        model = create_model(
            cfg.model.name, num_classes=bundle.n_classes, in_channels=in_shape[0],
            input_shape=in_shape, weights=cfg.model.weights, pretrained=cfg.model.pretrained,
        )
    with holding_out(cfg, plan, echo) as plan:  # one live process per run folder, until the swap is done
        distributed.on_main(lambda: open_out(plan))
        try:
            final = _fit_and_evaluate(cfg, plan, model, objective, bundle, (teacher, held), device, echo, train_cfg,
                                      inferred, clock)
        except BaseException as e:
            _failed(plan, e)
            raise
        distributed.on_main(lambda: close_out(plan, ok=True))
    return final


def _failed(plan: OutPlan, e: BaseException) -> None:
    """After a run failed: drop a replacing run (``force``), unless it stopped to be resumed (a signal)."""
    if isinstance(e, Preempted):
        return  # its checkpoint is what `resume` continues, in the replacing run's folder too
    if distributed.is_main_process():
        close_out(plan, ok=False)
    if plan.replaces and isinstance(e, NumericalError):
        message = str(e).replace(str(RunPaths(plan.work).last), "none")
        raise NumericalError(f"{message} (`force` dropped the new run; {plan.paths.root} is as it was)") from None


def _fit_and_evaluate(
    cfg: RunConfig, plan: OutPlan, model: nn.Module, objective: Objective, bundle: DatasetBundle,
    teaching: tuple[Teacher | None, HeldInputs | None], device: torch.device, echo: Echo, train_cfg: TrainConfig,
    inferred: InferredGroups | None, clock: RunClock,
) -> dict[str, Any]:
    """Train into ``plan.work`` and write final.json there: the selected checkpoint's metrics per split.

    ``teaching``: the teacher (None without one), and the holder of the training split's decoded
    inputs that the teacher's pass may have filled (:func:`~groupdistil.training.engine.train_holder`).
    ``train_cfg`` is ``cfg.train`` with the selection rule of ``data.val_groups``; ``inferred``, the
    inferred training groups (None for the data's own), written to ``pseudo_groups.csv``; ``clock``,
    the run's start-up phases so far (final.json's ``time``).
    """
    work, (teacher, held) = RunPaths(plan.work), teaching
    in_shape = tuple(bundle.input_shape)
    meta = {
        "model_name": cfg.model.name, "num_classes": bundle.n_classes, "in_channels": in_shape[0],
        "input_shape": list(in_shape), "class_names": list(bundle.grouping.class_names),
        "group_names": list(bundle.grouping.group_names), "config": cfg.model_dump(mode="json"),
        "world_size": distributed.world_size(),
        "logit_adjustment": objective.logit_adjustment(),
    }
    writer = RunWriter(work.root, weight_names(objective, bundle))
    try:
        ck = load_checkpoint(work.last) if plan.resume else None
        writer.start(dump_yaml(cfg), resume_epoch=int(ck["epoch"]) if ck else None,
                     resume_step=int(ck["step"]) if ck and ck.get("batches") else None)
        groups_info = (distributed.on_main(lambda: group_report(work, bundle, inferred))
                       if inferred is not None else None)
        with clock.phase("fit"):
            result = fit(
                model, objective, bundle, train=train_cfg, optim=cfg.optim, teacher=teacher, out=work.root,
                writer=writer, meta=meta, resume=plan.resume, quiet=cfg.quiet, echo=echo, held=held,
            )
        splits = _evaluate_selected(cfg, work, bundle, result, device)
        final = {
            "name": cfg.label, "method": cfg.objective.method, "role": cfg.role,
            "dataset": cfg.data.dataset, "seed": cfg.train.seed, "model": cfg.model.name,
            "teacher": ",".join(str(p) for p in cfg.teacher.checkpoints) if teacher is not None else None,
            "options": cfg.objective.options(), "selected_epoch": result.best_epoch,
            "selection_metric": train_cfg.select_on, "skipped_steps": result.skipped_steps,
            "teacher_calibration": teacher.calibration_report if teacher is not None else [],
            "splits": splits, "val_groups": cfg.data.val_groups,
            **({"train_groups": groups_info} if groups_info is not None else {}),
            "time": clock.record(result.first_batch_s),
            # CPU kernels sum in another order with another thread count or instruction set (AVX2,
            # AVX-512), so a bit-exact re-run needs the same ones (--threads sets the count).
            "environment": {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
                            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                            "deterministic": torch.are_deterministic_algorithms_enabled()},
        }
        writer.finish(final)
    finally:
        writer.close()
    return final


def _evaluate_selected(
    cfg: RunConfig, work: RunPaths, bundle: DatasetBundle, result: FitResult, device: torch.device
) -> dict[str, dict[str, Any]]:
    """The selected checkpoint's metrics on train, val and test (final.json's ``splits``)."""
    best, _ = model_from_checkpoint(work.best, device)
    # One loader for the three splits: its workers start once, not once per split. The splits that
    # training held in memory are not decoded again.
    parts = {name: bundle.splits[name] for name in ("train", "val", "test")}
    batch = max(cfg.train.batch_size, 256)
    workers = max(default_workers(d, cfg.train.num_workers) for d in parts.values())
    return evaluate_splits(
        best, parts, bundle.grouping, train_group_counts=bundle.group_counts("train"), batch_size=batch,
        device=device, quiet=cfg.quiet, num_workers=workers, held=held_splits(result, bundle, batch, workers))


def selection_settings(cfg: RunConfig, echo: Echo) -> TrainConfig:
    """The training settings with the selection rule: ``--val-groups none`` selects on worst-class
    accuracy instead of worst-group accuracy (SubpopBench's rule without attributes)."""
    if cfg.data.val_groups == "none" and cfg.train.select_on == "worst_group_acc":
        echo("validation groups not used (`data.val_groups` none): selecting on validation worst-class accuracy")
        return cfg.train.model_copy(update={"select_on": "worst_class_acc"})
    return cfg.train

