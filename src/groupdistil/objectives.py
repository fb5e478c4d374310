"""Training objectives: each is a per-sample term paired with an aggregation.

- ``erm``: cross-entropy, mean.
- ``reweight``: cross-entropy, mean weighted by ``1 / n_{g_i}`` (data groups).
- ``jtt``: cross-entropy, mean weighted by ``upweight`` on an ERM model's error set (teacher-errors groups).
- ``group-dro``: cross-entropy, online group DRO (data groups).
- ``balanced``: logit-adjusted cross-entropy ``ce(s + tau log pi, y)``, mean (a balanced teacher).
- ``robust-teacher``: ``ce(s + tau log pi - log lambda, y)``, mean; lambda from validation (classes).
- ``kd``: ``(1-alpha) ce + alpha kd``, mean.
- ``dkd``: ``ce + dkd`` (decoupled KD, Zhao et al.), mean.
- ``ltkd``: ``ce + ltkd`` (long-tail KD over head / medium / tail classes, after Kim), mean.
- ``kd-reweight``: ``(1-alpha) ce + alpha kd``, mean weighted by ``1 / n_{g_i}`` (data groups).
- ``groupdistil``: ``(1-alpha) ce + alpha kd``, online group DRO (data groups).
- ``class-robust-kd``: per-class risks R_k, weighted standard | balanced | robust | tradeoff (classes).

``groupdistil`` and ``class-robust-kd`` take ``kd_term`` (kd | dkd | ltkd): the distillation term
their aggregation acts on (:mod:`groupdistil.kd_terms`).

Every objective is called as ``objective(student_logits, y, groups, teacher_logits)`` and returns an
:class:`ObjectiveOutput`: the scalar loss plus per-group loss, count and current weights for logging.
No objective has a training loop of its own; the engine drives them all the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from groupdistil._validate import (
    as_group_vector,
    check_distribution,
    check_finite,
    check_labels,
    check_logits,
    check_positive_int,
    check_same_shape,
    check_temperature,
    check_unit_interval,
    shape_of,
)
from groupdistil.kd_terms import DistillTerm
from groupdistil.losses import (
    cross_entropy,
    distillation,
    logit_adjusted_cross_entropy,
    mixed,
    upcast,
)
from groupdistil.parallel import distributed
from groupdistil.robust import EPS, GroupDRO, GroupRisks, SimplexWeights, global_risks, hard_group_sums


class ObjectiveOutput(NamedTuple):
    """What an objective returns.

    Attributes:
        loss: scalar loss to back-propagate (float32; float64 for float64 logits).
        group_loss: (G,) mean per group in this batch of the part the group weights act on (0 where
            absent); empty when the objective has no groups.
        group_count: (G,) samples (or soft mass) per group in this batch.
        weights: (G,) current group weights (q or lambda; the effective class weights for
            :class:`ClassRobustKD`), else None.
        terms: scalar means over this rank's batch of the separate terms, as weighted in the loss,
            for the logs (detached): ``"ce"`` the cross-entropy part, ``"kd"`` the distillation part
            (objectives with a teacher).
    """

    loss: torch.Tensor
    group_loss: torch.Tensor
    group_count: torch.Tensor
    weights: torch.Tensor | None
    terms: Mapping[str, torch.Tensor] = MappingProxyType({})


class Terms(NamedTuple):
    """What :meth:`Objective.per_sample` returns: the per-sample terms of a batch.

    Attributes:
        robust: (B,) the part the aggregation acts on; (B, C) for the class-level soft risks of
            :class:`ClassRobustKD` (sample i's loss charged to class k).
        plain: (B,) a part averaged on top, or None.
        ce, kd: (B,) the cross-entropy and distillation parts as weighted in the loss, for the logs.
    """

    robust: torch.Tensor
    plain: torch.Tensor | None = None
    ce: torch.Tensor | None = None
    kd: torch.Tensor | None = None


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_zeros(0)


def _global_mean(values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean of (B,) values whose value and gradient equal those on the global batch under DDP."""
    w = torch.ones_like(values) if weights is None else weights.to(values.dtype)
    return global_risks((w * values).sum(), w.sum().detach()).means


def _logged_risks(losses: torch.Tensor, groups: torch.Tensor | None, n_groups: int | None) -> GroupRisks:
    """Per-group statistics for logging only (detached, summed over ranks)."""
    if groups is None or n_groups is None:
        return GroupRisks(_empty(losses), _empty(losses), _empty(losses))
    sums, counts = hard_group_sums(upcast(losses.detach()), groups, n_groups)
    return global_risks(sums, counts)


class Objective(nn.Module):
    """Base class: ``loss = aggregate(robust part, groups) + mean(plain part)``.

    Subclasses set ``requires_teacher`` and implement :meth:`per_sample`; robust ones also
    :meth:`aggregate`. Objectives whose weights are over the classes (``weights_over = "classes"``)
    take the labels as their groups.
    """

    requires_teacher: bool = False
    #: A distillation objective: trained from a teacher (a student's method, ``groupdistil distill``).
    distills: ClassVar[bool] = False
    #: Its aggregation reads the training groups, so a run must have some (``data.train_groups``).
    uses_groups: ClassVar[bool] = False
    #: It aims at the worst class rather than the worst group (the report adds a worst-class panel).
    class_level: ClassVar[bool] = False
    #: What ``ObjectiveOutput.weights`` is over: ``"groups"`` (data groups), ``"classes"``, or None.
    weights_over: str | None = None
    #: K when the objective wants :meth:`update_from_validation` every K steps, else None.
    validation_every: int | None = None

    def __init__(self, n_groups: int | None = None, n_classes: int | None = None) -> None:
        super().__init__()
        self.n_groups = None if n_groups is None else check_positive_int("n_groups", n_groups)
        self.n_classes = None if n_classes is None else check_positive_int("n_classes", n_classes)

    def per_sample(
        self, student_logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None
    ) -> Terms:
        """The per-sample terms of a batch (inputs already checked): see :class:`Terms`."""
        raise NotImplementedError

    def aggregate(self, losses: torch.Tensor, groups: torch.Tensor | None) -> ObjectiveOutput:
        """Plain mean of (B,) losses; per-group statistics only for the logs."""
        r = _logged_risks(losses, groups, self.n_groups)
        return ObjectiveOutput(_global_mean(losses), r.means, r.counts, None)

    def _check_inputs(
        self,
        student_logits: torch.Tensor,
        y: torch.Tensor,
        groups: torch.Tensor | None,
        teacher_logits: torch.Tensor | None,
    ) -> None:
        check_logits("student_logits", student_logits)
        if self.n_classes is not None and student_logits.shape[1] != self.n_classes:
            raise ValueError(
                f"student_logits: expected {self.n_classes} classes, got shape {tuple(student_logits.shape)}"
            )
        check_labels("y", y, student_logits.shape[0], student_logits.shape[1])
        if groups is None and self.uses_groups:
            raise ValueError(f"groups: {type(self).__name__} needs a group id per sample, got None")
        if groups is not None and groups is not y and self.n_groups is not None:
            check_labels("groups", groups, student_logits.shape[0], self.n_groups)
        if self.requires_teacher:
            if teacher_logits is None:
                raise ValueError(f"teacher_logits: {type(self).__name__} needs teacher logits, got None")
            check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)

    def forward(
        self,
        student_logits: torch.Tensor,
        y: torch.Tensor,
        groups: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
    ) -> ObjectiveOutput:
        """Loss of a batch.

        Args:
            student_logits: (B, C). y: (B,) labels. groups: (B,) group ids (needed by group
                objectives; ignored by class-level ones, whose groups are the labels).
                teacher_logits: (B, C) (needed when ``requires_teacher``).
        """
        if self.weights_over == "classes":
            groups = y
        # The inputs are checked once here; the terms below do not check them again.
        self._check_inputs(student_logits, y, groups, teacher_logits)
        terms = self.per_sample(student_logits, y, teacher_logits)
        out = self.aggregate(terms.robust, groups)
        if terms.plain is not None:
            out = out._replace(loss=out.loss + _global_mean(terms.plain))
        named = {"ce": terms.ce, "kd": terms.kd}
        return out._replace(terms={k: v.detach().mean() for k, v in named.items() if v is not None})

    def set_epoch(self, epoch: int) -> None:
        """Tell the objective which (0-based) epoch the next steps belong to: the training loop calls it
        at the start of every epoch (resumed ones too). Only DKD's warm-up reads it."""
        for m in self.modules():
            if isinstance(m, DistillTerm):
                m.epoch = int(epoch)

    def update_from_validation(self, per_group_error: torch.Tensor) -> None:
        """Objectives with validation-driven weights override this."""
        raise NotImplementedError(f"{type(self).__name__} has no validation-driven weights")

    def logit_adjustment(self) -> dict[str, Any] | None:
        """What this objective adds to the logits inside its loss, recorded in checkpoints so that
        ``--teacher-calibrate undo-adjust`` can remove it from a teacher: ``{"method", "tau",
        "prior" (C,), "uses_lambda"}`` (lambda is the saved ``lam.q``, read by ``class_weights_of``), or
        None for no adjustment."""
        return None


