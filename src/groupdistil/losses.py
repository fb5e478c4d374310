"""Per-sample loss terms.

Every function here returns a vector of B values (``reduction="none"``) so that any aggregation (mean,
reweighting, online group DRO) can sit on top. All terms are computed with ``log_softmax`` in float32
*at least* (:func:`compute_dtype`): float16 and bfloat16 logits are upcast, so mixed-precision models
still get stable losses, while float64 logits stay float64 (which makes ``gradcheck`` meaningful).
"""

from __future__ import annotations

import contextlib
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
    """``x`` in :func:`compute_dtype` (``x`` itself for float32 and float64)."""
    # Even a no-op ``.to`` is an operator call (about 10 us on a busy CPU): skip it.
    dtype = compute_dtype(x.dtype)
    return x if x.dtype == dtype else x.to(dtype)


def _exact(like: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
    """Autocast off where it is on for ``like``'s device: the terms' Functions compute in the dtype of
    their inputs (autocast would run ``vecdot`` in bfloat16)."""
    device = like.device.type
    return torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else contextlib.nullcontext()


def _on(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` (an index or constant) on ``like``'s device, without an operator call when it is there."""
    return x if x.device == like.device else x.to(like.device)


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


class _DKD(torch.autograd.Function):
    """DKD's two KL terms, times ``scale``, of raw logits, with the gradient written out: one fused
    ``softmax`` forward over both sides stacked into one (2, B, C) tensor, two element-wise passes
    backward, and no autograd graph of its own. The temperature and the scale (``T^2``, times DKD's
    warm-up factor in the objective) are applied inside, so that they add no autograd nodes. At
    C = 100 on a CPU the cost is the number of operator calls (each about as costly as a pass over
    the (B, C) logits): stacking the sides halves it, and the (B, 2) binary part is a few calls.

    With ``z = logits / T``, ``L_o`` the logsumexp over the non-target classes and
    ``L = logaddexp(L_o, z_y)``: ``log b = log_softmax(z_y, L_o)``, ``n_k = softmax_k`` over k != y, and
    ``KL(n_t || n_s) = sum_k n_t,k (zt_k - zs_k) - Lt_o + Ls_o`` (n_t is 0 at the target). ``L_o`` is
    read back at the row's largest non-target logit ``k'``, where ``n`` is largest, as
    ``z_k' - log n_k'`` with ``n_k'`` in [1/C, 1] (no cancellation), from two ``amax`` reductions
    (``logsumexp`` is several passes, and ``argmax`` on a CPU costs as much as an ``exp``). The
    gradient of ``alpha KL(b_t || b_s) + beta KL(n_t || n_s)`` in ``zs`` is
    ``n_s (alpha (b_s[o] - b_t[o]) + beta) - beta n_t`` off the target and ``alpha (b_s[y] - b_t[y])`` on it.
    """

    @staticmethod
    def forward(ctx: Any, s: torch.Tensor, t: torch.Tensor, y1: torch.Tensor, temperature: float,
                a: float, b: float, scale: float) -> torch.Tensor:
        batch = s.shape[0]
        t = t if t.dtype == s.dtype else t.to(s.dtype)
        x = torch.stack([s, t]).div_(temperature)  # (2, B, C): z of the student, then the teacher
        y2 = y1.expand(2, -1, -1)
        z_y = x.gather(2, y2).view(-1)
        masked = x.scatter_(2, y2, float("-inf")).view(2 * batch, -1)  # in place: x is ours
        n = torch.softmax(masked, dim=1)
        lse_o = masked.amax(dim=1) - n.amax(dim=1).log()
        log_b = torch.log_softmax(torch.stack([z_y, lse_o], dim=1), dim=1)  # (2B, 2)
        bb = log_b.exp()
        log_bs, log_bt, b_t = log_b[:batch], log_b[batch:], bb[batch:]
        tckd = torch.linalg.vecdot(b_t, log_bt - log_bs)
        lse = lse_o.view(2, batch)
        n_t = n[batch:]
        # NCKD = sum n_t (t - s) / T - Lt_o + Ls_o: (t - s) is finite at the target, where n_t is 0.
        out = (tckd.mul_(scale * a).add_(lse[0] - lse[1], alpha=scale * b)
               .add_(torch.linalg.vecdot(n_t, t - s), alpha=scale * b / temperature))
        # The gradient's (B, 2) factors: alpha (b_s - b_t), plus beta off the target.
        coef = (bb[:batch] - b_t).mul_(a)
        coef[:, 1] += b
        ctx.save_for_backward(n[:batch], n_t, coef, y1)
        ctx.b, ctx.g_scale = b, scale / temperature
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        n_s, n_t, coef, y1 = ctx.saved_tensors
        # d/ds = d/dzs / T: the (B,) factor carries grad * scale / T, so the (B, C) work is two passes.
        gs = grad.mul(ctx.g_scale).unsqueeze(1)
        c = coef * gs
        g = n_s * c[:, 1:]
        g.addcmul_(n_t, gs, value=-ctx.b)
        return g.scatter_(1, y1, c[:, :1]), None, None, None, None, None, None


def dkd_core(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, temperature: float,
             alpha: float, beta: float, scale: float) -> torch.Tensor:
    """(B,) ``scale (alpha TCKD + beta NCKD)`` of checked (B, C) logits at temperature T
    (checked), in :func:`compute_dtype`; no gradient flows into ``teacher_logits``."""
    if student_logits.shape[1] < 2:
        raise ValueError(f"student_logits: DKD needs at least 2 classes, got shape {tuple(student_logits.shape)}")
    s = upcast(student_logits)
    y1 = _on(y if y.dtype == torch.long else y.long(), s).unsqueeze(1)
    with _exact(s):
        return _DKD.apply(s, teacher_logits.detach(), y1, temperature, alpha, beta, scale)


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
    return dkd_core(student_logits, teacher_logits, y, t, a, b, t * t)


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


class GroupLayout(NamedTuple):
    """The classes laid out as a (K, n) grid, one row per group padded to the largest group's size n,
    computed once per grouping (:func:`group_layout`): the per-group reductions of LTKD are then one
    operator call each, whatever K and whatever the class numbering.

    Attributes:
        index: (K n,) int64 class id of each cell (padding cells repeat a class of their group).
        padding: (P,) int64 the padding cells; None where every group has n classes.
        back: (C,) int64 cell of each class (the inverse of ``index`` on the classes).
        n_groups, width: K and n.
    """

    index: torch.Tensor
    padding: torch.Tensor | None
    back: torch.Tensor
    n_groups: int
    width: int


def group_layout(class_groups: torch.Tensor) -> GroupLayout:
    """:class:`GroupLayout` of (C,) group ids 0..K-1 (every group non-empty)."""
    members = class_group_members(class_groups)
    k, width = len(members), max(idx.numel() for idx in members)
    index = torch.stack([torch.cat([idx, idx[:1].expand(width - idx.numel())]) for idx in members]).flatten()
    padding = torch.stack([torch.arange(width) >= idx.numel() for idx in members]).flatten()
    back = torch.empty(class_groups.numel(), dtype=torch.long)
    back[index[~padding]] = torch.arange(k * width)[~padding]
    return GroupLayout(index, padding.nonzero().flatten() if padding.any() else None, back, k, width)


class _LTKD(torch.autograd.Function):
    """LTKD, times ``scale``, of raw logits with its gradient written out (as :class:`_DKD`). Both
    sides are gathered into one (2B, K, n) grid of the groups' classes (:class:`GroupLayout`; padding
    cells hold the dtype's lowest value: no mass, and 0 in ``zt - zs``), so that each step is one
    operator call over all groups, whatever K and the class numbering: the within-group softmaxes are
    one ``exp`` pass, each group shifted by its own maximum so that none underflows, however far
    below the others it lies, and give the groups' logsumexps ``L_G``.
    ``log m = log_softmax_G(L)``; the mean within-group term is
    ``sum_k p_t|G,k (zt_k - zs_k) - sum_G (Lt_G - Ls_G)`` (one product over all cells). The gradient
    in ``zs_k``, k in G, is ``p_s|G,k (alpha (m_s[G] - r_t[G]) + beta / K) - (beta / K) p_t|G,k``."""

    @staticmethod
    def forward(ctx: Any, s: torch.Tensor, t: torch.Tensor, layout: GroupLayout, log_group_prior: torch.Tensor,
                temperature: float, a: float, b: float, scale: float) -> torch.Tensor:
        batch, k = s.shape[0], layout.n_groups
        index = _on(layout.index, s)
        z = s.new_empty(2 * batch, index.numel())
        torch.index_select(s, 1, index, out=z[:batch])
        torch.index_select(t if t.dtype == s.dtype else t.to(s.dtype), 1, index, out=z[batch:])
        z.div_(temperature)
        if layout.padding is not None:
            # Only the few padding columns are written (a full-width masked_fill costs a pass).
            z.index_fill_(1, _on(layout.padding, z), torch.finfo(z.dtype).min)
        z3 = z.view(2 * batch, k, layout.width)
        # Softmax within each group by hand: over short rows (C = 100: rows of 34) the fused softmax,
        # plus reading its logsumexp back, costs more than these passes.
        top = z3.amax(dim=2, keepdim=True)
        p = (z3 - top).exp_()
        sums = p.sum(dim=2, keepdim=True)
        p.div_(sums)
        lse = (top + sums.log()).squeeze(2)  # (2B, K): L_G of the student, then the teacher
        lse_s, lse_t = lse[:batch], lse[batch:]
        between = (lse_t - lse_s).sum(dim=1)
        lse_t.sub_(_on(log_group_prior, lse))  # in place: the teacher's rows become log(m_t / P) + const
        log_m = torch.log_softmax(lse, dim=1)  # log m_s, then log r_t
        m = log_m.exp()
        r = m[batch:]
        cross = torch.linalg.vecdot(r, log_m[batch:] - log_m[:batch])
        zz = z.view(2, batch, -1)
        w = b / k
        out = (cross.mul_(scale * a).sub_(between, alpha=scale * w)
               .add_(torch.linalg.vecdot(p[batch:].view(batch, -1), zz[1] - zz[0]), alpha=scale * w))
        ctx.save_for_backward(p[:batch], p[batch:], (m[:batch] - r).mul_(a).add_(w))
        ctx.layout, ctx.w, ctx.g_scale = layout, w, scale / temperature
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        p_s, p_t, coef = ctx.saved_tensors
        # The (B,) factor carries grad, scale and 1 / T, so the (B, K, n) work is two passes.
        gs = grad.mul(ctx.g_scale).view(-1, 1, 1)
        g = p_s * (coef.unsqueeze(2) * gs)
        g.addcmul_(p_t, gs, value=-ctx.w)
        g = g.view(g.shape[0], -1)
        return g.index_select(1, _on(ctx.layout.back, g)), None, None, None, None, None, None, None


def ltkd_core(student_logits: torch.Tensor, teacher_logits: torch.Tensor, layout: GroupLayout,
              log_group_prior: torch.Tensor, temperature: float, alpha: float, beta: float,
              scale: float) -> torch.Tensor:
    """(B,) ``scale`` times LTKD before the ``T^2`` of checked (B, C) logits at temperature T
    (checked), in :func:`compute_dtype`, over the groups of ``layout`` (:func:`group_layout`), with
    (K,) ``log P_G``; no gradient flows into ``teacher_logits``."""
    s = upcast(student_logits)
    with _exact(s):
        return _LTKD.apply(s, teacher_logits.detach(), layout, log_group_prior, temperature, alpha, beta, scale)


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
    return ltkd_core(student_logits, teacher_logits, group_layout(class_groups), log_prior, t, a, b, t * t)


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
