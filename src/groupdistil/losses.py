"""Per-sample loss terms.

Every function here returns a vector of B values (``reduction="none"``) so that any aggregation (mean,
reweighting, online group DRO) can sit on top. All terms are computed with ``log_softmax`` in float32
*at least* (:func:`compute_dtype`): float16 and bfloat16 logits are upcast, so mixed-precision models
still get stable losses, while float64 logits stay float64 (which makes ``gradcheck`` meaningful).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from groupdistil._validate import (
    check_distribution,
    check_finite,
    check_labels,
    check_logits,
    check_nonnegative,
    check_same_shape,
    check_temperature,
    check_unit_interval,
    shape_of,
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


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``sum_k p_k (log p_k - log q_k)`` per row of (B, K) log-probabilities (finite entries)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def _masked_lse(z: torch.Tensor, y1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C) ``log_softmax`` over the non-target classes (-inf at the target) and (B,) their logsumexp.

    ``log_softmax`` is one fused kernel where ``logsumexp`` is several passes; the logsumexp is read
    back at the row's largest non-target logit ``k'`` as ``z_k' - log_softmax_k'`` (no cancellation:
    ``log_softmax_k'`` lies in [-log C, 0])."""
    masked = z.scatter(1, y1, float("-inf"))
    log_n = torch.log_softmax(masked, dim=1)
    top = masked.detach().argmax(dim=1, keepdim=True)
    return log_n, (z.gather(1, top) - log_n.gather(1, top)).squeeze(1)


class _DKD(torch.autograd.Function):
    """DKD's two KL terms with their gradient written out: one fused ``log_softmax`` a side forward,
    a handful of element-wise passes backward, and no autograd graph of its own (on a CPU the graph
    of the composite form cost twice KD at C = 100).

    With ``L_o`` the logsumexp over the non-target classes and ``L = logaddexp(L_o, z_y)``:
    ``log b = (z_y - L, L_o - L)``, ``log n_k = z_k - L_o`` (k != y), and
    ``KL(n_t || n_s) = sum_k n_t,k (zt_k - zs_k) - Lt_o + Ls_o`` (n_t is 0 at the target). The
    gradient of ``alpha KL(b_t || b_s) + beta KL(n_t || n_s)`` in ``zs`` is
    ``n_s (alpha (b_s[o] - b_t[o]) + beta) - beta n_t`` off the target and ``alpha (b_s[y] - b_t[y])`` on it.
    """

    @staticmethod
    def forward(ctx: Any, zs: torch.Tensor, zt: torch.Tensor, y1: torch.Tensor, a: float, b: float) -> torch.Tensor:
        log_ns, lse_os = _masked_lse(zs, y1)
        log_nt, lse_ot = _masked_lse(zt, y1)
        zs_y, zt_y = zs.gather(1, y1).squeeze(1), zt.gather(1, y1).squeeze(1)
        log_bs = torch.stack([zs_y, lse_os], dim=1) - torch.logaddexp(lse_os, zs_y).unsqueeze(1)
        log_bt = torch.stack([zt_y, lse_ot], dim=1) - torch.logaddexp(lse_ot, zt_y).unsqueeze(1)
        bt, n_t = log_bt.exp(), log_nt.exp()
        tckd = (bt * (log_bt - log_bs)).sum(dim=1)
        nckd = (n_t * (zt - zs)).sum(dim=1) - lse_ot + lse_os
        ctx.save_for_backward(log_ns, n_t, log_bs.exp(), bt, y1)
        ctx.a, ctx.b = a, b
        return a * tckd + b * nckd

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        log_ns, n_t, bs, bt, y1 = ctx.saved_tensors
        a, b = ctx.a, ctx.b
        g = log_ns.exp() * (a * (bs[:, 1] - bt[:, 1]) + b).unsqueeze(1) - b * n_t
        g.scatter_(1, y1, (a * (bs[:, 0] - bt[:, 0])).unsqueeze(1))
        return g * grad.unsqueeze(1), None, None, None, None