class _CrossEntropyTerm:
    """The per-sample term of the objectives without a teacher: cross-entropy."""

    def per_sample(
        self, student_logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None
    ) -> Terms:
        ce = cross_entropy(student_logits, y, check=False)
        return Terms(ce, ce=ce)


class _DROMixin:
    """Aggregation by online group DRO over hard data groups."""

    dro: GroupDRO
    n_groups: int | None

    def aggregate(self, losses: torch.Tensor, groups: torch.Tensor | None) -> ObjectiveOutput:
        # forward() has already checked the group ids (given: uses_groups): aggregate without checking them again.
        sums, counts = hard_group_sums(upcast(losses), groups, self.dro.n_groups)
        loss, stats = self.dro.robust_loss(sums, counts)
        return ObjectiveOutput(loss, stats.means, stats.counts, self.dro.q.detach().clone())


class _ClassWeightsMixin:
    """lambda, weights on the simplex over the classes, moved by validation error every K steps
    (or, for :class:`ClassRobustKD`, by the training batch's class risks).

    Its state dict key is ``lam.q``; checkpoints written before lambda had an owner of its own
    hold it as ``dro.q`` (beside ``dro.group_counts`` and ``dro.adjustment``): they still load.
    """

    lam: SimplexWeights

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for key in [k for k in state_dict if k.startswith(prefix + "dro.")]:
            old = state_dict.pop(key)
            if not key.endswith(".adjustment"):  # always 0 for lambda; SimplexWeights has none
                state_dict[prefix + "lam." + key[len(prefix) + 4:]] = old
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[misc]

    def update_from_validation(self, per_group_error: torch.Tensor) -> None:
        """EG step on lambda from a (C,) vector of per-class 0-1 validation error."""
        n = self.lam.n_groups
        if not isinstance(per_group_error, torch.Tensor) or per_group_error.shape != (n,):
            raise ValueError(
                f"per_group_error: expected a ({n},) tensor of per-class errors, got {shape_of(per_group_error)}"
            )
        self.lam.update(per_group_error)


