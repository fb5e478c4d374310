"""Per-sample loss terms.

Every function here returns a vector of B values (``reduction="none"``) so that any aggregation (mean,
reweighting, online group DRO) can sit on top. All terms are computed with ``log_softmax`` in float32
*at least* (:func:`compute_dtype`): float16 and bfloat16 logits are upcast, so mixed-precision models
still get stable losses, while float64 logits stay float64 (which makes ``gradcheck`` meaningful).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from groupdistil._validate import (
    check_distribution,
    check_finite,
    check_labels,
    check_logits,
    check_same_shape,
    check_temperature,
    check_unit_interval,
)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype losses are computed in: float32 at least (half and bfloat16 go up, float64 stays)."""
    return torch.promote_types(dtype, torch.float32)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` in :func:`compute_dtype` (a no-op for float32 and float64)."""
    return x.to(compute_dtype(x.dtype))


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """Per-sample cross-entropy ``-log softmax(logits)[y]``.

    Args:
        logits: (B, C) student logits, any floating dtype.
        y: (B,) integer labels in [0, C).
        check: validate logits and labels; callers that have checked them already for this batch
            (the objectives) pass False: the label check costs a host sync on a GPU.

    Returns:
        (B,) losses, float32 (float64 for float64 logits).
    """
    if check:
        check_logits("logits", logits)
        check_labels("y", y, logits.shape[0], logits.shape[1])
    return F.cross_entropy(upcast(logits), y.long(), reduction="none")


def distillation(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    """Per-sample distillation ``T^2 * KL(softmax(t/T) || softmax(s/T))`` (Hinton et al.).

    The ``T^2`` factor keeps the gradient scale independent of the temperature. The teacher side is
    treated as a constant target: no gradient flows into ``teacher_logits``.

    Args:
        student_logits: (B, C) logits of the student.
        teacher_logits: (B, C) logits of the teacher.
        temperature: T > 0.

    Returns:
        (B,) losses, each >= 0, float32 (float64 for float64 student logits).
    """
    t = check_temperature(temperature)
    check_logits("student_logits", student_logits)
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    log_s = F.log_softmax(upcast(student_logits) / t, dim=1)
    log_t = F.log_softmax(teacher_logits.detach().to(log_s.dtype) / t, dim=1)
    return (t * t) * F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(dim=1)


def soft_cross_entropy(
    student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per-sample ``-T^2 * sum_k p_k log softmax(s/T)_k`` against fixed target probabilities.

    It differs from :func:`distillation` by the teacher's entropy times ``T^2``, a constant in the
    student, so both give the same gradients.

    Args:
        student_logits: (B, C).
        target_probs: (B, C) rows on the simplex.
        temperature: T > 0.

    Returns:
        (B,) losses, float32 (float64 for float64 student logits).
    """
    t = check_temperature(temperature)
    check_logits("student_logits", student_logits)
    check_same_shape("student_logits", student_logits, "target_probs", target_probs)
    log_s = F.log_softmax(upcast(student_logits) / t, dim=1)
    return -(t * t) * (target_probs.detach().to(log_s.dtype) * log_s).sum(dim=1)


def mixed(ce: torch.Tensor, kd: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - alpha) * ce + alpha * kd``: alpha = 0 ignores the teacher, alpha = 1 uses only it.

    Args:
        ce: (B,) cross-entropy terms.
        kd: (B,) distillation terms.
        alpha: teacher weight in [0, 1].

    Returns:
        (B,) in the dtype of the inputs.
    """
    a = check_unit_interval("alpha", alpha)
    check_same_shape("ce", ce, "kd", kd)
    return (1.0 - a) * ce + a * kd


def _log_prior(class_prior: Sequence[float] | torch.Tensor, n_classes: int) -> torch.Tensor:
    """(C,) float32 ``log pi`` of a validated class prior."""
    prior = check_distribution("class_prior", class_prior, n_classes)
    # A class with prior 0 would give -inf; clamping keeps the adjustment finite and very large.
    return prior.clamp_min(1e-12).log()


def adjust_logits(
    logits: torch.Tensor, class_prior: Sequence[float] | torch.Tensor, tau: float = 1.0
) -> torch.Tensor:
    """Post-hoc logit adjustment towards balanced error: ``logits - tau * log(pi)``.

    Args:
        logits: (B, C) teacher logits.
        class_prior: (C,) training class frequencies pi.
        tau: adjustment strength (1 for the balanced-error Bayes rule).

    Returns:
        (B, C) adjusted logits, float32 at least.
    """
    check_logits("logits", logits)
    tau = check_finite("tau", tau)
    log_pi = _log_prior(class_prior, logits.shape[1]).to(logits.device)
    return upcast(logits) - tau * log_pi


def adjust_logits_weighted(
    logits: torch.Tensor,
    class_weights: Sequence[float] | torch.Tensor,
    class_prior: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """Post-hoc adjustment for a class-weighted (worst-class) objective: ``logits + log(lambda / pi)``.

    The Bayes rule for the lambda-weighted balanced error is ``argmax_k lambda_k p(k|x) / pi_k``, and
    it is what a teacher trained with ``ce(s + log pi - log lambda, y)`` (:class:`RobustTeacher`)
    predicts. Uniform lambda gives the balanced adjustment ``logits - log pi`` up to a constant.
    (The project's first spec wrote ``t - log(lambda / pi)``; that sign would push rare classes further
    down: docs/methods.md, "Weighted post-hoc adjustment".)

    Args:
        logits: (B, C) teacher logits.
        class_weights: (C,) lambda on the simplex (e.g. from worst-class training).
        class_prior: (C,) training class frequencies pi.

    Returns:
        (B, C) adjusted logits, float32 at least.
    """
    check_logits("logits", logits)
    n = logits.shape[1]
    # Same clamp as the prior: lambda = 0 (a class given up on) stays finite.
    lam = check_distribution("class_weights", class_weights, n).clamp_min(1e-12)
    log_pi = _log_prior(class_prior, n)
    return upcast(logits) + (lam.log() - log_pi).to(logits.device)


def logit_adjusted_cross_entropy(
    logits: torch.Tensor,
    y: torch.Tensor,
    class_prior: Sequence[float] | torch.Tensor,
    tau: float = 1.0,
    *,
    check: bool = True,
) -> torch.Tensor:
    """Per-sample logit-adjusted loss ``ce(s + tau * log pi, y)`` (Menon et al.), for balanced teachers.

    Args:
        logits: (B, C); y: (B,) labels; class_prior: (C,); tau: strength.
        check: validate logits and labels (as :func:`cross_entropy`).

    Returns:
        (B,) losses, float32 at least.
    """
    if check:
        check_logits("logits", logits)
    tau = check_finite("tau", tau)
    log_pi = _log_prior(class_prior, logits.shape[1]).to(logits.device)
    return cross_entropy(upcast(logits) + tau * log_pi, y, check=check)
