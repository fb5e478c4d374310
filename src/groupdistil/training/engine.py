"""The training loop: one loop for every objective (objectives differ only in term x aggregation).

``fit`` trains with per-epoch validation, selects the checkpoint with the best validation metric
(worst-group accuracy by default; ties by average accuracy), and writes ``last.pt`` every epoch and
``best.pt`` on improvement, atomically. ``last.pt`` holds everything needed to resume bit for bit on
CPU: model, optimiser, scheduler, objective state (q or lambda), RNG state, epoch, step, best metric.
It is also written within an epoch (``train.checkpoint_every``, or a signal: training/preempt.py),
then with the batches of the epoch done and the epoch's metric accumulators, and a resumed run
continues with the next batch.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from groupdistil import faults
from groupdistil.checkpoint import FitState, restore_training, training_payload
from groupdistil.config import OptimConfig, TrainConfig
from groupdistil.data.base import DatasetBundle, GroupedDataset
from groupdistil.errors import CheckpointError
from groupdistil.loaders import (
    EpochLoaders,
    HeldInputs,
    HeldPasses,
    SlicedPass,
    Started,
    default_workers,
    eval_loader,
    holder,
)
from groupdistil.metrics import GroupMetrics, is_better
from groupdistil.objectives import Objective
from groupdistil.parallel import distributed
from groupdistil.parallel.batchnorm import convert_global_batchnorm
from groupdistil.runs.outputs import RunWriter
from groupdistil.runs.rundir import RunPaths
from groupdistil.teachers import Teacher
from groupdistil.training.async_save import CheckpointWriter, cpu_snapshot
from groupdistil.training.devices import make_scaler, resolve_device
from groupdistil.training.evaluation import evaluate
from groupdistil.training.finetune import freeze_backbone, param_groups
from groupdistil.training.optim import make_optimizer, make_scheduler
from groupdistil.training.preempt import Preempted, Watch
from groupdistil.training.timing import EpochClock, time_text
from groupdistil.training.trainer import Trainer

log = logging.getLogger("groupdistil")


@dataclass
class FitResult:
    best_epoch: int
    best_metrics: dict[str, Any] | None
    skipped_steps: int
    checkpoint: Path | None
    first_batch_s: float | None = None  # the wait for the first epoch's first batch (None: no epoch ran)
    # The validation split's batches as validation decoded them (read from files and small enough to
    # keep), for the final evaluation to use instead of decoding them again; else None.
    val_batches: HeldPasses | None = None
    # The training split as training saw it, its inputs in memory as its epochs decoded them, when every
    # one was held (one process, no random augmentation, small enough to keep); else None.
    train_held: GroupedDataset | None = None


#: The validation split's batches of every epoch (``_val_loader``).
ValBatches = DataLoader | SlicedPass | HeldPasses


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
    held: HeldInputs | None = None,
) -> FitResult:
    """Train ``model`` with ``objective`` on ``bundle.train``; select on ``bundle.val``.

    Args:
        model: the student (or teacher being trained); returns (B, C) logits.
        objective: called as ``objective(logits, y, g, teacher_logits)``.
        bundle: the dataset (test is never touched here). train, optim: loop and optimiser settings.
        teacher: teacher logits provider, required when ``objective.requires_teacher``.
        out: run folder; checkpoints go to ``out/checkpoints``. None trains without writing.
        writer, meta: the metrics and group-weight logger for ``out``; extra checkpoint fields.
        resume: continue from ``out/checkpoints/last.pt``.
        held: the training split's :func:`train_holder`, maybe filled by the teacher's pass (default: a new one).
    """
    device = resolve_device(train.device)
    if objective.requires_teacher and teacher is None:
        raise ValueError(f"teacher: objective {type(objective).__name__} needs a teacher")
    model = _place(model, objective, teacher, train, device, str((meta or {}).get("model_name", "model")))
    loaders = _epoch_loaders(bundle, train, device, held)
    first = Started(loaders(0)) if not resume and train.epochs > 0 else None  # see _Progress.first
    opt, sched, scaler = _optimisation(model, optim, train, device)
    saver = _Saver(RunPaths(out) if out is not None else None, dict(meta or {}), (model, objective, opt, sched, scaler))
    state = (_restore(saver.paths.last, bundle, model, objective, opt, sched, scaler, echo)
             if resume and saver.paths is not None else FitState())
    trainer = Trainer(_wrap(model, device, train), objective, opt, scaler, train=train, device=device,
                      state=state, teacher=teacher)
    progress = _Progress(saver, state, Watch(train.checkpoint_every), writer, loaders, first)
    val_loader, first_batch_s = _val_loader(bundle, train, device), None
    trainer.after_batch, trainer.held_validation = progress.after_batch, _as_held(val_loader)
    with saver.writer.settled():  # the last checkpoint is on disk (or whole) before anyone reads it
        for epoch in range(state.epoch + 1, train.epochs):
            clock = EpochClock(device)
            trainer.last_good = saver.last_good(state)
            train_metrics = progress.train_epoch(trainer, bundle, epoch, quiet, clock)
            first_batch_s = clock.first_batch_s if first_batch_s is None else first_batch_s
            _step_schedule(sched)
            with clock.phase("validation"):
                val_metrics = _validate(model, bundle, train, device, epoch, quiet, val_loader)
            improved, times = _end_epoch(epoch, clock, (train_metrics, val_metrics), state, train, writer, saver)
            if not quiet and distributed.is_main_process():
                echo(_epoch_line(epoch, train.epochs, train_metrics, val_metrics, train.select_on, improved, times))
            progress.epoch_end()
    distributed.barrier()  # the other ranks may read the checkpoints rank 0 has just written
    best = saver.paths.best if saver.paths is not None else None
    return FitResult(state.best_epoch, state.best_metrics, state.skipped_steps, best, first_batch_s,
                     *_held(val_loader, loaders))


def _held(
    val_loader: ValBatches, loaders: EpochLoaders
) -> tuple[HeldPasses | None, GroupedDataset | None]:
    """What ``fit`` holds in memory when it ends (FitResult's ``val_batches`` and ``train_held``)."""
    val = val_loader if isinstance(val_loader, HeldPasses) and val_loader.held else None
    return val, loaders.held.dataset() if loaders.held is not None and loaders.held.whole else None


def held_splits(result: FitResult, bundle: DatasetBundle, batch_size: int, num_workers: int) -> dict[str, Any]:
    """The splits ``fit`` decoded and held in memory, as the batches of an evaluation pass over each
    (``evaluate_splits``'s ``held``), cut as a pass over the files with ``batch_size`` and
    ``num_workers`` would cut them, so that no logit moves."""
    held: dict[str, Any] = {}
    if result.val_batches is not None:
        held["val"] = result.val_batches
    if result.train_held is not None:
        # With the data's own groups: training may have used inferred ones.
        train = result.train_held.with_groups(bundle.train.g)
        held["train"] = eval_loader(train, batch_size, num_workers)  # views of the held rows
    return held


def _end_epoch(
    epoch: int, clock: EpochClock, metrics: tuple[dict[str, Any], dict[str, Any]], state: FitState,
    train: TrainConfig, writer: RunWriter | None, saver: _Saver,
) -> tuple[bool, dict[str, Any]]:
    """Log the epoch's train and val lines, advance ``state`` to it, hand its checkpoint to the writer
    and log its time; whether it is the best so far, and its time record.

    The lines come before the checkpoint: a checkpoint of epoch e always comes with e's lines."""
    train_metrics, val_metrics = metrics
    with clock.phase("logs"):
        if writer is not None:
            writer.log_epoch(epoch, "train", train_metrics)
            writer.log_epoch(epoch, "val", val_metrics)
    improved = is_better(val_metrics, state.best_metrics, train.select_on)
    state.epoch = epoch
    if improved:
        state.best_metrics, state.best_epoch = val_metrics, epoch
    with clock.phase("checkpoint"):
        saver.save(state, improved)
    times = clock.record()
    if writer is not None:
        writer.log_time(epoch, times)
    return improved, times


def _restore(
    path: Path, bundle: DatasetBundle, model: nn.Module, objective: Objective, opt: torch.optim.Optimizer,
    sched: Any, scaler: torch.amp.GradScaler, echo: Callable[[str], None],
) -> FitState:
    """The run's state from ``last.pt``, loaded into the objects; says where the run continues."""
    state = restore_training(path, model, objective, opt, sched, scaler)
    if state.epoch_metrics is not None:  # a mid-epoch checkpoint: its metrics must fit this data
        try:
            GroupMetrics(bundle.fit_grouping.n_groups, bundle.n_classes).load_state_dict(state.epoch_metrics)
        except ValueError as e:
            raise CheckpointError(f"{path}: does not match this run's data: {e}") from None
    within = f"in epoch {state.epoch + 2} after batch {state.batches}"
    echo(f"resumed from {path} {within if state.batches else f'after epoch {state.epoch + 1}'}")
    return state


@dataclass
class _Progress:
    """Where the run stands within an epoch: a mid-epoch checkpoint after a batch when one is due
    (``train.checkpoint_every``, or a signal), then, on a signal, the stop (:class:`Preempted`)."""

    saver: _Saver
    state: FitState
    watch: Watch
    writer: RunWriter | None
    loaders: Callable[..., Any]  # (epoch, skip) -> the epoch's training batches
    # A new run's epoch 0, begun before the optimiser exists: torch's first optimiser imports
    # torch._dynamo (over a second of one core), and the workers decode the first batches meanwhile.
    # A resumed run learns where it continues from last.pt, which is read into the optimiser.
    first: Started | None = None

    def train_epoch(
        self, trainer: Trainer, bundle: DatasetBundle, epoch: int, quiet: bool, clock: EpochClock
    ) -> dict[str, Any]:
        """Epoch ``epoch``'s training; a run resumed within it continues after the batches done, with
        their metrics (rank 0 carries their sums over the ranks)."""
        start, partial = self.state.batches, self.state.epoch_metrics
        self.state.batches, self.state.epoch_metrics = 0, None
        first, self.first = self.first, None
        loader = first if first is not None and epoch == 0 and start == 0 else self.loaders(epoch, start)
        return trainer.train_epoch(bundle, epoch, self.writer, quiet, loader=loader, clock=clock,
                                   start=start, epoch_metrics=partial if distributed.is_main_process() else None)

    def after_batch(self, done: int, settled: Callable[[], GroupMetrics]) -> None:
        save, stop = self.watch.poll()
        if not save:
            return
        metrics = settled()  # the epoch's metrics and weight rows up to this batch
        self.state.batches, self.state.epoch_metrics = done, metrics.state_dict()  # a collective under DDP
        if self.writer is not None:
            self.writer.flush_weights()  # the rows up to this step, which the checkpoint covers
        self.saver.save_last(self.state)
        self.state.batches, self.state.epoch_metrics = 0, None
        self.watch.saved()
        if stop:
            raise Preempted(self.watch.signame(), self._last(), self.state.epoch + 1, done, self.state.step)

    def epoch_end(self) -> None:
        """After the epoch's checkpoint: stop there on a signal that came during the epoch's validation."""
        self.watch.saved()
        if self.watch.poll()[1]:
            self.saver.writer.wait()  # the epoch's checkpoint is on disk before the run says so
            raise Preempted(self.watch.signame(), self._last(), self.state.epoch, 0, self.state.step)

    def _last(self) -> Path | None:
        return self.saver.paths.last if self.saver.paths is not None else None


def _optimisation(
    model: nn.Module, optim: OptimConfig, train: TrainConfig, device: torch.device
) -> tuple[torch.optim.Optimizer, Any, torch.amp.GradScaler]:
    """Optimiser (the classifier at its own learning rate when asked for), schedule and grad scaler."""
    opt = make_optimizer(param_groups(model, optim.lr, optim.head_lr), optim)
    return opt, make_scheduler(opt, optim, train.epochs), make_scaler(device, train.amp)


def _epoch_loaders(
    bundle: DatasetBundle, train: TrainConfig, device: torch.device, held: HeldInputs | None
) -> EpochLoaders:
    """``epoch -> training loader`` (workers persist across epochs where the data allows it; the
    inputs decoded from files are held in memory by ``held``, or a new holder, where they can be)."""
    # Training sees the training groups (inferred ones when data.train_groups says so).
    held = held if held is not None else train_holder(bundle, train)
    return EpochLoaders(bundle.fit_train, train.batch_size, seed=train.seed, held=held,
                        num_workers=default_workers(bundle.fit_train, train.num_workers), sampler=train.sampler,
                        n_groups=bundle.fit_grouping.n_groups, pin_memory=device.type == "cuda")


def train_holder(bundle: DatasetBundle, train: TrainConfig) -> HeldInputs | None:
    """The holder of the training split's decoded inputs (``train.hold_decoded_gb``), where they can be
    held (:func:`~groupdistil.loaders.holder`): every pass over the split in this process fills it or
    reads it (the teacher's, then the epochs'), so the split is decoded once."""
    return holder(bundle.fit_train, hold_bytes(train))


def _step_schedule(sched: Any) -> None:
    with warnings.catch_warnings():
        # An epoch whose steps were all skipped as non-finite still advances the schedule.
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        sched.step()


def _val_loader(bundle: DatasetBundle, train: TrainConfig, device: torch.device) -> ValBatches:
    """The validation loader of every epoch. A split read from files is decoded by the first epoch's
    validation and, when it fits, held in memory for the later ones (:class:`HeldPasses`); until then
    the loader's workers persist."""
    loader = eval_loader(bundle.val, max(train.batch_size, 256), default_workers(bundle.val, train.num_workers),
                         pin_memory=device.type == "cuda", persistent_workers=True)
    held = bundle.val.inputs is None and train.hold_decoded_gb > 0
    return HeldPasses(loader, hold_bytes(train)) if held else loader


def _as_held(val_loader: ValBatches) -> HeldPasses | None:
    """The validation passes that hold what they decode (for validation-driven weights), if they do."""
    return val_loader if isinstance(val_loader, HeldPasses) else None


def hold_bytes(train: TrainConfig) -> int:
    """``train.hold_decoded_gb`` in bytes: what one split's held inputs may take."""
    return int(train.hold_decoded_gb * (1 << 30))


def _validate(
    model: nn.Module, bundle: DatasetBundle, train: TrainConfig, device: torch.device, epoch: int, quiet: bool,
    loader: ValBatches,
) -> dict[str, Any]:
    """The metrics of ``bundle.val`` after ``epoch``."""
    distributed.broadcast_buffers(model)  # every rank validates (and rank 0 saves) the same model
    return evaluate(
        model, bundle.val, bundle.grouping, train_group_counts=bundle.group_counts("train"),
        device=device, amp=train.amp, quiet=quiet, desc=f"val {epoch + 1}", loader=loader,
    )


@dataclass
class _Saver:
    """The run's checkpoints: ``last.pt`` after every epoch, ``best.pt`` on improvement (rank 0),
    snapshotted here and written in the background (:mod:`groupdistil.training.async_save`)."""

    paths: RunPaths | None  # None: a run that writes nothing
    meta: dict[str, Any]
    parts: tuple[nn.Module, Objective, torch.optim.Optimizer, Any, torch.amp.GradScaler]  # model ... scaler
    writer: CheckpointWriter = field(default_factory=CheckpointWriter)

    def last_good(self, state: FitState) -> str:
        """The checkpoint a run that fails now can go back to."""
        return str(self.paths.last) if self.paths is not None and state.epoch >= 0 else "none"

    def save(self, state: FitState, improved: bool) -> None:
        if self.paths is None or not distributed.is_main_process():
            return
        model, objective, opt, sched, scaler = self.parts
        last = cpu_snapshot(training_payload(model, objective, state, self.meta, opt, sched, scaler))
        files = []
        if improved:  # best.pt: last.pt without what only resuming needs (the tensors are shared)
            files.append((self.paths.best, {k: v for k, v in last.items() if k not in _RESUME_ONLY}))
        files.append((self.paths.last, last))
        self.writer.submit(files)
        if faults.armed(f"epoch:{state.epoch}"):  # a test's point right after this last.pt is on disk
            self.writer.wait()
            faults.point(f"epoch:{state.epoch}")

    def save_last(self, state: FitState) -> None:
        """``last.pt`` within an epoch (``state.batches`` done), written before this returns: a run
        that stops next must leave it on disk, and a failed write must be what the run reports."""
        if self.paths is None or not distributed.is_main_process():
            return
        model, objective, opt, sched, scaler = self.parts
        payload = cpu_snapshot(training_payload(model, objective, state, self.meta, opt, sched, scaler))
        self.writer.submit([(self.paths.last, payload)])
        self.writer.wait()


#: What last.pt holds beyond best.pt (training_payload with the optimiser).
_RESUME_ONLY = ("optimizer", "scheduler", "rng", "scaler")



def _place(
    model: nn.Module, objective: Objective, teacher: Teacher | None, train: TrainConfig, device: torch.device,
    model_name: str,
) -> nn.Module:
    """Model, objective and teacher on ``device``, in the layout asked for; the backbone frozen when asked
    for; global BatchNorm under DDP."""
    model.to(device)
    objective.to(device)
    if train.channels_last:
        # Convolutions on NHWC tensors: faster on tensor cores and with oneDNN on CPUs. An online
        # teacher sees the same inputs, so it gets the same layout.
        model.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)
    if train.freeze == "backbone":
        freeze_backbone(model, model_name)
    elif distributed.is_distributed() and train.sync_batchnorm:
        # BatchNorm then normalises with the statistics of the global batch, as one process would.
        # torch's SyncBatchNorm is CUDA-only; GlobalBatchNorm does the same with any backend. (Frozen
        # BatchNorm uses its running statistics: nothing to synchronise.)
        if device.type == "cuda":
            return nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return convert_global_batchnorm(model)
    return model