def class_weights_of(objective_state: Mapping[str, Any]) -> torch.Tensor | None:
    """lambda (or q) in an objective's state dict, if it has one: the class weights a robust
    teacher's checkpoint carries (``lam.q``; ``dro.q`` in checkpoints of older versions)."""
    q = objective_state.get("lam.q", objective_state.get("dro.q"))
    return q if isinstance(q, torch.Tensor) else None


class ERM(_CrossEntropyTerm, Objective):
    """Empirical risk minimisation: mean cross-entropy. ``n_groups`` only enables per-group logs."""

    def __init__(self, n_groups: int | None = None) -> None:
        super().__init__(n_groups=n_groups)


class Reweight(_CrossEntropyTerm, Objective):
    """Cross-entropy averaged with weight ``1 / n_{g_i}``, normalised over the batch.

    ``loss = sum_i w_i ce_i / sum_i w_i`` with ``w_i = 1 / n_{g_i}`` (our choice: normalising over the
    batch keeps the loss on the scale of a mean whatever the batch's group mix). Groups without
    training samples get weight 0.

    Args:
        group_counts: (G,) training samples per group.
        n_groups: G, optional; checked against ``len(group_counts)``.
    """

    uses_groups = True

    inv_counts: torch.Tensor

    def __init__(
        self, group_counts: Sequence[float] | torch.Tensor, n_groups: int | None = None
    ) -> None:
        n = int(torch.as_tensor(group_counts).numel())
        if n_groups is not None and n != n_groups:
            raise ValueError(f"group_counts: expected {n_groups} values (n_groups), got {n} values")
        super().__init__(n_groups=n)
        counts = as_group_vector("group_counts", group_counts, n)
        if (counts < 0).any() or counts.sum() <= 0:
            raise ValueError(
                f"group_counts: expected non-negative counts with a positive total, got {counts.tolist()}"
            )
        self.register_buffer("inv_counts", torch.where(counts > 0, 1.0 / counts.clamp_min(EPS), 0.0))

    def aggregate(self, losses: torch.Tensor, groups: torch.Tensor | None) -> ObjectiveOutput:
        return _group_weighted_mean(losses, groups, self.inv_counts, self.n_groups)


def _group_weighted_mean(
    losses: torch.Tensor, groups: torch.Tensor | None, weights: torch.Tensor, n_groups: int | None
) -> ObjectiveOutput:
    """``sum_i w_{g_i} l_i / sum_i w_{g_i}`` over the (global) batch, for (B,) losses and (G,) weights
    and (B,) groups (given: forward() refuses None for objectives that use groups)."""
    r = _logged_risks(losses, groups, n_groups)
    loss = _global_mean(losses, weights[groups.long().to(weights.device)])
    return ObjectiveOutput(loss, r.means, r.counts, None)


