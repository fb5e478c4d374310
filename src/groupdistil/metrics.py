"""Per-group and per-class evaluation: accumulate over batches, all-reduce, summarise.

Everything is accumulated in a handful of small tensors with ``index_add_``/``bincount`` (no Python
loop over samples), so evaluation costs next to nothing beside the forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from groupdistil.groups import Grouping
from groupdistil.parallel import distributed

#: The headline metrics of a split (fractions in [0, 1], or None where undefined), in the order every
#: table shows them: final.json, the report, the sweep index and TensorBoard use this one tuple.
HEADLINE_METRICS = ("avg_acc", "worst_group_acc", "balanced_acc", "adjusted_avg_acc", "worst_class_acc")

N_BINS = 15  # equal-width confidence bins for ECE (docs/methods.md, "Training and evaluation choices")


def confidence_and_prediction(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) the top softmax probability and its class for (B, C) logits, on the logits' device."""
    return torch.softmax(logits.detach().float(), dim=1).max(dim=1)


class GroupMetrics:
    """Accumulates predictions of one split.

    Args:
        n_groups: G. n_classes: C.
    """

    def __init__(self, n_groups: int, n_classes: int) -> None:
        self.n_groups = n_groups
        self.n_classes = n_classes
        # Per (group, bin) and (class, bin): count, summed confidence, summed correctness.
        self.group_bins = torch.zeros(3, n_groups * N_BINS, dtype=torch.float64)
        self.class_bins = torch.zeros(3, n_classes * N_BINS, dtype=torch.float64)
        self.loss_sum = 0.0
        self.loss_count = 0
        self.term_sums: dict[str, float] = {}  # the objective's separate terms ("ce", "kd"), summed

    @torch.no_grad()
    def update(
        self,
        logits: torch.Tensor,
        y: torch.Tensor,
        g: torch.Tensor,
        loss: float | None = None,
        terms: Mapping[str, float] | None = None,
    ) -> None:
        """Add a batch: logits (B, C), labels (B,), groups (B,); ``loss`` is the batch's mean loss and
        ``terms`` the means of its separate terms (logged as ``loss_<name>``), with it."""
        self.update_predictions(*confidence_and_prediction(logits), y, g)
        if loss is not None:
            self.add_loss(loss, terms or {}, int(y.numel()))

    def update_predictions(self, conf: torch.Tensor, pred: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> None:
        """Add predictions: (B,) confidences and predicted classes (:func:`confidence_and_prediction`),
        labels and groups. One call with many batches concatenated adds exactly what one call per
        batch would (the sums run in the same order)."""
        conf, pred = conf.cpu(), pred.cpu()
        y, g = y.cpu().long(), g.cpu().long()
        correct = (pred == y).double()
        b = (conf.double() * N_BINS).long().clamp_(0, N_BINS - 1)
        stats = torch.stack([torch.ones_like(correct), conf.double(), correct])
        self.group_bins.index_add_(1, g * N_BINS + b, stats)
        self.class_bins.index_add_(1, y * N_BINS + b, stats)

    def add_loss(self, loss: float, terms: Mapping[str, float], n: int) -> None:
        """Add a batch of ``n`` samples whose mean loss is ``loss`` (and mean separate ``terms``)."""
        self.loss_sum += float(loss) * n
        self.loss_count += n
        for k, v in terms.items():
            self.term_sums[k] = self.term_sums.get(k, 0.0) + float(v) * n

    def all_reduce(self) -> None:
        """Sum the accumulators over ranks (no-op in one process)."""
        if distributed.is_distributed():
            self.group_bins = distributed.all_reduce_sum(self.group_bins)
            self.class_bins = distributed.all_reduce_sum(self.class_bins)
            t = distributed.all_reduce_sum(
                torch.tensor([self.loss_sum, float(self.loss_count), *self.term_sums.values()])
            )
            self.loss_sum, self.loss_count = float(t[0]), int(t[1])
            self.term_sums = dict(zip(self.term_sums, t[2:].tolist()))

    def state_dict(self) -> dict[str, Any]:
        """The accumulators so far, summed over ranks, as plain tensors and numbers (a mid-epoch
        checkpoint's); this object keeps its own, unreduced ones. A collective under DDP."""
        copy = GroupMetrics(self.n_groups, self.n_classes)
        copy.group_bins, copy.class_bins = self.group_bins.clone(), self.class_bins.clone()
        copy.loss_sum, copy.loss_count, copy.term_sums = self.loss_sum, self.loss_count, dict(self.term_sums)
        copy.all_reduce()
        return {"group_bins": copy.group_bins, "class_bins": copy.class_bins, "loss_sum": copy.loss_sum,
                "loss_count": copy.loss_count, "term_sums": copy.term_sums}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s accumulators. Raises ValueError when they do not fit."""
        try:
            group_bins, class_bins = state["group_bins"], state["class_bins"]
            if group_bins.shape != self.group_bins.shape or class_bins.shape != self.class_bins.shape:
                raise ValueError(f"accumulators of shape {tuple(group_bins.shape)} and {tuple(class_bins.shape)}, "
                                 f"expected {tuple(self.group_bins.shape)} and {tuple(self.class_bins.shape)}")
            loss_sum, loss_count = float(state["loss_sum"]), int(state["loss_count"])
            terms = {str(k): float(v) for k, v in state["term_sums"].items()}
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"epoch metrics: {type(e).__name__} {e}") from None
        self.group_bins, self.class_bins = group_bins.to(torch.float64), class_bins.to(torch.float64)
        self.loss_sum, self.loss_count, self.term_sums = loss_sum, loss_count, terms

    def summary(self, grouping: Grouping, train_group_counts: torch.Tensor | None = None) -> dict[str, Any]:
        """The evaluation metrics of docs/methods.md as a JSON-ready dict (accuracies in [0, 1]).

        Groups absent from the split have accuracy ``None`` and are ignored by worst/balanced.
        ``adjusted_avg_acc`` weights group accuracies by the training shares (Waterbirds convention).
        """
        gb = self.group_bins.view(3, self.n_groups, N_BINS)
        cb = self.class_bins.view(3, self.n_classes, N_BINS)
        g_n, g_correct = gb[0].sum(1), gb[2].sum(1)
        c_n, c_correct = cb[0].sum(1), cb[2].sum(1)
        g_acc = _ratio(g_correct, g_n)
        c_acc = _ratio(c_correct, c_n)
        present = g_n > 0
        c_present = c_n > 0
        total = float(g_n.sum())
        out: dict[str, Any] = {
            "n": int(total),
            "loss": self.loss_sum / self.loss_count if self.loss_count else None,
            **{f"loss_{k}": v / self.loss_count for k, v in self.term_sums.items()},
            "avg_acc": float(g_correct.sum()) / total if total else None,
            "worst_group_acc": _min(g_acc, present),
            "balanced_acc": _mean(g_acc, present),
            "adjusted_avg_acc": None,
            "worst_class_acc": _min(c_acc, c_present),
            "balanced_class_acc": _mean(c_acc, c_present),
            "group_acc": _named(grouping.group_names, g_acc, present),
            "group_count": {n: int(c) for n, c in zip(grouping.group_names, g_n.tolist())},
            "class_acc": _named(grouping.class_names, c_acc, c_present),
            "group_ece": _named(grouping.group_names, _ece(gb), present),
            "class_ece": _named(grouping.class_names, _ece(cb), c_present),
            "ece": float(_ece(gb.sum(1, keepdim=True))[0]) if total else None,
            "reliability": _reliability(gb.sum(1)),
        }
        if train_group_counts is not None and total:
            w = train_group_counts.double() * present.double()
            if w.sum() > 0:
                out["adjusted_avg_acc"] = float((w * torch.nan_to_num(g_acc)).sum() / w.sum())
        return out


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp_min(1), torch.full_like(num, math.nan))


def _min(values: torch.Tensor, mask: torch.Tensor) -> float | None:
    return float(values[mask].min()) if mask.any() else None


def _mean(values: torch.Tensor, mask: torch.Tensor) -> float | None:
    return float(values[mask].mean()) if mask.any() else None


def _named(names: tuple[str, ...], values: torch.Tensor, mask: torch.Tensor) -> dict[str, float | None]:
    return {n: (float(v) if m else None) for n, v, m in zip(names, values.tolist(), mask.tolist())}


def _ece(bins: torch.Tensor) -> torch.Tensor:
    """(K,) expected calibration error from (3, K, N_BINS) count/confidence/correct sums."""
    n, conf, correct = bins
    gap = (conf - correct).abs().sum(dim=1)  # sum over bins of n_b * |conf_b - acc_b|
    return gap / n.sum(dim=1).clamp_min(1)


def _reliability(bins: torch.Tensor) -> dict[str, list[Any]]:
    """Per-bin mean confidence, accuracy and count, from (3, N_BINS) sums."""
    n, conf, correct = bins
    return {
        "confidence": [float(c / k) if k else None for c, k in zip(conf.tolist(), n.tolist())],
        "accuracy": [float(a / k) if k else None for a, k in zip(correct.tolist(), n.tolist())],
        "count": [int(k) for k in n.tolist()],
    }


def is_better(
    candidate: dict[str, Any], best: dict[str, Any] | None, metric: str = "worst_group_acc"
) -> bool:
    """Model selection: higher ``metric`` wins, ties broken by ``avg_acc`` (docs/methods.md)."""
    if best is None:
        return True

    def key(m: dict[str, Any]) -> tuple[float, float]:
        v, a = m.get(metric), m.get("avg_acc")
        return (-math.inf if v is None else v, -math.inf if a is None else a)

    return key(candidate) > key(best)