def _wrap(model: nn.Module, device: torch.device, train: TrainConfig) -> nn.Module:
    """The module the steps run: the model in DDP under torchrun, compiled when asked for."""
    net: nn.Module = model
    if distributed.is_distributed():
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if train.compile:
        net = torch.compile(net)
    return net


def _pct(v: float | None) -> str:
    return "  n/a" if v is None else f"{100 * v:5.1f}"


#: How the epoch line names the validation metric a run selects on (average accuracy is always shown).
_SELECTION_LABELS = {"worst_group_acc": "worst-group", "worst_class_acc": "worst-class", "balanced_acc": "balanced"}


def _epoch_line(
    epoch: int, epochs: int, tr: dict[str, Any], va: dict[str, Any], select_on: str, improved: bool,
    times: dict[str, Any] | None = None,
) -> str:
    """The console line of an epoch: the training loss and accuracy, validation average accuracy and
    the metric the run selects on. Only that one: a run told not to use validation groups
    (``data.val_groups`` none selects on worst-class accuracy) does not show worst-group accuracy."""
    loss = tr.get("loss")
    loss_s = "n/a" if loss is None else f"{loss:.4f}"
    label = _SELECTION_LABELS.get(select_on)
    selected = f"  {label} {_pct(va.get(select_on))}" if label else ""
    return (
        f"epoch {epoch + 1:3d}/{epochs}  loss {loss_s}  train acc {_pct(tr['avg_acc'])}  "
        f"val avg {_pct(va['avg_acc'])}{selected}"
        + (f"  {time_text(times)}" if times is not None else "")
        + ("  *best" if improved else "")
    )
