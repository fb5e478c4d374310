"""The distillation term of an objective, chosen by name: ``kd`` (Hinton et al.), ``dkd`` (decoupled,
Zhao et al.) or ``ltkd`` (long-tail, after Kim). An aggregation (mean, online group DRO, class
weights) sits on top of whichever term, so any term composes with any aggregation.

Formulas and defaults: docs/methods.md, "Distillation terms".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from groupdistil._validate import check_nonnegative, check_temperature
from groupdistil.losses import (
    check_group_prior,
    class_groups_by_count,
    distillation,
    dkd_core,
    group_layout,
    ltkd_core,
)

KD_TERMS = ("kd", "dkd", "ltkd")

#: Each term's own options (the config keys) and their defaults; None: derived (ltkd_beta = K).
TERM_OPTIONS: dict[str, dict[str, Any]] = {
    "kd": {},
    "dkd": {"dkd_alpha": 1.0, "dkd_beta": 8.0, "dkd_warmup": 20},
    "ltkd": {"ltkd_alpha": 1.0, "ltkd_beta": None},
}


def _resolve(kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """The term's options with defaults filled in; an option of another term is an error."""
    if kind not in KD_TERMS:
        raise ValueError(f"kd_term: expected one of {', '.join(KD_TERMS)}, got {kind!r}")
    own = TERM_OPTIONS[kind]
    for key, value in options.items():
        if value is not None and key not in own:
            raise ValueError(f"{key}: applies to kd_term {key.split('_')[0]}, not {kind}")
    return {k: default if options.get(k) is None else options[k] for k, default in own.items()}


class DistillTerm(nn.Module):
    """Per-sample distillation term ``(B,)`` of student and teacher logits (and labels, for DKD).

    - ``kd``: ``T^2 KL(softmax(t/T) || softmax(s/T))``.
    - ``dkd``: :func:`~groupdistil.losses.decoupled_distillation` times DKD's warm-up factor
      ``min((epoch + 1) / dkd_warmup, 1)`` (1 when ``dkd_warmup`` is 0); the training loop sets
      :attr:`epoch` (0-based) at the start of each epoch, so a resumed run gets the same factor.
    - ``ltkd``: :func:`~groupdistil.losses.long_tail_distillation` with head / medium / tail groups
      from the training class prior (:func:`~groupdistil.losses.class_groups_by_count`).

    Args:
        kind: kd | dkd | ltkd. temperature: T > 0.
        class_prior: (C,) training class frequencies (needed by ``ltkd``).
        **options: ``dkd_alpha``, ``dkd_beta``, ``dkd_warmup`` (epochs) for dkd; ``ltkd_alpha``,
            ``ltkd_beta`` for ltkd; None takes the default. An option of another term is an error.
    """

    def __init__(self, kind: str = "kd", temperature: float = 4.0,
                 class_prior: Sequence[float] | torch.Tensor | None = None, **options: Any) -> None:
        super().__init__()
        opts = _resolve(kind, options)
        self.kind, self.temperature, self.epoch = kind, check_temperature(temperature), 0
        self.a = check_nonnegative(f"{kind}_alpha", opts[f"{kind}_alpha"]) if kind != "kd" else 1.0
        if kind == "dkd":
            self.b = check_nonnegative("dkd_beta", opts["dkd_beta"])
            warmup = opts["dkd_warmup"]
            if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
                raise ValueError(f"dkd_warmup: expected an integer number of epochs >= 0, got {warmup!r}")
            self.warmup = warmup
        elif kind == "ltkd":
            self._init_groups(class_prior, opts["ltkd_beta"])

    def _init_groups(self, class_prior: Sequence[float] | torch.Tensor | None, beta: float | None) -> None:
        if class_prior is None:
            raise ValueError("class_prior: kd_term ltkd needs the training class frequencies")
        prior = torch.as_tensor(class_prior, dtype=torch.float32).flatten()
        groups = class_groups_by_count(prior)
        k = int(groups.max()) + 1
        shares = torch.stack([prior[groups == g].sum() for g in range(k)])
        self.b = float(k) if beta is None else check_nonnegative("ltkd_beta", beta)
        # Not persistent: derived from the prior, so checkpoints keep the objective's state as before.
        self.register_buffer("class_groups", groups, persistent=False)
        self.register_buffer("log_group_prior", check_group_prior(shares / shares.sum(), k).log(), persistent=False)
        # The (K, n) grid of the groups' classes, computed once (its index tensors go to the logits' device at use).
        self.layout = group_layout(groups)

    def warmup_factor(self) -> float:
        """DKD's linear warm-up of the term's weight at :attr:`epoch` (1 for kd and ltkd)."""
        if self.kind != "dkd" or self.warmup == 0:
            return 1.0
        return min((self.epoch + 1) / self.warmup, 1.0)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B,) term of checked (B, C) logits and (B,) labels, float32 at least."""
        t = self.temperature
        if self.kind == "kd":
            return distillation(student_logits, teacher_logits, t)
        # T^2 (and DKD's warm-up factor) are applied inside the terms' autograd Functions.
        if self.kind == "ltkd":
            return ltkd_core(student_logits, teacher_logits, self.layout, self.log_group_prior, t, self.a, self.b,
                             t * t)
        return dkd_core(student_logits, teacher_logits, y, t, self.a, self.b, t * t * self.warmup_factor())