def decoupled_distillation(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    y: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 1.0,
    beta: float = 8.0,
    *,
    check: bool = True,
) -> torch.Tensor:
    """Per-sample DKD (Zhao et al., CVPR 2022): ``T^2 (alpha KL(b_t || b_s) + beta KL(n_t || n_s))``.

    ``b`` = the binary masses (target class, all others) of ``softmax(./T)``; ``n`` = ``softmax(./T)``
    over the non-target classes only. Its batch mean is DKD's loss (the warm-up factor aside: see
    :class:`groupdistil.kd_terms.DistillTerm`). No gradient flows into ``teacher_logits``.

    Args:
        student_logits, teacher_logits: (B, C), C >= 2. y: (B,) labels (the target classes).
        temperature: T > 0. alpha: weight of the target-class term (TCKD). beta: weight of the
            non-target term (NCKD).
        check: validate the inputs (the objectives, which have, pass False).

    Returns:
        (B,) losses >= 0, float32 (float64 for float64 student logits).
    """
    t = check_temperature(temperature)
    a, b = check_nonnegative("alpha", alpha), check_nonnegative("beta", beta)
    if check:
        check_logits("student_logits", student_logits)
        check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
        check_labels("y", y, student_logits.shape[0], student_logits.shape[1])
    if student_logits.shape[1] < 2:
        raise ValueError(f"student_logits: DKD needs at least 2 classes, got shape {tuple(student_logits.shape)}")
    zs = upcast(student_logits) / t
    y1 = y.long().to(zs.device).unsqueeze(1)
    return (t * t) * _DKD.apply(zs, teacher_logits.detach().to(zs.dtype) / t, y1, a, b)


