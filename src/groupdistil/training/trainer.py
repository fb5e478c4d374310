"""One training step and one training epoch, the same for every objective.

:meth:`Trainer.step` is the method as written: forward (student and, when the objective needs one,
teacher), the objective's loss, backward, the optimiser step. What the step did comes back as a
:class:`StepResult`: ``stepped``, ``skipped`` (a non-finite loss or teacher output, with
``train.skip_nonfinite``) or ``overflowed`` (fp16: the grad scaler found inf/NaN gradients and skipped
the update). In both of the latter the objective's state (q or lambda) is rolled back, so that it and
the parameters stay one trajectory. :meth:`Trainer.train_epoch` runs the steps of one epoch and
gathers the logs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from groupdistil import faults
from groupdistil.checkpoint import FitState
from groupdistil.config import TrainConfig
from groupdistil.data.base import DatasetBundle, GroupedDataset
from groupdistil.errors import NumericalError
from groupdistil.loaders import HeldPasses, default_workers, epoch_generator, pass_batch_size, train_loader
from groupdistil.metrics import GroupMetrics, confidence_and_prediction
from groupdistil.objectives import Objective, ObjectiveOutput
from groupdistil.parallel import distributed
from groupdistil.runs.outputs import RunWriter
from groupdistil.teachers import Teacher
from groupdistil.training.devices import autocast
from groupdistil.training.evaluation import per_class_error
from groupdistil.training.progress import length, progress
from groupdistil.training.timing import EpochClock

#: The most memory the decoded validation split of validation-driven weights may take (1 GiB: CIFAR's
#: 10,000 images at 224 px in float32 would take 6 GB and are decoded per draw instead).
LAMBDA_VAL_MAX_BYTES = 1 << 30


class StepResult(NamedTuple):
    """What one :meth:`Trainer.step` did.

    Attributes:
        status: ``stepped``, ``skipped`` (non-finite loss) or ``overflowed`` (fp16 gradient overflow).
        loss: the batch's loss (NaN or inf when skipped).
        terms: the means of the objective's separate terms (``ObjectiveOutput.terms``), as floats.
        output: the objective's output (its ``weights`` are logged).
        logits: (B, C) the student's logits. y, g: (B,) labels and groups, on the device.
    """

    status: Literal["stepped", "skipped", "overflowed"]
    loss: float
    terms: dict[str, float]
    output: ObjectiveOutput
    logits: torch.Tensor
    y: torch.Tensor
    g: torch.Tensor


class Trainer:
    """Steps of ``objective`` on ``net`` (the model, possibly wrapped in DDP or torch.compile).

    Args:
        net: the model being trained; returns (B, C) logits.
        objective: called as ``objective(logits, y, g, teacher_logits)``.
        opt: the optimiser of ``net``'s parameters. scaler: the gradient scaler of ``train.amp``.
        train: loop settings (amp, channels_last, skip_nonfinite, batch size, seed, ...).
        device: where the batches go.
        state: the run's progress, updated in place (step and skip counters).
        teacher: teacher logits provider, required when ``objective.requires_teacher``.
    """

    def __init__(
        self,
        net: nn.Module,
        objective: Objective,
        opt: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        *,
        train: TrainConfig,
        device: torch.device,
        state: FitState,
        teacher: Teacher | None = None,
    ) -> None:
        self.net, self.objective, self.opt, self.scaler = net, objective, opt, scaler
        self.train, self.device, self.state, self.teacher = train, device, state, teacher
        self.epoch = 0
        self.last_good = "none"  # the checkpoint a non-finite loss's message points to
        # Called after every batch with (batches of the epoch done, a function that brings the epoch's
        # metrics and weight rows up to date and returns the metrics): where
        # fit writes mid-epoch checkpoints and stops on a signal.
        self.after_batch: Callable[[int, Callable[[], GroupMetrics]], None] | None = None
        # The loss scale before the next step: the scaler lowers it exactly when it skips a step.
        self._scale = scaler.get_scale() if scaler.is_enabled() else 0.0
        # The validation split that validation-driven weights read every K steps, decoded at the first
        # draw (:meth:`validation_split`); fit's validation passes, held, when fit has them.
        self._lambda_val: GroupedDataset | None = None
        self.held_validation: HeldPasses | None = None

    def _to_device(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x, y, g, idx = batch
        x = x.to(self.device, non_blocking=True)
        if self.train.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True), g.to(self.device, non_blocking=True), idx

    def _forward(
        self, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, ObjectiveOutput]:
        with autocast(self.device, self.train.amp):
            logits = self.net(x)
            # An online teacher runs in the same precision as the student; the objective upcasts both
            # and keeps the DRO math in float32.
            use_teacher = self.objective.requires_teacher and self.teacher is not None
            t = self.teacher(x, idx, logits) if use_teacher else None  # type: ignore[misc]
        out = self.objective(logits.float(), y, g, t)
        # Counts batches, skipped ones included.
        if faults.poisoned(self.state.step + self.state.skipped_steps + self.state.overflow_steps + 1):
            out = out._replace(loss=out.loss * float("nan"))
        return logits, t, out

    def step(self, batch: tuple[torch.Tensor, ...]) -> StepResult:
        """One training step on a batch ``(x, y, g, idx)`` of the training loader.

        Raises:
            NumericalError: a non-finite loss without ``train.skip_nonfinite``.
        """
        x, y, g, idx = self._to_device(batch)
        # The objective's state before this step's update of q or lambda, for a step that is then
        # skipped: a non-finite loss, or a gradient overflow under fp16.
        keep = self.train.skip_nonfinite or self.scaler.is_enabled()
        snapshot = {k: v.clone() for k, v in self.objective.state_dict().items()} if keep else None
        logits, t, out = self._forward(x, y, g, idx)
        # The loss, its separate terms and (in one process) whether the teacher's logits are finite, in
        # the step's one host sync: a non-finite loss must stop the run before the update.
        values = [out.loss.detach(), *out.terms.values()]
        local = t is not None and not distributed.is_distributed()
        if local:
            values.append((~torch.isfinite(t)).any().to(values[0].dtype))
        loss, *terms = torch.stack(values).tolist()
        bad_teacher = bool(terms.pop()) if local else _nonfinite_teacher(t)
        done = (dict(zip(out.terms, terms)), out, logits, y, g)
        if not math.isfinite(loss) or bad_teacher:
            if not self.train.skip_nonfinite:
                raise NumericalError(
                    f"non-finite loss at step {self.state.step + 1} (epoch {self.epoch + 1}); last good "
                    f"checkpoint: {self.last_good}; lower the learning rate or pass `train.skip_nonfinite`"
                )
            self.objective.load_state_dict(snapshot)  # an update from a NaN loss would poison q
            self.opt.zero_grad(set_to_none=True)
            self.state.skipped_steps += 1
            return StepResult("skipped", loss, *done)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.scaler.is_enabled():
            self._scale, before = self.scaler.get_scale(), self._scale  # one host sync per step
            if self._scale < before:
                # The scaler found inf/NaN gradients (the same on every rank: DDP has all-reduced
                # them) and skipped the parameter update; undo q's too, so that q and the parameters
                # stay one step of the same trajectory. Routine while the loss scale settles.
                self.objective.load_state_dict(snapshot)
                self.state.overflow_steps += 1
                return StepResult("overflowed", loss, *done)
        self.state.step += 1
        faults.point(f"step:{self.state.step}")
        return StepResult("stepped", loss, *done)

    def train_epoch(
        self, bundle: DatasetBundle, epoch: int, writer: RunWriter | None = None, quiet: bool = True,
        loader: Iterable[tuple[torch.Tensor, ...]] | None = None, clock: EpochClock | None = None,
        start: int = 0, epoch_metrics: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Train one epoch on ``bundle.train``; the epoch's training metrics (all ranks together).

        ``loader`` yields the epoch's batches (``fit`` keeps one whose workers persist across epochs);
        by default, a fresh :func:`~groupdistil.loaders.train_loader` of this epoch. ``clock`` times
        the step loop (data waits and steps). A run resumed within the epoch passes a loader without
        the ``start`` batches done, and the metrics accumulated over them (``epoch_metrics``,
        :meth:`GroupMetrics.state_dict`).
        """
        self.epoch = epoch
        self.net.train()
        self.objective.train()
        # Set every epoch, a resumed run's first included: what depends on it (DKD's warm-up) is a
        # function of the epoch alone, so resuming reproduces the uninterrupted run.
        self.objective.set_epoch(epoch)
        # Training sees the training groups (inferred ones when data.train_groups says so); validation
        # and test keep the data's groups.
        grouping = bundle.fit_grouping
        metrics = GroupMetrics(grouping.n_groups, bundle.n_classes)
        if epoch_metrics is not None:
            metrics.load_state_dict(epoch_metrics)
        tr = self.train
        if loader is None:
            loader = train_loader(
                bundle.fit_train, tr.batch_size, seed=tr.seed, epoch=epoch, sampler=tr.sampler,
                n_groups=grouping.n_groups, num_workers=default_workers(bundle.fit_train, tr.num_workers),
                pin_memory=self.device.type == "cuda",
                skip=start,
            )
        batches = clock.batches(loader) if clock is not None else loader
        bar = progress(batches, desc=f"epoch {epoch + 1}/{tr.epochs}", total=length(loader),
                       disable=quiet or not distributed.is_main_process())
        log = _EpochLog()

        def settled() -> GroupMetrics:  # the metrics and weight rows up to now, for a mid-epoch checkpoint
            log.flush(metrics, writer, epoch)
            return metrics

        for done, batch in enumerate(bar, start + 1):
            r = self.step(batch)
            if r.status == "stepped":
                log.add(self.state.step, r)
                metrics.add_loss(r.loss, r.terms, int(r.y.numel()))
                self._update_from_validation(bundle)
            if self.after_batch is not None:
                self.after_batch(done, settled)
        log.flush(metrics, writer, epoch)
        metrics.all_reduce()
        summary = metrics.summary(grouping, bundle.fit_group_counts())
        summary["skipped_steps"] = self.state.skipped_steps
        summary["overflow_steps"] = self.state.overflow_steps
        return summary

    def _update_from_validation(self, bundle: DatasetBundle) -> None:
        """Every K steps, the objectives that want it get the per-class error of a validation batch."""
        k = self.objective.validation_every
        if k is None or self.state.step % k:
            return
        distributed.broadcast_buffers(self.net)  # the same model, hence the same lambda, on every rank
        if self._lambda_val is None:
            self._lambda_val = self.validation_split(bundle)
        err = per_class_error(
            distributed.unwrap(self.net), self._lambda_val, bundle.n_classes,
            generator=epoch_generator(self.train.seed, self.state.step), device=self.device,
        )
        self.objective.update_from_validation(err)

    def validation_split(self, bundle: DatasetBundle) -> GroupedDataset:
        """The validation split decoded into memory (up to :data:`LAMBDA_VAL_MAX_BYTES`, else as it is),
        whole on every rank: every rank draws the same batch, so lambda stays the same everywhere.
        Decoded once: a batch of 4096 images every K steps otherwise decodes more images than the steps
        between draws train on (robust teacher on CIFAR-10-LT at 16 px, K = 8, batch 128). In one
        process, the split that fit's validations hold (:attr:`held_validation`, filled now), so that it
        is decoded and held once for both; where that would not hold it whole, a copy of its own."""
        val, held = bundle.val, self.held_validation
        limit = min(held.max_bytes, LAMBDA_VAL_MAX_BYTES) if held is not None else 0
        if limit > 0 and len(val) > 0 and not distributed.is_distributed():
            first = val.without_augmentation()[0][0]  # the size check decodes one image
            if first.numel() * first.element_size() * len(val) <= limit:
                inputs = held.inputs()  # type: ignore[union-attr]
                order = torch.cat([b[3] for b in held.batches]) if inputs is not None else None  # type: ignore[union-attr]
                if order is not None and torch.equal(order, torch.arange(len(val))):
                    return val.with_inputs(inputs)
        workers = default_workers(val, self.train.num_workers)
        return val.decoded(LAMBDA_VAL_MAX_BYTES, workers, pass_batch_size(len(val), 256, workers))


