"""The training loop: one loop for every objective (objectives differ only in term x aggregation).

``fit`` trains with per-epoch validation, selects the checkpoint with the best validation metric
(worst-group accuracy by default; ties by average accuracy), and writes ``last.pt`` every epoch and
``best.pt`` on improvement, atomically. ``last.pt`` holds everything needed to resume bit for bit on
CPU: model, optimiser, scheduler, objective state (q or lambda), RNG state, epoch, step, best metric.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from groupdistil import distributed, faults
from groupdistil.batchnorm import convert_global_batchnorm
from groupdistil.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from groupdistil.config import DEVICE_PATTERN, OptimConfig, TrainConfig
from groupdistil.data.base import DatasetBundle
from groupdistil.errors import CheckpointError, ConfigError, NumericalError
from groupdistil.evaluation import autocast, evaluate, per_class_error
from groupdistil.loaders import epoch_generator, train_loader
from groupdistil.metrics import GroupMetrics, is_better
from groupdistil.objectives import Objective
from groupdistil.optim import make_optimizer, make_scheduler
from groupdistil.outputs import RunWriter
from groupdistil.teachers import Teacher

log = logging.getLogger("groupdistil")


@dataclass
class FitState:
    """Progress that a checkpoint carries."""

    epoch: int = -1  # last completed epoch
    step: int = 0
    best_metrics: dict[str, Any] | None = None
    best_epoch: int = -1
    skipped_steps: int = 0
    overflow_steps: int = 0  # fp16 steps the grad scaler skipped (gradient overflow)
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FitResult:
    best_epoch: int
    best_metrics: dict[str, Any] | None
    skipped_steps: int
    checkpoint: Path | None


def check_device(name: str) -> torch.device:
    """The device ``name`` stands for (``auto``: CUDA when available, else CPU), checked.

    Every ``--amp`` works on every device: autocast and the fp16 grad scaler exist for CPU and CUDA
    alike (on a CPU without bf16 or fp16 arithmetic they are slow; the runner warns).

    Raises:
        ConfigError: CUDA asked for where there is none, or a GPU index beyond the machine's.
    """
    if not re.fullmatch(DEVICE_PATTERN, name):  # TrainConfig checks it too; fit() may get a raw one
        raise ConfigError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def cpu_has_native(amp: str) -> bool:
    """Whether this CPU computes ``amp`` ("bf16" or "fp16") natively, by oneDNN's test (AVX-512 BF16
    or AMX for bf16; AVX-512 FP16 or AMX-FP16 for fp16). Elsewhere autocast emulates it, slowly."""
    probe = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[amp]
    try:
        return bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def make_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """The gradient scaler of ``--amp``: active for fp16 only (bf16 has float32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def resolve_device(name: str) -> torch.device:
    """:func:`check_device`; under torchrun an unindexed ``cuda`` is this process's GPU (``LOCAL_RANK``,
    set by :func:`groupdistil.distributed.session`): DDP needs the index."""
    device = check_device(name)
    if device.type == "cuda" and device.index is None and distributed.is_distributed():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


def _payload(
    model: nn.Module,
    objective: Objective,
    state: FitState,
    meta: dict[str, Any],
    opt: torch.optim.Optimizer | None = None,
    sched: Any = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, Any]:
    p: dict[str, Any] = {
        **meta,
        "model": _unwrap(model).state_dict(),
        "objective": objective.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "best_metric": state.best_metrics,
        "best_epoch": state.best_epoch,
        "skipped_steps": state.skipped_steps,
        "overflow_steps": state.overflow_steps,
    }
    if opt is not None:
        p.update(optimizer=opt.state_dict(), scheduler=sched.state_dict(), rng=rng_state())
    if scaler is not None and scaler.is_enabled():
        p["scaler"] = scaler.state_dict()  # the loss scale: resuming with a fresh one would change the run
    return p


def _restore(
    path: Path,
    model: nn.Module,
    objective: Objective,
    opt: torch.optim.Optimizer,
    sched: Any,
    scaler: torch.amp.GradScaler,
) -> FitState:
    ck = load_checkpoint(path)
    for key in ("optimizer", "scheduler", "rng", "objective", "epoch", "step"):
        if key not in ck:
            raise CheckpointError(f"{path}: cannot resume: checkpoint lacks {key!r}")
    try:
        _unwrap(model).load_state_dict(ck["model"])
        objective.load_state_dict(ck["objective"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        # A checkpoint of a run without fp16 has no loss scale: the scaler then starts afresh.
        if scaler.is_enabled() and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"{path}: does not match this run's model or objective: {first}") from None
    set_rng_state(ck["rng"])
    return FitState(
        epoch=int(ck["epoch"]),
        step=int(ck["step"]),
        best_metrics=ck.get("best_metric"),
        best_epoch=int(ck.get("best_epoch", -1)),
        skipped_steps=int(ck.get("skipped_steps", 0)),
        overflow_steps=int(ck.get("overflow_steps", 0)),
    )


def weight_names(objective: Objective, bundle: DatasetBundle) -> list[str]:
    """Column names of group_weights.csv: the names of what the objective's weights are over."""
    if objective.weights_over == "classes":
        return list(bundle.grouping.class_names)
    if objective.weights_over == "groups":
        return list(bundle.fit_grouping.group_names)
    return []


def fit(
    model: nn.Module,
    objective: Objective,
    bundle: DatasetBundle,
    *,
    train: TrainConfig,
    optim: OptimConfig,
    teacher: Teacher | None = None,
    out: Path | None = None,
    writer: RunWriter | None = None,
    meta: dict[str, Any] | None = None,
    resume: bool = False,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
) -> FitResult:
    """Train ``model`` with ``objective`` on ``bundle.train``; select on ``bundle.val``.

    Args:
        model: the student (or teacher being trained); returns (B, C) logits.
        objective: called as ``objective(logits, y, g, teacher_logits)``.
        bundle: the dataset (test is never touched here).
        train, optim: loop and optimiser settings.
        teacher: teacher logits provider, required when ``objective.requires_teacher``.
        out: run folder; checkpoints go to ``out/checkpoints``. None trains without writing.
        writer: metrics and group-weight logger for ``out``.
        meta: extra checkpoint fields (model name, class count, config, ...).
        resume: continue from ``out/checkpoints/last.pt``.
    """
    device = resolve_device(train.device)
    if objective.requires_teacher and teacher is None:
        raise ValueError(f"teacher: objective {type(objective).__name__} needs a teacher")
    model.to(device)
    objective.to(device)
    if train.channels_last:
        # Convolutions on NHWC tensors: faster on tensor cores and with oneDNN on CPUs. An online
        # teacher sees the same inputs, so it gets the same layout.
        model.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)
    if distributed.is_distributed() and train.sync_batchnorm:
        # BatchNorm then normalises with the statistics of the global batch, as one process would.
        # torch's SyncBatchNorm is CUDA-only; GlobalBatchNorm does the same with any backend.
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            model = convert_global_batchnorm(model)
    opt = make_optimizer(model.parameters(), optim)
    sched = make_scheduler(opt, optim, train.epochs)
    scaler = make_scaler(device, train.amp)
    ckpt_dir = Path(out) / "checkpoints" if out is not None else None
    state = FitState()
    if resume and ckpt_dir is not None:
        state = _restore(ckpt_dir / "last.pt", model, objective, opt, sched, scaler)
        echo(f"resumed from {ckpt_dir / 'last.pt'} after epoch {state.epoch + 1}")
    net: nn.Module = model
    if distributed.is_distributed():
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if train.compile:
        net = torch.compile(net)
    train_counts = bundle.group_counts("train")
    meta = dict(meta or {})
    for epoch in range(state.epoch + 1, train.epochs):
        train_metrics = _train_epoch(
            net, objective, bundle, teacher, opt, scaler, state, epoch, train, device, writer, quiet,
            last_good=str(ckpt_dir / "last.pt") if ckpt_dir is not None and state.epoch >= 0 else "none",
        )
        with warnings.catch_warnings():
            # An epoch whose steps were all skipped as non-finite still advances the schedule.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            sched.step()
        distributed.broadcast_buffers(model)  # every rank validates (and rank 0 saves) the same model
        val_metrics = evaluate(
            model, bundle.val, bundle.grouping, train_group_counts=train_counts,
            batch_size=max(train.batch_size, 256), device=device, amp=train.amp, quiet=quiet,
            desc=f"val {epoch + 1}",
        )
        if writer is not None:
            writer.log_epoch(epoch, "train", train_metrics)
            writer.log_epoch(epoch, "val", val_metrics)
        improved = is_better(val_metrics, state.best_metrics, train.select_on)
        state.epoch = epoch
        if improved:
            state.best_metrics, state.best_epoch = val_metrics, epoch
            if ckpt_dir is not None and distributed.is_main_process():
                save_checkpoint(ckpt_dir / "best.pt", _payload(model, objective, state, meta))
        if ckpt_dir is not None and distributed.is_main_process():
            save_checkpoint(ckpt_dir / "last.pt", _payload(model, objective, state, meta, opt, sched, scaler))
            faults.point(f"epoch:{epoch}")
        if not quiet and distributed.is_main_process():
            echo(_epoch_line(epoch, train.epochs, train_metrics, val_metrics, train.select_on, improved))
    distributed.barrier()  # the other ranks may read the checkpoints rank 0 has just written
    return FitResult(
        state.best_epoch,
        state.best_metrics,
        state.skipped_steps,
        ckpt_dir / "best.pt" if ckpt_dir is not None else None,
    )


def _train_epoch(
    net: nn.Module,
    objective: Objective,
    bundle: DatasetBundle,
    teacher: Teacher | None,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    state: FitState,
    epoch: int,
    train: TrainConfig,
    device: torch.device,
    writer: RunWriter | None,
    quiet: bool,
    last_good: str,
) -> dict[str, Any]:
    net.train()
    objective.train()
    # Training sees the training groups (inferred ones when data.train_groups says so); validation
    # and test keep the data's groups.
    grouping = bundle.fit_grouping
    metrics = GroupMetrics(grouping.n_groups, bundle.n_classes)
    loader = train_loader(
        bundle.fit_train, train.batch_size, seed=train.seed, epoch=epoch, sampler=train.sampler,
        n_groups=grouping.n_groups, num_workers=train.num_workers, pin_memory=device.type == "cuda",
    )
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{train.epochs}", leave=False,
               disable=quiet or not distributed.is_main_process())
    # The loss scale before the next step: the scaler lowers it exactly when it skips a step.
    scale = scaler.get_scale() if scaler.is_enabled() else 0.0
    for x, y, g, idx in bar:
        x = x.to(device, non_blocking=True)
        if train.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y, g = y.to(device, non_blocking=True), g.to(device, non_blocking=True)
        # The objective's state before this step's update of q or lambda, for a step that is then
        # skipped: a non-finite loss, or a gradient overflow under fp16.
        keep = train.skip_nonfinite or scaler.is_enabled()
        snapshot = {k: v.clone() for k, v in objective.state_dict().items()} if keep else None
        with autocast(device, train.amp):
            logits = net(x)
            # An online teacher runs in the same precision as the student; the objective upcasts both
            # and keeps the DRO math in float32.
            t = teacher(x, idx, logits) if objective.requires_teacher and teacher is not None else None
        out = objective(logits.float(), y, g, t)
        # Counts batches, skipped ones included.
        if faults.poisoned(state.step + state.skipped_steps + state.overflow_steps + 1):
            out = out._replace(loss=out.loss * float("nan"))
        loss_value = float(out.loss.detach())
        if not math.isfinite(loss_value) or _nonfinite_teacher(t):
            if not train.skip_nonfinite:
                raise NumericalError(
                    f"non-finite loss at step {state.step + 1} (epoch {epoch + 1}); last good checkpoint: "
                    f"{last_good}; lower the learning rate or pass --skip-nonfinite"
                )
            objective.load_state_dict(snapshot)  # an update from a NaN loss would poison q
            opt.zero_grad(set_to_none=True)
            state.skipped_steps += 1
            continue
        opt.zero_grad(set_to_none=True)
        scaler.scale(out.loss).backward()
        scaler.step(opt)
        scaler.update()
        if scaler.is_enabled():
            scale, before = scaler.get_scale(), scale  # one host sync per step
            if scale < before:
                # The scaler found inf/NaN gradients (the same on every rank: DDP has all-reduced
                # them) and skipped the parameter update; undo q's too, so that q and the parameters
                # stay one step of the same trajectory. Routine while the loss scale settles.
                objective.load_state_dict(snapshot)
                state.overflow_steps += 1
                continue
        state.step += 1
        faults.point(f"step:{state.step}")
        if writer is not None and out.weights is not None:
            writer.log_weights(state.step, epoch, out.weights.tolist())
        metrics.update(logits, y, g, loss_value)
        k = objective.validation_every
        if k is not None and state.step % k == 0:
            distributed.broadcast_buffers(net)  # the same model, hence the same lambda, on every rank
            err = per_class_error(
                _unwrap(net), bundle.val, bundle.n_classes,
                generator=epoch_generator(train.seed, state.step), device=device,
            )
            objective.update_from_validation(err)
    metrics.all_reduce()
    summary = metrics.summary(grouping, bundle.fit_group_counts())
    summary["skipped_steps"] = state.skipped_steps
    summary["overflow_steps"] = state.overflow_steps
    return summary


def _nonfinite_teacher(t: torch.Tensor | None) -> bool:
    """Whether any rank's teacher logits are non-finite. The loss is global already, but the logits are
    per rank: a step skipped by one rank alone would leave the others waiting in DDP's all-reduce."""
    if t is None:
        return False
    bad = torch.tensor([float(not bool(torch.isfinite(t).all()))])
    return bool(distributed.all_reduce_sum(bad)[0] > 0)


def _pct(v: float | None) -> str:
    return "  n/a" if v is None else f"{100 * v:5.1f}"


def _epoch_line(
    epoch: int, epochs: int, tr: dict[str, Any], va: dict[str, Any], select_on: str, improved: bool
) -> str:
    loss = tr.get("loss")
    loss_s = "n/a" if loss is None else f"{loss:.4f}"
    return (
        f"epoch {epoch + 1:3d}/{epochs}  loss {loss_s}  train acc {_pct(tr['avg_acc'])}  "
        f"val avg {_pct(va['avg_acc'])}  worst-group {_pct(va['worst_group_acc'])}"
        + ("  *best" if improved else "")
    )
