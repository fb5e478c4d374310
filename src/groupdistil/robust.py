"""Group risks and the online group-DRO weight vector (Sagawa et al., 2020).

``group_risks`` is the one aggregation every robust objective shares. ``GroupDRO`` owns the weight
vector ``q`` on the simplex (a buffer: it is checkpointed and, under DDP, identical on every rank).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from groupdistil._validate import (
    as_group_vector,
    check_labels,
    check_nonnegative,
    check_positive_int,
    shape_of,
)
from groupdistil.losses import compute_dtype, upcast
from groupdistil.parallel import distributed

EPS = 1e-12


class GroupRisks(NamedTuple):
    """Per-group statistics of one batch, all of shape (G,), float32 (float64 for float64 losses)."""

    sums: torch.Tensor  # sum_i m[i, g] * l_i
    counts: torch.Tensor  # sum_i m[i, g]
    means: torch.Tensor  # sums / max(counts, eps); 0 for a group absent from the batch


def group_risks(
    losses: torch.Tensor,
    groups: torch.Tensor | None = None,
    n_groups: int | None = None,
    membership: torch.Tensor | None = None,
) -> GroupRisks:
    """Per-group sums, counts and means of per-sample losses.

    ``L_g = sum_i m[i, g] l_i / max(sum_i m[i, g], eps)``. Hard groups use ``index_add_`` and
    ``bincount`` (O(B + G), no B x G matrix); soft membership is a dense (B, G) matrix, O(B * G).

    Args:
        losses: (B,) per-sample losses (any float dtype; accumulated in float32 at least).
        groups: (B,) group ids in [0, n_groups), for hard groups.
        n_groups: G, required with ``groups``.
        membership: (B, G) non-negative weights ``m[i, g]``, instead of ``groups``.

    Returns:
        :class:`GroupRisks` with (G,) tensors, float32 (float64 for float64 losses).
    """
    if not isinstance(losses, torch.Tensor) or losses.dim() != 1:
        raise ValueError(f"losses: expected a (B,) tensor, got shape {shape_of(losses)}")
    values = upcast(losses)
    if (groups is None) == (membership is None):
        raise ValueError("group_risks: pass exactly one of groups (with n_groups) or membership")
    if groups is not None:
        n_groups = check_positive_int("n_groups", n_groups)
        check_labels("groups", groups, values.shape[0], n_groups)
        sums, counts = hard_group_sums(values, groups, n_groups)
    else:
        assert membership is not None
        if not isinstance(membership, torch.Tensor) or membership.dim() != 2 or (
            membership.shape[0] != values.shape[0]
        ):
            raise ValueError(f"membership: expected a ({values.shape[0]}, G) tensor, got {shape_of(membership)}")
        if n_groups is not None and membership.shape[1] != n_groups:
            raise ValueError(f"membership: expected {n_groups} columns, got {membership.shape[1]}")
        # Membership is a weight, like a target distribution: no gradient flows into it.
        m = membership.detach().to(values.dtype)
        if (m < 0).any():
            raise ValueError(f"membership: expected non-negative weights, got min {float(m.min()):.6g}")
        sums = m.t() @ values
        counts = m.sum(dim=0)
    return GroupRisks(sums, counts, sums / counts.clamp_min(EPS))


def hard_group_sums(values: torch.Tensor, groups: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(G,) sums and (G,) counts of (B,) ``values`` by (B,) ``groups``, with no checks.

    For callers that have already validated ``groups`` (the objectives check their inputs once per
    batch): ``index_add_`` and ``bincount``, O(B + G).
    """
    idx = groups.to(device=values.device, dtype=torch.long)
    sums = values.new_zeros(n_groups).index_add_(0, idx, values)
    counts = torch.bincount(idx, minlength=n_groups).to(values.dtype)
    return sums, counts


def global_risks(sums: torch.Tensor, counts: torch.Tensor) -> GroupRisks:
    """Per-group sums and counts of this rank summed over ranks, and their means.

    The one global-mean-under-DDP rule: the sums keep a gradient equal to ``world_size`` times the
    local one (:func:`groupdistil.parallel.distributed.global_sum_with_local_grad`), the counts are constants.
    DDP's gradient average then equals the gradient one process would get on the global batch.

    Args:
        sums: (G,) or () loss sums on this rank (with autograd). counts: the same shape, sample
            counts (or soft masses, or weights) on this rank.

    Returns:
        :class:`GroupRisks` of the global batch; ``means`` is ``sums / max(counts, eps)``.
    """
    if distributed.is_distributed():
        sums = distributed.global_sum_with_local_grad(sums)
        counts = distributed.all_reduce_sum(counts.detach())
    return GroupRisks(sums, counts, sums / counts.clamp_min(EPS))