class _EpochLog:
    """What the step loop logs, kept on the device until the epoch ends: no host sync per step.

    Per stepped batch: the (B,) confidences, predictions, labels and groups for the training metrics,
    and the objective's weights (group_weights.csv rows); :meth:`flush` moves them to the host at once.
    """

    def __init__(self) -> None:
        self.predictions: list[tuple[torch.Tensor, ...]] = []
        self.steps: list[int] = []
        self.weights: list[torch.Tensor] = []

    def add(self, step: int, r: StepResult) -> None:
        self.predictions.append((*confidence_and_prediction(r.logits), r.y, r.g))
        if r.output.weights is not None:
            self.steps.append(step)
            self.weights.append(r.output.weights.detach())

    def flush(self, metrics: GroupMetrics, writer: RunWriter | None, epoch: int) -> None:
        """Move what was kept since the last flush into ``metrics`` and ``writer``'s rows."""
        if self.predictions:
            metrics.update_predictions(*(torch.cat(parts) for parts in zip(*self.predictions)))
        if writer is not None and self.weights:
            for step, row in zip(self.steps, torch.stack(self.weights).tolist()):
                writer.log_weights(step, epoch, row)
        self.predictions, self.steps, self.weights = [], [], []


def _nonfinite_teacher(t: torch.Tensor | None) -> bool:
    """Whether any rank's teacher logits are non-finite. The loss is global already, but the logits are
    per rank: a step skipped by one rank alone would leave the others waiting in DDP's all-reduce."""
    if t is None:
        return False
    bad = torch.tensor([float(not bool(torch.isfinite(t).all()))])
    return bool(distributed.all_reduce_sum(bad)[0] > 0)