def class_groups_by_count(class_counts: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Head / medium / tail group of each class from its training count (or frequency).

    Classes sorted by count, largest first (ties: the smaller class id first): head = the ceil(C/3)
    first, tail = the ceil(C/3) last, medium the rest; an empty medium group (C = 4) is left out, and
    with C < 3 every class is its own group (our choice: docs/methods.md, "LTKD").

    Args:
        class_counts: (C,) non-negative counts or frequencies.

    Returns:
        (C,) int64 group ids 0..K-1 (0 = head, K-1 = tail).
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
    c = counts.numel()
    if c == 0 or not torch.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"class_counts: expected non-negative finite counts, got {counts.tolist()}")
    # Descending count, ties by class id: a stable sort of the negated counts.
    order = torch.sort(-counts, stable=True).indices
    rank = torch.empty(c, dtype=torch.long)
    rank[order] = torch.arange(c)
    if c < 3:
        return rank
    third = -(-c // 3)
    groups = torch.where(rank < third, 0, torch.where(rank >= c - third, 2, 1))
    return torch.unique(groups, return_inverse=True)[1]


def check_class_groups(class_groups: torch.Tensor, n_classes: int) -> int:
    """The number of groups K of a (C,) vector of group ids 0..K-1, every group non-empty."""
    g = class_groups
    if not isinstance(g, torch.Tensor) or g.shape != (n_classes,) or g.dtype.is_floating_point or g.dtype == torch.bool:
        raise ValueError(f"class_groups: expected a ({n_classes},) integer tensor, got {shape_of(g)}")
    k = int(g.max()) + 1 if n_classes else 0
    if int(g.min()) < 0 or (torch.bincount(g.long(), minlength=k) == 0).any():
        raise ValueError(f"class_groups: expected ids 0..K-1 with every group non-empty, got {g.tolist()}")
    return k


class GroupKL(NamedTuple):
    """KL(p_t || p_s) over a partition of the classes, ``p = softmax(./T)``, taken apart.

    Attributes:
        log_mass_t, log_mass_s: (B, K) log group masses ``log m_G = log sum_{k in G} p_k``.
        within: (B, K) ``KL(p_t|G || p_s|G)`` of the within-group distributions ``p_k / m_G``.

    ``KL(p_t || p_s) = KL(m_t || m_s) + sum_G m_t[G] within[:, G]`` (an identity).
    """

    log_mass_t: torch.Tensor
    log_mass_s: torch.Tensor
    within: torch.Tensor


def class_group_members(class_groups: torch.Tensor) -> list[torch.Tensor]:
    """The class ids of each group of a (C,) vector of group ids 0..K-1: K int64 index tensors."""
    k = int(class_groups.max()) + 1
    return [(class_groups == g).nonzero().flatten() for g in range(k)]


def group_parts(zs: torch.Tensor, zt: torch.Tensor, members: Sequence[torch.Tensor]) -> GroupKL:
    """:class:`GroupKL` of tempered (B, C) logits (checked, in the compute dtype; ``zt`` detached) over
    the groups whose class ids are ``members``: one pass over each group's classes."""
    lse_s, lse_t, within = [], [], []
    for idx in members:  # K <= 3 for LTKD's head / medium / tail
        gs, gt = zs.index_select(1, idx), zt.index_select(1, idx)
        ls_g, lt_g = torch.logsumexp(gs, dim=1, keepdim=True), torch.logsumexp(gt, dim=1, keepdim=True)
        # Within a group, p_k / m_G is the softmax of the group's own logits.
        within.append(_kl_rows(gt - lt_g, gs - ls_g))
        lse_s.append(ls_g)
        lse_t.append(lt_g)
    ms, mt = torch.cat(lse_s, dim=1), torch.cat(lse_t, dim=1)
    return GroupKL(mt - torch.logsumexp(mt, dim=1, keepdim=True), ms - torch.logsumexp(ms, dim=1, keepdim=True),
                   torch.stack(within, dim=1))


def group_kl_decomposition(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, class_groups: torch.Tensor, temperature: float = 4.0
) -> GroupKL:
    """The parts of ``KL(softmax(t/T) || softmax(s/T))`` over the groups of ``class_groups`` (unscaled).

    Args:
        student_logits, teacher_logits: (B, C). class_groups: (C,) group ids 0..K-1 (every group
            non-empty). temperature: T > 0.

    Returns:
        :class:`GroupKL`, float32 at least.
    """
    t = check_temperature(temperature)
    check_logits("student_logits", student_logits)
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    check_class_groups(class_groups, student_logits.shape[1])
    zs = upcast(student_logits) / t
    members = [m.to(zs.device) for m in class_group_members(class_groups)]
    return group_parts(zs, teacher_logits.detach().to(zs.dtype) / t, members)


def group_columns(class_groups: torch.Tensor) -> list[slice | torch.Tensor]:
    """Each group's columns: a slice where its class ids are a contiguous range (long-tailed datasets
    usually number their classes from head to tail: no copy), else the (n_G,) index tensor."""
    cols: list[slice | torch.Tensor] = []
    for idx in class_group_members(class_groups):
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        cols.append(slice(lo, hi) if hi - lo == idx.numel() else idx)
    return cols


def _columns(z: torch.Tensor, cols: slice | torch.Tensor) -> torch.Tensor:
    return z[:, cols] if isinstance(cols, slice) else z.index_select(1, cols.to(z.device))


def _group_lse(z: torch.Tensor, cols: slice | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A group's (B, n_G) within-group ``log_softmax`` and (B,) logsumexp (read back as in :func:`_masked_lse`)."""
    zg = _columns(z, cols)
    log_p = torch.log_softmax(zg, dim=1)
    top = zg.detach().argmax(dim=1, keepdim=True)
    return log_p, (zg.gather(1, top) - log_p.gather(1, top)).squeeze(1)


class _LTKD(torch.autograd.Function):
    """LTKD before the ``T^2`` with its gradient written out (as :class:`_DKD`). One fused
    within-group ``log_softmax`` per group and side; ``log m[G] = L_G - logsumexp_H L_H`` from the
    groups' logsumexps ``L_G``. The gradient in ``zs_k``, k in G, is
    ``p_s|G,k (alpha (m_s[G] - r_t[G]) + beta / K) - (beta / K) p_t|G,k``."""

    @staticmethod
    def forward(ctx: Any, zs: torch.Tensor, zt: torch.Tensor, columns: Sequence[slice | torch.Tensor],
                log_group_prior: torch.Tensor, a: float, b: float) -> torch.Tensor:
        k = len(columns)
        within = zs.new_zeros(zs.shape[0])
        log_ps, p_t, lse_s, lse_t = [], [], [], []
        for c in columns:  # K <= 3 for head / medium / tail
            (ls, l_s), (lt, l_t) = _group_lse(zs, c), _group_lse(zt, c)
            pt = lt.exp()
            within += (pt * (lt - ls)).sum(dim=1)
            log_ps.append(ls)
            p_t.append(pt)
            lse_s.append(l_s)
            lse_t.append(l_t)
        ls_g, lt_g = torch.stack(lse_s, dim=1), torch.stack(lse_t, dim=1)
        log_ms = ls_g - torch.logsumexp(ls_g, dim=1, keepdim=True)
        log_r = lt_g - log_group_prior.to(zt)
        log_r = log_r - torch.logsumexp(log_r, dim=1, keepdim=True)
        r = log_r.exp()
        ctx.save_for_backward(log_ms.exp() - r, *log_ps, *p_t)
        ctx.columns, ctx.a, ctx.b, ctx.shape = columns, a, b, zs.shape
        return a * (r * (log_r - log_ms)).sum(dim=1) + (b / k) * within

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        gap, *rest = ctx.saved_tensors
        k = len(ctx.columns)
        w = ctx.b / k
        g = grad.new_empty(ctx.shape)
        for i, c in enumerate(ctx.columns):
            coef = (ctx.a * gap[:, i] + w).unsqueeze(1)
            g[:, c] = (rest[i].exp() * coef - w * rest[k + i]) * grad.unsqueeze(1)
        return g, None, None, None, None, None


def ltkd_core(zs: torch.Tensor, zt: torch.Tensor, columns: Sequence[slice | torch.Tensor],
              log_group_prior: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """(B,) LTKD of tempered (B, C) logits (``zt`` detached) before the ``T^2``, over the groups'
    ``columns`` (:func:`group_columns`), with (K,) ``log P_G``."""
    return _LTKD.apply(zs, zt, columns, log_group_prior, alpha, beta)


def check_group_prior(group_prior: Sequence[float] | torch.Tensor, n_groups: int) -> torch.Tensor:
    """(K,) float64 training shares P_G of the groups: a distribution with every entry > 0."""
    prior = check_distribution("group_prior", group_prior, n_groups)
    if (prior <= 0).any():
        raise ValueError(f"group_prior: expected training samples in every group, got shares {prior.tolist()}")
    # float64, so that float64 logits get the exact term (check_distribution's result is float32).
    exact = torch.as_tensor(group_prior, dtype=torch.float64).flatten()
    return exact / exact.sum()


def long_tail_distillation(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    class_groups: torch.Tensor,
    group_prior: Sequence[float] | torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 1.0,
    beta: float | None = None,
) -> torch.Tensor:
    """Per-sample LTKD (after Kim, CVPR 2026; our reading, docs/methods.md):
    ``T^2 (alpha KL(r_t || m_s) + beta (1/K) sum_G KL(p_t|G || p_s|G))``.

    ``m`` = the group masses of ``softmax(./T)``; ``r_t[G] ∝ m_t[G] / P_G`` the teacher's masses with
    the training share ``P_G`` of each group divided out (its group-level bias removed); the
    within-group terms are weighted equally, not by ``m_t``. No gradient flows into ``teacher_logits``.

    Args:
        student_logits, teacher_logits: (B, C). class_groups: (C,) group ids 0..K-1
            (:func:`class_groups_by_count`). group_prior: (K,) training shares P_G, all > 0.
        temperature: T > 0. alpha: weight of the cross-group term. beta: weight of the mean
            within-group term (default K: their plain sum).

    Returns:
        (B,) losses >= 0, float32 (float64 for float64 student logits).
    """
    t = check_temperature(temperature)
    check_logits("student_logits", student_logits)
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    k = check_class_groups(class_groups, student_logits.shape[1])
    log_prior = check_group_prior(group_prior, k).log()
    a = check_nonnegative("alpha", alpha)
    b = float(k) if beta is None else check_nonnegative("beta", beta)
    zs = upcast(student_logits) / t
    return (t * t) * ltkd_core(zs, teacher_logits.detach().to(zs.dtype) / t, group_columns(class_groups),
                               log_prior, a, b)


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