class SimplexWeights(nn.Module):
    """Weights ``q`` on the simplex over G entries (groups or classes), moved by exponentiated gradient.

    The one owner of such weights: group DRO's q (:class:`GroupDRO`) and the per-class lambda of the
    class-robust objectives. ``q`` is a buffer: checkpointed and, under DDP, identical on every rank
    (every rank applies the same update to the same global values).

    Args:
        n_groups: G.
        step_size: eta >= 0 (0 keeps q fixed).
        group_counts: (G,) training samples (or frequencies) per entry. Entries with count 0 get
            weight 0 forever; q starts uniform over the others. None: all entries count 1.
    """

    q: torch.Tensor
    group_counts: torch.Tensor

    def __init__(
        self, n_groups: int, step_size: float = 0.01, group_counts: Sequence[float] | torch.Tensor | None = None
    ) -> None:
        super().__init__()
        n_groups = check_positive_int("n_groups", n_groups)
        self.n_groups = n_groups
        self.step_size = check_nonnegative("step_size", step_size)
        if group_counts is None:
            counts = torch.ones(n_groups)
        else:
            counts = as_group_vector("group_counts", group_counts, n_groups)
            if (counts < 0).any() or counts.sum() <= 0:
                raise ValueError(
                    f"group_counts: expected non-negative counts with a positive total, "
                    f"got {counts.tolist()}"
                )
        present = counts > 0
        self.register_buffer("group_counts", counts)
        self.register_buffer("q", present.float() / present.float().sum())

    def _adjusted(self, means: torch.Tensor) -> torch.Tensor:
        """(G,) the values the exponentiated gradient follows (here ``means`` themselves)."""
        return means.detach()

    @torch.no_grad()
    def update(self, means: torch.Tensor) -> None:
        """One exponentiated-gradient step on q from per-entry mean losses (G,), done in float32."""
        if not isinstance(means, torch.Tensor) or means.shape != (self.n_groups,):
            raise ValueError(f"means: expected a ({self.n_groups},) tensor, got shape {shape_of(means)}")
        # float32 at least, even if the module was cast to half: q must stay on the simplex.
        dtype = compute_dtype(self.q.dtype)
        a = self._adjusted(means.to(device=self.q.device, dtype=dtype))
        # In log space: q * exp(eta * a) overflows for large losses, the log-sum-exp form does not.
        # Groups with q = 0 have log q = -inf and stay at 0.
        logits = self.q.to(dtype).log() + self.step_size * a
        self.q.copy_(torch.softmax(logits, dim=0))