class JTT(_CrossEntropyTerm, Objective):
    """Just Train Twice (Liu et al., 2021) as an aggregation: cross-entropy, mean weighted by
    ``upweight`` on the identification model's error set.

    The groups are ``teacher-errors`` ids ``g = 2 y + wrong`` from the identification model
    (``--group-reference``): odd groups are its error set. ``loss = sum_i w_i ce_i / sum_i w_i`` with
    ``w_i = upweight`` on the error set and 1 elsewhere, normalised over the batch as :class:`Reweight`
    (the expected loss of JTT's up-sampled training set). No teacher.

    Args:
        n_groups: G = 2C (teacher-errors groups). upweight: lambda_up >= 1.
    """

    uses_groups = True

    group_weight: torch.Tensor

    def __init__(self, n_groups: int, upweight: float = 20.0) -> None:
        super().__init__(n_groups=n_groups)
        if n_groups % 2:
            raise ValueError(f"n_groups: expected teacher-errors groups (right, wrong per class), got {n_groups}")
        upweight = check_finite("upweight", upweight)
        if upweight < 1:
            raise ValueError(f"upweight: expected a weight >= 1, got {upweight}")
        self.upweight = upweight
        w = torch.ones(n_groups)
        w[1::2] = upweight
        self.register_buffer("group_weight", w)

    def aggregate(self, losses: torch.Tensor, groups: torch.Tensor | None) -> ObjectiveOutput:
        return _group_weighted_mean(losses, groups, self.group_weight, self.n_groups)


class DRO(_CrossEntropyTerm, _DROMixin, Objective):
    """Group DRO on cross-entropy, no teacher (Sagawa et al.). Options as :class:`GroupDRO`."""

    uses_groups = True

    weights_over = "groups"

    def __init__(
        self,
        n_groups: int,
        step_size: float = 0.01,
        group_counts: Sequence[float] | torch.Tensor | None = None,
        adjustment: float | Sequence[float] = 0.0,
        normalize_loss: bool = False,
    ) -> None:
        super().__init__(n_groups=n_groups)
        self.dro = GroupDRO(n_groups, step_size, group_counts, adjustment, normalize_loss)


class KD(Objective):
    """Plain distillation: mean of ``(1 - alpha) ce + alpha T^2 KL(t || s)``.

    Args:
        alpha: teacher weight in [0, 1] (0: no teacher needed). temperature: T > 0.
        n_groups: only for per-group logs.
    """

    distills = True

    def __init__(self, alpha: float = 0.5, temperature: float = 4.0, n_groups: int | None = None) -> None:
        super().__init__(n_groups=n_groups)
        self.alpha = check_unit_interval("alpha", alpha)
        self.temperature = check_temperature(temperature)
        self.requires_teacher = self.alpha > 0

    def per_sample(
        self, student_logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None
    ) -> Terms:
        ce = cross_entropy(student_logits, y, check=False)
        if teacher_logits is None or self.alpha == 0:
            return Terms(ce, ce=(1 - self.alpha) * ce)
        kd = distillation(student_logits, teacher_logits, self.temperature)
        return Terms(mixed(ce, kd, self.alpha), ce=(1 - self.alpha) * ce, kd=self.alpha * kd)


class KDReweight(Reweight):
    """KD's per-sample term ``(1 - alpha) ce + alpha kd`` with :class:`Reweight`'s aggregation
    (weights ``1 / n_{g_i}``, normalised over the batch): count-driven group weights, fixed in time.

    The static counterpart of GroupDistil, whose weights are loss-driven (an ablation baseline).

    Args:
        group_counts: (G,) training samples per group. alpha, temperature: as :class:`KD`.
        n_groups: G, optional; checked against ``len(group_counts)``.
    """

    distills = True

    def __init__(
        self,
        group_counts: Sequence[float] | torch.Tensor,
        alpha: float = 0.5,
        temperature: float = 4.0,
        n_groups: int | None = None,
    ) -> None:
        super().__init__(group_counts, n_groups)
        self.alpha = check_unit_interval("alpha", alpha)
        self.temperature = check_temperature(temperature)
        self.requires_teacher = self.alpha > 0

    per_sample = KD.per_sample


class _CEPlusTerm(Objective):
    """Mean of ``ce + term`` with a :class:`~groupdistil.kd_terms.DistillTerm` (DKD, LTKD)."""

    distills = True
    requires_teacher = True

    term: DistillTerm

    def per_sample(
        self, student_logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None
    ) -> Terms:
        ce = cross_entropy(student_logits, y, check=False)
        kd = self.term(student_logits, teacher_logits, y)  # forward() has checked: a teacher is required
        return Terms(ce + kd, ce=ce, kd=kd)


