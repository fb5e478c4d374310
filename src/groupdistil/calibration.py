"""Teacher calibration before distillation: undo a training-time logit adjustment, or fit temperature
or vector scaling on the validation split.

Every option is a per-class affine map of the teacher's logits, ``t' = scale * t + bias`` with
(C,) ``scale`` and ``bias``, applied after the (cached, raw) teacher logits are read, so the
teacher-logit cache always holds raw logits and its key does not depend on the calibration.

- ``undo-adjust``: a ``balanced`` teacher was trained on ``ce(s + tau log pi, y)`` and a
  ``robust-teacher`` on ``ce(s + tau log pi - log lambda, y)``; adding that shift back to ``s``
  restores estimates of the training class probabilities. tau and pi are recorded in the teacher's
  checkpoint (``logit_adjustment``), lambda is the objective state saved with it.
- ``temperature`` (Guo et al., 2017): ``t / T``, one T > 0.
- ``vector``: ``w * t + b``, per-class ``w`` and ``b``.

The last two minimise the validation NLL of the frozen teacher with L-BFGS in float64 from a fixed
start (deterministic).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from groupdistil.data.base import GroupedDataset
from groupdistil.errors import UserError
from groupdistil.groups import Grouping
from groupdistil.metrics import GroupMetrics

CALIBRATE = ("none", "undo-adjust", "temperature", "vector")
#: L-BFGS iterations of temperature and vector scaling ("a few hundred").
FIT_STEPS = 300


@dataclass
class Calibration:
    """``t' = scale * t + bias`` for (B, C) teacher logits; ``scale`` and ``bias`` are (C,)."""

    method: str
    scale: torch.Tensor
    bias: torch.Tensor

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, C) logits -> (B, C) calibrated logits, in the logits' dtype (float32 at least)."""
        dtype = torch.promote_types(logits.dtype, torch.float32)
        scale = self.scale.to(logits.device, dtype)
        return logits.to(dtype) * scale + self.bias.to(logits.device, dtype)

    def params(self) -> dict[str, Any]:
        """JSON-ready description (for final.json)."""
        return {"method": self.method, "scale": self.scale.tolist(), "bias": self.bias.tolist()}


def undo_adjustment(record: dict[str, Any] | None, class_weights: torch.Tensor | None, path: Path) -> Calibration:
    """The inverse of the logit adjustment a teacher was trained with.

    Args:
        record: the checkpoint's ``logit_adjustment`` (``method``, ``tau``, ``prior`` (C,)), or None.
        class_weights: (C,) lambda of a ``robust-teacher`` checkpoint, else None.
        path: the checkpoint, for the error message.

    Raises:
        UserError: the checkpoint records no adjustment (an ERM teacher, or one saved before the
            record existed), or a robust teacher's lambda is missing.
    """
    if not record:
        raise UserError(f"`teacher.calibrate` undo-adjust: {path} records no logit adjustment (expected a "
                        "balanced or robust-teacher checkpoint that stores tau and the class prior)")
    prior = torch.as_tensor(record["prior"], dtype=torch.float64)
    # The same clamps as the training objectives, so the inverse is exact for pi = 0 or lambda = 0 too.
    bias = float(record["tau"]) * prior.clamp_min(1e-12).log()
    if record.get("uses_lambda"):
        if class_weights is None:
            raise UserError(f"`teacher.calibrate` undo-adjust: {path} is a robust teacher without its lambda")
        bias = bias - class_weights.to(torch.float64).clamp_min(1e-12).log()
    return Calibration("undo-adjust", torch.ones_like(bias), bias)


def _lbfgs(params: list[torch.Tensor], loss: Callable[[], torch.Tensor], steps: int) -> None:
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    opt.step(closure)


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, steps: int = FIT_STEPS) -> Calibration:
    """Temperature scaling fitted by NLL on (N, C) validation logits and (N,) labels."""
    z = logits.detach().to(torch.float64)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # T = exp(log_t) > 0
    _lbfgs([log_t], lambda: F.cross_entropy(z / log_t.exp(), y), steps)
    inv_t = (-log_t.detach()).exp()
    return Calibration("temperature", inv_t.expand(z.shape[1]).clone(), torch.zeros(z.shape[1], dtype=torch.float64))


def fit_vector(logits: torch.Tensor, y: torch.Tensor, steps: int = FIT_STEPS) -> Calibration:
    """Vector scaling ``w * t + b`` fitted by NLL on (N, C) validation logits and (N,) labels."""
    z = logits.detach().to(torch.float64)
    w = torch.ones(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    _lbfgs([w, b], lambda: F.cross_entropy(z * w + b, y), steps)
    return Calibration("vector", w.detach(), b.detach())


def nll(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Mean negative log-likelihood of (N, C) logits for (N,) labels."""
    return float(F.cross_entropy(logits.detach().to(torch.float64), y))


def class_ece(logits: torch.Tensor, dataset: GroupedDataset, grouping: Grouping) -> dict[str, float | None]:
    """Per-class ECE (15 bins, as the evaluation) of (N, C) logits on ``dataset``'s labels."""
    metrics = GroupMetrics(grouping.n_groups, grouping.n_classes)
    metrics.update(logits.float(), dataset.y, dataset.g)
    return metrics.summary(grouping)["class_ece"]


def fit_calibration(
    method: str, val_logits: torch.Tensor, val_y: torch.Tensor, record: dict[str, Any] | None,
    class_weights: torch.Tensor | None, path: Path,
) -> Calibration:
    """The calibration ``method`` (one of :data:`CALIBRATE` but ``none``) for one teacher.

    Args:
        val_logits: (N, C) raw teacher logits on the validation split; val_y: (N,) labels.
        record, class_weights, path: as :func:`undo_adjustment`.
    """
    if method == "undo-adjust":
        return undo_adjustment(record, class_weights, path)
    if method == "temperature":
        return fit_temperature(val_logits, val_y)
    if method == "vector":
        return fit_vector(val_logits, val_y)
    raise UserError(f"`teacher.calibrate`: expected one of {', '.join(CALIBRATE)}, got {method!r}")


def calibration_report(
    cal: Calibration, path: Path, logits: dict[str, torch.Tensor], splits: dict[str, GroupedDataset],
    grouping: Grouping,
) -> dict[str, Any]:
    """Validation NLL and per-class ECE on validation and test, before and after calibration.

    Args:
        logits: raw (N, C) teacher logits per split name ("val", "test").
    """
    out: dict[str, Any] = {"checkpoint": str(path), **cal.params()}
    for name, z in logits.items():
        y = splits[name].y
        out[name] = {
            "nll": {"before": nll(z, y), "after": nll(cal(z), y)},
            "class_ece": {"before": class_ece(z, splits[name], grouping),
                          "after": class_ece(cal(z), splits[name], grouping)},
        }
    return out