class GroupDRO(SimplexWeights):
    """Online group DRO: exponentiated-gradient weights over groups, updated every training step.

    Each training step (``self.training``): ``a_g = L_g + C_g / sqrt(n_g)``; optionally
    ``a <- a / sum(a)``; ``q <- q * exp(step_size * a)`` renormalised; the returned loss is
    ``sum_g q_g L_g`` with the *updated* q. In eval mode q is left unchanged.

    Args:
        n_groups: G.
        step_size: eta >= 0 (0 keeps q fixed: a static group weighting).
        group_counts: (G,) training samples per group. Groups with count 0 get weight 0 forever;
            the generalisation adjustment needs these counts.
        adjustment: C, a scalar or one value per group; 0 for a group means no adjustment there.
        normalize_loss: divide the adjusted losses by their sum before the update.
        sync: all-reduce per-group sums and counts across ranks when running distributed.
    """

    adjustment: torch.Tensor

    def __init__(
        self,
        n_groups: int,
        step_size: float = 0.01,
        group_counts: Sequence[float] | torch.Tensor | None = None,
        adjustment: float | Sequence[float] | torch.Tensor = 0.0,
        normalize_loss: bool = False,
        sync: bool = True,
    ) -> None:
        n_groups = check_positive_int("n_groups", n_groups)
        adj = as_group_vector("adjustment", adjustment, n_groups)
        if (adj < 0).any():
            raise ValueError(f"adjustment: expected values >= 0, got {adj.tolist()}")
        if group_counts is None and (adj > 0).any():
            raise ValueError("adjustment: needs group_counts (the training samples per group)")
        super().__init__(n_groups, step_size=step_size, group_counts=group_counts)
        self.normalize_loss = bool(normalize_loss)
        self.sync = sync
        self.register_buffer("adjustment", adj)
        # C_g / sqrt(n_g) depends on buffers only: computed once here and again after a state_dict
        # load, not on every step (at small sizes those few tensor operations cost as much as the
        # rest of the DRO update).
        self.register_buffer("bonus", self._bonus(), persistent=False)
        self.register_load_state_dict_post_hook(GroupDRO._refresh_bonus)

    def extra_repr(self) -> str:
        return (
            f"n_groups={self.n_groups}, step_size={self.step_size}, "
            f"normalize_loss={self.normalize_loss}"
        )

    def _bonus(self) -> torch.Tensor | None:
        """(G,) ``C / sqrt(n)`` (0 where C_g = 0 or n_g = 0), or None when no group has one."""
        # Per group, not all-or-nothing as in the reference code, which skips the whole adjustment
        # as soon as one C_g is 0. The clamp only guards the n_g = 0 entries that where() discards.
        has = (self.adjustment > 0) & (self.group_counts > 0)
        if not bool(has.any()):
            return None
        return torch.where(has, self.adjustment / self.group_counts.clamp_min(EPS).sqrt(), 0.0)

    @staticmethod
    def _refresh_bonus(module: nn.Module, incompatible_keys: object) -> None:
        module.bonus = module._bonus()  # type: ignore[operator]

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> GroupDRO:
        """Casts and moves as ``nn.Module``, but the persistent buffers stay float32 or wider, and
        the bonus is recomputed from the cast buffers (not cast from its float32 value).

        Why: after ``.half()`` a float16 q rounds weights under 6e-8 to 0, and they stay 0 forever;
        after ``.double()`` a bonus cast from float32 carries float32's rounding into every update.
        """
        before = {k: getattr(self, k) for k in ("q", "adjustment", "group_counts")}
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = getattr(self, name)
            if new.is_floating_point() and compute_dtype(new.dtype) != new.dtype:
                # Re-derive from the value before the cast, so nothing is rounded through float16.
                setattr(self, name, old.to(device=new.device, dtype=compute_dtype(new.dtype)))
        self.bonus = self._bonus()
        return self

    def _adjusted(self, means: torch.Tensor) -> torch.Tensor:
        """(G,) ``a = L + C / sqrt(n)`` (C_g = 0 or n_g = 0: no bonus), optionally normalised."""
        a = means.detach()
        if self.bonus is not None:
            a = a + self.bonus.to(device=a.device, dtype=a.dtype)
        if self.normalize_loss:
            # Losses are >= 0, so a zero total means a = 0; the clamp avoids 0/0 without a host sync.
            a = a / a.sum().clamp_min(EPS)
        return a

    def robust_loss(self, sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, GroupRisks]:
        """Update q (in training mode) from per-group sums and counts and return ``sum_g q_g L_g``.

        Under DDP the sums and counts are first summed over ranks, so q is the same everywhere and
        the gradient equals the single-process gradient on the global batch.

        Args:
            sums: (G,) per-group loss sums on this rank (with autograd).
            counts: (G,) per-group sample counts (or soft masses) on this rank.

        Returns:
            The scalar loss and the (global) :class:`GroupRisks` it was computed from.
        """
        r = global_risks(sums, counts) if self.sync else GroupRisks(sums, counts, sums / counts.clamp_min(EPS))
        if self.training:
            self.update(r.means)
        loss = (self.q.to(r.means.dtype) * r.means).sum()
        return loss, GroupRisks(r.sums.detach(), r.counts.detach(), r.means.detach())

    def forward(
        self,
        losses: torch.Tensor,
        groups: torch.Tensor | None = None,
        membership: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Robust loss from per-sample losses (B,) and hard group ids (B,) or membership (B, G)."""
        r = group_risks(losses, groups, self.n_groups, membership)
        return self.robust_loss(r.sums, r.counts)[0]