class DKD(_CEPlusTerm):
    """Decoupled knowledge distillation (Zhao et al., CVPR 2022): mean of ``ce + w dkd`` with
    ``dkd = T^2 (dkd_alpha KL(b_t || b_s) + dkd_beta KL(n_t || n_s))`` (binary target / non-target
    masses, and the distribution over the non-target classes) and the warm-up weight
    ``w = min((epoch + 1) / dkd_warmup, 1)`` (1 when ``dkd_warmup`` = 0).

    Args:
        temperature: T > 0. dkd_alpha, dkd_beta: weights of the two terms (DKD's CIFAR setting: 1, 8).
        dkd_warmup: epochs of the linear warm-up (20). n_groups: only for per-group logs.
    """

    def __init__(self, temperature: float = 4.0, dkd_alpha: float = 1.0, dkd_beta: float = 8.0,
                 dkd_warmup: int = 20, n_groups: int | None = None) -> None:
        super().__init__(n_groups=n_groups)
        self.temperature = check_temperature(temperature)
        self.term = DistillTerm("dkd", temperature, dkd_alpha=dkd_alpha, dkd_beta=dkd_beta, dkd_warmup=dkd_warmup)


class LTKD(_CEPlusTerm):
    """Long-tail knowledge distillation (after Kim, CVPR 2026; our reading, docs/methods.md): mean of
    ``ce + T^2 (ltkd_alpha KL(r_t || m_s) + ltkd_beta (1/K) sum_G KL(p_t|G || p_s|G))`` over head /
    medium / tail groups of classes by training count, the teacher's group masses rebalanced by the
    groups' training shares (``r_t``) and the within-group terms weighted equally.

    Args:
        class_prior: (C,) training class frequencies (they define the groups and their shares).
        temperature: T > 0. ltkd_alpha: cross-group weight (1). ltkd_beta: within-group weight
        (default K). n_groups: only for per-group logs.
    """

    class_level = True

    def __init__(self, class_prior: Sequence[float] | torch.Tensor, temperature: float = 4.0,
                 ltkd_alpha: float = 1.0, ltkd_beta: float | None = None, n_groups: int | None = None) -> None:
        n = int(torch.as_tensor(class_prior).numel())
        super().__init__(n_groups=n_groups, n_classes=n)
        self.temperature = check_temperature(temperature)
        prior = check_distribution("class_prior", class_prior, n)
        self.term = DistillTerm("ltkd", temperature, prior, ltkd_alpha=ltkd_alpha, ltkd_beta=ltkd_beta)


def _kd_term(kd_term: str, temperature: float, class_prior: Sequence[float] | torch.Tensor | None,
             options: dict[str, Any]) -> tuple[DistillTerm, int | None]:
    """The distillation term of a robust aggregation, and the class count it fixes (ltkd's prior)."""
    prior = None
    if kd_term == "ltkd" and class_prior is not None:
        prior = check_distribution("class_prior", class_prior, int(torch.as_tensor(class_prior).numel()))
    term = DistillTerm(kd_term, temperature, prior, **options)
    return term, None if prior is None else int(prior.numel())


DRO_ON = ("both", "kd", "ce")


