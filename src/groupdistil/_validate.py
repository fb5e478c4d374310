"""Argument checks shared by the public functions: each raises ``ValueError`` naming the argument."""

from __future__ import annotations

import math
import numbers
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from groupdistil.errors import UserError


def _is_real(value: object) -> bool:
    # numbers.Real also admits numpy scalars, which configs and sweeps often hand over.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def shape_of(value: object) -> object:
    """What an error message shows of a value expected to be a tensor: its shape, else its type name."""
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def check_temperature(temperature: float) -> float:
    """A temperature T: a finite number > 0, returned as float."""
    if not _is_real(temperature) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature: expected a finite number > 0, got {temperature!r}")
    return float(temperature)


def check_unit_interval(name: str, value: float) -> float:
    """A number in [0, 1] (e.g. alpha, beta), returned as float."""
    # NaN fails the comparison, so it is rejected too.
    if not _is_real(value) or not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: float) -> float:
    """A finite number >= 0 (e.g. a step size), returned as float."""
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


def check_finite(name: str, value: float) -> float:
    """A finite real number (e.g. a logit-adjustment strength), returned as float."""
    if not _is_real(value) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def check_positive_int(name: str, value: int) -> int:
    """An integer >= 1 (a number of groups or classes, a step count), returned as int."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


def check_logits(name: str, logits: torch.Tensor) -> None:
    """A (B, C) floating-point tensor with C >= 1."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ValueError(f"{name}: expected a (B, C) tensor, got shape {shape_of(logits)}")
    if not logits.dtype.is_floating_point:
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {logits.dtype}")
    if logits.shape[1] < 1:
        raise ValueError(f"{name}: expected at least one class, got shape {tuple(logits.shape)}")


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """``b`` (a tensor) has the shape of ``a``; the message names ``b``."""
    if not isinstance(b, torch.Tensor):
        raise ValueError(f"{name_b}: expected a tensor of shape {tuple(a.shape)}, got {type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(
            f"{name_b}: expected the shape of {name_a} {tuple(a.shape)}, got {tuple(b.shape)}"
        )


def check_labels(name: str, labels: torch.Tensor, batch: int, n_values: int) -> None:
    """Check a (B,) integer tensor of ids in [0, n_values)."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(f"{name}: expected a ({batch},) integer tensor, got shape {shape_of(labels)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"{name}: expected an integer tensor, got dtype {labels.dtype}")
    if labels.numel():
        # One reduction and one host sync for both bounds.
        lo, hi = (int(v) for v in torch.aminmax(labels))
        if lo < 0 or hi >= n_values:
            raise ValueError(f"{name}: expected ids in [0, {n_values}), got values in [{lo}, {hi}]")


def as_group_vector(name: str, value: float | Sequence[float] | torch.Tensor, n: int) -> torch.Tensor:
    """A scalar or a length-n sequence as a float32 (n,) tensor."""
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(n).clone()
    if t.numel() != n:
        raise ValueError(f"{name}: expected a scalar or {n} values, got {t.numel()} values")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: expected finite values, got {t.tolist()}")
    return t


def check_distribution(name: str, value: Sequence[float] | torch.Tensor, n: int) -> torch.Tensor:
    """A probability vector over n entries, as float32; rejects negatives and sums far from 1."""
    t = torch.as_tensor(value, dtype=torch.float64).flatten()
    if t.numel() != n:
        raise ValueError(f"{name}: expected {n} probabilities, got {t.numel()} values")
    if not torch.isfinite(t).all() or (t < 0).any() or abs(float(t.sum()) - 1.0) > 1e-4:
        raise ValueError(
            f"{name}: expected a distribution (non-negative, summing to 1), got sum "
            f"{float(t.sum()):.6g} with min {float(t.min()):.6g}"
        )
    return (t / t.sum()).float()


def refuse_file(path: Path, option: str) -> None:
    """Refuse, as one :class:`UserError` line naming ``option``, a folder path that is an existing file."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: is an existing file; expected a folder")


def check_writable_folder(path: Path | str, option: str) -> None:
    """Refuse, as one :class:`UserError` line naming ``option``, a folder we could not create or write:
    an existing file, a path under a file (``/dev/null/x``), a location this process may not write.

    Writability is probed by creating and removing an empty folder in the nearest existing ancestor:
    ``os.access`` says yes to root even on /sys or a read-only mount. Nothing is left behind.
    """
    p = Path(path)
    refuse_file(p, option)
    base = next(a for a in (p, *p.absolute().parents) if a.exists() or a.is_symlink())
    if not base.is_dir():
        raise UserError(f"{option} {p}: {base} is not a folder; expected a path under a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".groupdistil-probe-", dir=base))
    except OSError as e:
        raise UserError(f"{option} {p}: cannot write in {base} ({e.strerror or e})") from None