class GroupDistil(_DROMixin, Objective):
    """GroupDistil (Vilouras et al., 2023): distillation loss aggregated by online group DRO.

    ``kd_term`` picks the distillation term ``kd``: Hinton's (default), ``dkd`` or ``ltkd``
    (:class:`~groupdistil.kd_terms.DistillTerm`, with its options; ``ltkd`` needs ``class_prior``).
    ``dro_on`` picks what the group weights apply to: ``both`` (the whole mix
    ``(1-alpha) ce + alpha kd``, default), ``kd`` (the term ``alpha kd``; ``(1-alpha) ce`` is averaged)
    or ``ce`` (the reverse). ``group_loss`` in the output is the per-group mean of that part.

    Args:
        n_groups: G. alpha: teacher weight in [0, 1] (0: no teacher needed). temperature: T > 0.
        step_size: eta >= 0 (0: a fixed group weighting). group_counts, adjustment, normalize_loss:
        as :class:`GroupDRO`. dro_on: both | kd | ce. kd_term: kd | dkd | ltkd; dkd_alpha, dkd_beta,
        dkd_warmup, ltkd_alpha, ltkd_beta: that term's options (None: its default). class_prior: (C,)
        training class frequencies (ltkd).
    """

    distills = True
    uses_groups = True

    weights_over = "groups"

    def __init__(
        self,
        n_groups: int,
        alpha: float = 0.5,
        temperature: float = 4.0,
        step_size: float = 0.01,
        group_counts: Sequence[float] | torch.Tensor | None = None,
        adjustment: float | Sequence[float] = 0.0,
        normalize_loss: bool = False,
        dro_on: str = "both",
        kd_term: str = "kd",
        dkd_alpha: float | None = None,
        dkd_beta: float | None = None,
        dkd_warmup: int | None = None,
        ltkd_alpha: float | None = None,
        ltkd_beta: float | None = None,
        class_prior: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        term, n_classes = _kd_term(kd_term, temperature, class_prior, {
            "dkd_alpha": dkd_alpha, "dkd_beta": dkd_beta, "dkd_warmup": dkd_warmup,
            "ltkd_alpha": ltkd_alpha, "ltkd_beta": ltkd_beta})
        super().__init__(n_groups=n_groups, n_classes=n_classes)
        self.term, self.temperature = term, term.temperature
        self.alpha = check_unit_interval("alpha", alpha)
        if dro_on not in DRO_ON:
            raise ValueError(f"dro_on: expected one of {', '.join(DRO_ON)}, got {dro_on!r}")
        self.dro_on = dro_on
        self.requires_teacher = self.alpha > 0
        self.dro = GroupDRO(n_groups, step_size, group_counts, adjustment, normalize_loss)

    def per_sample(
        self, student_logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None
    ) -> Terms:
        ce = (1 - self.alpha) * cross_entropy(student_logits, y, check=False)
        if teacher_logits is None or self.alpha == 0:
            # No teacher: the kd term is zero, whichever part the weights act on.
            kd = torch.zeros_like(ce)
        else:
            kd = self.alpha * self.term(student_logits, teacher_logits, y)
        if self.dro_on == "both":
            return Terms(ce + kd, None, ce, kd)
        return Terms(*((kd, ce) if self.dro_on == "kd" else (ce, kd)), ce, kd)


class LogitAdjusted(Objective):
    """Balanced teacher: mean logit-adjusted loss ``ce(s + tau log pi, y)`` (Menon et al.).

    Args:
        class_prior: (C,) training class frequencies. tau: strength (default 1).
    """

    class_level = True

    prior: torch.Tensor

    def __init__(self, class_prior: Sequence[float] | torch.Tensor, tau: float = 1.0) -> None:
        n = int(torch.as_tensor(class_prior).numel())
        super().__init__(n_classes=n)
        self.register_buffer("prior", check_distribution("class_prior", class_prior, n))
        self.tau = check_finite("tau", tau)

    def per_sample(
        self, student_logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None
    ) -> Terms:
        ce = logit_adjusted_cross_entropy(student_logits, y, self.prior, self.tau, check=False)
        return Terms(ce, ce=ce)

    def logit_adjustment(self) -> dict[str, Any]:
        return {"method": "balanced", "tau": self.tau, "prior": self.prior.tolist(), "uses_lambda": False}


class RobustTeacher(_ClassWeightsMixin, Objective):
    """Worst-class teacher (Narasimhan & Menon, 2021): mean ``ce(s + tau log pi - log lambda, y)``.

    lambda lives on the simplex over classes and is moved by exponentiated gradient on the per-class
    0-1 error of a validation batch every ``validation_every`` steps (the engine calls
    :meth:`update_from_validation`). The groups of this objective are the classes: ``group_loss`` is
    per class, whatever grouping the data has.

    Args:
        class_prior: (C,). tau: logit adjustment. step_size: eta for lambda (0.1 in the paper).
        validation_every: K (32 in the paper).
    """

    class_level = True

    weights_over = "classes"

    prior: torch.Tensor

    def __init__(
        self,
        class_prior: Sequence[float] | torch.Tensor,
        tau: float = 1.0,
        step_size: float = 0.1,
        validation_every: int = 32,
    ) -> None:
        n = int(torch.as_tensor(class_prior).numel())
        super().__init__(n_groups=n, n_classes=n)
        self.register_buffer("prior", check_distribution("class_prior", class_prior, n))
        self.tau = check_finite("tau", tau)
        self.validation_every = check_positive_int("validation_every", validation_every)
        # lambda starts uniform over the classes seen in training; unseen ones keep weight 0.
        self.lam = SimplexWeights(n, step_size=step_size, group_counts=self.prior)

    def per_sample(
        self, student_logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None
    ) -> Terms:
        # The clamps keep log finite for a class with pi = 0 or lambda = 0.
        shift = self.tau * self.prior.clamp_min(1e-12).log() - self.lam.q.clamp_min(1e-12).log()
        s = upcast(student_logits)
        ce = cross_entropy(s + shift.to(s.dtype), y, check=False)
        return Terms(ce, ce=ce)

    def aggregate(self, losses: torch.Tensor, groups: torch.Tensor | None) -> ObjectiveOutput:
        """Plain mean (as :class:`Objective`), reported with lambda as the weights."""
        out = super().aggregate(losses, groups)
        return out._replace(weights=self.lam.q.detach().clone())

    def logit_adjustment(self) -> dict[str, Any]:
        return {"method": "robust-teacher", "tau": self.tau, "prior": self.prior.tolist(), "uses_lambda": True}


CLASS_ROBUST_MODES = ("standard", "balanced", "robust", "tradeoff")
LAMBDA_SOURCES = ("train", "val")


class ClassRobustKD(_ClassWeightsMixin, Objective):
    """Class-robust distillation (Wang et al., 2023; reconstruction described in docs/methods.md).

    Per-class risk with the teacher's probabilities ``p = softmax(t / T)`` as soft class membership:
    ``R_k = [(1-alpha) sum_i 1(y_i=k) ce_ik + alpha sum_i p_ik T^2 (-log softmax(s_i/T)_k)] / (B pi_k)``.
    The loss is ``sum_k w_k R_k`` with class weights ``w`` set by the mode: ``standard`` w = pi (plain
    distillation in soft cross-entropy form), ``balanced`` w = 1/C, ``robust`` w = lambda updated by
    EG (from the training batch's R, or, with ``lambda_source="val"``, only from validation error every
    ``validation_every`` steps), ``tradeoff`` w = (1 - beta) pi + beta lambda. A class with pi_k = 0
    has R_k = 0 and weight 0 in every mode (balanced averages over the other classes).

    Args:
        n_classes: C. class_prior: (C,) training class frequencies. alpha: teacher weight in [0, 1].
        temperature: T > 0; default 1, not KD's 4: at T = 4 the teacher's soft membership of the rare
        classes is so large that lambda moves onto them and the robust student collapses
        (benchmarks/results/digits-lt-defaults). mode: see above. beta: tradeoff in [0, 1]. step_size: eta >= 0 for
        lambda. lambda_source: ``train`` or ``val``. validation_every: K for ``val``. kd_term: kd |
        dkd | ltkd, with that term's options (as :class:`GroupDistil`); for dkd and ltkd sample i's
        term is charged to class k with weight p_ik (the kd term keeps its per-class form above).
    """

    distills = True
    class_level = True

    weights_over = "classes"

    prior: torch.Tensor

    def __init__(
        self,
        n_classes: int,
        class_prior: Sequence[float] | torch.Tensor,
        alpha: float = 0.5,
        temperature: float = 1.0,
        mode: str = "robust",
        beta: float = 1.0,
        step_size: float = 0.01,
        lambda_source: str = "train",
        validation_every: int = 32,
        kd_term: str = "kd",
        dkd_alpha: float | None = None,
        dkd_beta: float | None = None,
        dkd_warmup: int | None = None,
        ltkd_alpha: float | None = None,
        ltkd_beta: float | None = None,
    ) -> None:
        super().__init__(n_groups=n_classes, n_classes=n_classes)
        self.register_buffer("prior", check_distribution("class_prior", class_prior, n_classes))
        self.alpha = check_unit_interval("alpha", alpha)
        self.term, _ = _kd_term(kd_term, temperature, self.prior, {
            "dkd_alpha": dkd_alpha, "dkd_beta": dkd_beta, "dkd_warmup": dkd_warmup,
            "ltkd_alpha": ltkd_alpha, "ltkd_beta": ltkd_beta})
        self.temperature = self.term.temperature
        if mode not in CLASS_ROBUST_MODES:
            raise ValueError(f"mode: expected one of {', '.join(CLASS_ROBUST_MODES)}, got {mode!r}")
        self.mode = mode
        self.beta = check_unit_interval("beta", beta)
        if lambda_source not in LAMBDA_SOURCES:
            raise ValueError(
                f"lambda_source: expected one of {', '.join(LAMBDA_SOURCES)}, got {lambda_source!r}"
            )
        self.lambda_source = lambda_source
        self.uses_lambda = mode == "robust" or (mode == "tradeoff" and self.beta > 0)
        if lambda_source == "val" and self.uses_lambda:
            self.validation_every = check_positive_int("validation_every", validation_every)
        self.requires_teacher = self.alpha > 0
        # lambda starts uniform over the classes seen in training; unseen ones keep weight 0.
        self.lam = SimplexWeights(n_classes, step_size=step_size, group_counts=self.prior)

    def per_sample(
        self, student_logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None
    ) -> Terms:
        """(B, C): sample i's loss charged to class k, ``(1-alpha) 1(y_i=k) ce_i + alpha p_ik T^2
        (-log softmax(s_i/T)_k)``; summed over the batch it is the numerator of R_k."""
        t = self.temperature
        s = upcast(student_logits)
        ce = (1 - self.alpha) * cross_entropy(s, y, check=False)
        charged = F.one_hot(y.long().to(s.device), s.shape[1]).to(s.dtype) * ce.unsqueeze(1)
        if teacher_logits is None or self.alpha == 0:
            return Terms(charged, ce=ce)
        p = torch.softmax(teacher_logits.detach().to(s.dtype) / t, dim=1)
        if self.term.kind != "kd":
            # dkd / ltkd do not split by class: sample i's term is charged to the classes in
            # proportion to the teacher's p_i (our choice), so w = pi still gives the plain mean.
            kd = self.alpha * self.term(s, teacher_logits, y)
            return Terms(charged + p * kd.unsqueeze(1), ce=ce, kd=kd)
        soft = self.alpha * p * (-(t * t) * torch.log_softmax(s / t, dim=1))
        return Terms(charged + soft, ce=ce, kd=soft.sum(dim=1))

    def class_weights(self) -> torch.Tensor:
        """(C,) current weights w of the per-class risks (see the class docstring)."""
        if self.mode == "standard":
            return self.prior
        if self.mode == "balanced":
            present = (self.prior > 0).to(self.prior.dtype)
            return present / present.sum()
        lam = self.lam.q
        return lam if self.mode == "robust" else (1 - self.beta) * self.prior + self.beta * lam

    def aggregate(self, losses: torch.Tensor, groups: torch.Tensor | None) -> ObjectiveOutput:
        """``sum_k w_k R_k`` from the (B, C) charged losses; ``groups`` are the labels (for the counts)."""
        assert groups is not None  # forward() passes the labels
        # Denominators B pi_k over the global batch; 0 only for a class unseen in training, whose
        # risk is defined as 0.
        r = global_risks(losses.sum(dim=0), losses.shape[0] * self.prior.to(losses))
        risks = torch.where(r.counts > 0, r.means, torch.zeros_like(r.means))
        if self.uses_lambda and self.training and self.lambda_source == "train":
            self.lam.update(risks.detach())
        w = self.class_weights()
        loss = (w.to(risks.dtype) * risks).sum()
        counts = torch.bincount(groups.long(), minlength=self.lam.n_groups).to(risks.dtype)
        return ObjectiveOutput(loss, risks.detach(), distributed.all_reduce_sum(counts), w.detach().clone())


# ---- construction by name (used by the CLI and configs) ----------------------------------------

OBJECTIVES: dict[str, type[Objective]] = {
    "erm": ERM,
    "reweight": Reweight,
    "jtt": JTT,
    "group-dro": DRO,
    "balanced": LogitAdjusted,
    "robust-teacher": RobustTeacher,
    "kd": KD,
    "dkd": DKD,
    "ltkd": LTKD,
    "kd-reweight": KDReweight,
    "groupdistil": GroupDistil,
    "class-robust-kd": ClassRobustKD,
}

#: Arguments that come from the dataset, not from the user's options.
CONTEXT_KEYS = ("n_groups", "n_classes", "group_counts", "class_prior")


def objective_options(name: str) -> dict[str, Any]:
    """The user-settable options of an objective and their defaults."""
    cls = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    return {
        k: p.default
        for k, p in params.items()
        if k != "self" and k not in CONTEXT_KEYS
    }


def _lookup(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise ValueError(f"objective: unknown name {name!r}; expected one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def build_objective(
    name: str,
    *,
    n_groups: int | None = None,
    n_classes: int | None = None,
    group_counts: Sequence[float] | torch.Tensor | None = None,
    class_prior: Sequence[float] | torch.Tensor | None = None,
    **options: Any,
) -> Objective:
    """Build an objective from its name, the dataset's facts and user options.

    Args:
        name: one of :data:`OBJECTIVES`.
        n_groups, n_classes, group_counts, class_prior: facts of the training split; each objective
            takes those it needs.
        **options: the objective's own options (e.g. ``alpha``, ``temperature``, ``step_size``).

    Raises:
        ValueError: unknown name or option, naming the valid ones.
    """
    cls = _lookup(name)
    allowed = objective_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"objective {name}: unknown option {unknown[0]!r}; expected one of "
            f"{', '.join(allowed) or '(none)'}"
        )
    params = inspect.signature(cls.__init__).parameters
    context = {
        "n_groups": n_groups,
        "n_classes": n_classes,
        "group_counts": group_counts,
        "class_prior": class_prior,
    }
    kwargs = {k: v for k, v in context.items() if k in params and v is not None}
    missing = [
        k for k in CONTEXT_KEYS
        if k in params and k not in kwargs and params[k].default is inspect.Parameter.empty
    ]
    if missing:
        raise ValueError(f"objective {name}: needs {missing[0]} from the dataset")
    return cls(**kwargs, **options)
