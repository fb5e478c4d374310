"""Teachers: trained models that stay in ``eval()``, the teacher-logit cache, ensembles and post-hoc
logit adjustment.

When the training view has no random augmentation, each teacher's logits on the training split are
computed once into a memory-mapped ``.npy`` file keyed by a fingerprint of the teacher's weights and
the data (identity, labels, inputs, transform); later epochs and later runs read it. With random
augmentation the teacher runs online on every batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from groupdistil.calibration import Calibration
from groupdistil.checkpoint import atomic_write, file_sha256
from groupdistil.data.base import GroupedDataset
from groupdistil.errors import UserError
from groupdistil.loaders import HeldInputs, default_workers, held_pass
from groupdistil.losses import adjust_logits, adjust_logits_weighted
from groupdistil.objectives import class_weights_of

log = logging.getLogger("groupdistil")

COMBINE = ("mean", "agre-kd")
ADJUST = ("none", "balanced", "weighted")


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of a model's parameters and buffers (names, shapes, values)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def compute_logits(
    model: nn.Module, dataset: GroupedDataset, batch_size: int = 256, device: torch.device | str = "cpu",
    *, num_workers: int | None = None, amp: str = "none", channels_last: bool = False,
    held: HeldInputs | None = None,
) -> torch.Tensor:
    """(N, C) float32 logits of ``model`` on every sample of ``dataset``, in index order.

    Runs at the speed of the training loop's data: ``num_workers`` loader workers (default: as
    :func:`~groupdistil.loaders.default_workers` chooses), pinned memory on CUDA, inference mode,
    autocast to ``amp`` (``none``, ``bf16`` or ``fp16``) and, with ``channels_last``, NHWC images.
    The outputs stay on the device until the pass ends (one copy to the host, not one per batch).
    ``held``: the training run's holder of ``dataset``'s decoded inputs (``dataset`` being the
    training split without augmentation): read from it when full, else filled by this pass
    (:func:`~groupdistil.loaders.held_pass`), so that training's first epoch decodes nothing again.
    """
    if held is not None and len(held.split) != len(dataset):
        raise ValueError(f"held: holds {len(held.split)} samples, the dataset has {len(dataset)}")
    device = torch.device(device)
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    workers = default_workers(dataset) if num_workers is None else num_workers
    loader = held_pass(DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                  pin_memory=device.type == "cuda"), held, batch_size)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    out = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=half, enabled=half is not None):
        for x, *_ in loader:
            x = x.to(device, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(model(x).float())
    # Concatenated outside inference mode: the result is an ordinary tensor (calibration fits on it).
    return torch.cat(out).cpu() if out else torch.zeros(0, 0)


class LogitCache:
    """Teacher logits on disk: ``<dir>/<key>.npy`` (float32, N x C) and ``<key>.json`` (shape, sha256).

    Both files are written atomically; the array is checked against its recorded shape and checksum
    before use, so a truncated or tampered file is recomputed, never trusted.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.directory / f"{key}.npy", self.directory / f"{key}.json"

    def load(self, key: str, shape: tuple[int, ...], dtype: type = np.float32) -> torch.Tensor | None:
        """The cached (N, C) logits (or another array of ``dtype``), memory-mapped, or None when absent
        or invalid."""
        npy, meta_path = self.paths(key)
        if not npy.is_file() or not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if tuple(meta["shape"]) != tuple(shape) or meta["sha256"] != file_sha256(npy):
                raise ValueError("shape or checksum differs")
            arr = np.load(npy, mmap_mode="r", allow_pickle=False)
            if arr.shape != tuple(shape) or arr.dtype != dtype:
                raise ValueError("array header differs")
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise ValueError("non-finite logits")
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
            log.warning("teacher-logit cache %s is invalid (%s): recomputing", npy, e)
            return None
        return _readonly_tensor(arr)

    def store(self, key: str, logits: torch.Tensor) -> torch.Tensor:
        """Write (N, ...) values: floating point as float32, integers (group ids) as int64."""
        npy, meta_path = self.paths(key)
        t = logits.detach().cpu()
        arr = (t.float() if t.is_floating_point() else t.long()).numpy()
        atomic_write(npy, lambda f: np.save(f, arr, allow_pickle=False))
        meta = {"shape": list(arr.shape), "dtype": str(arr.dtype), "sha256": file_sha256(npy)}
        atomic_write(meta_path, lambda f: f.write(json.dumps(meta).encode()))
        return _readonly_tensor(np.load(npy, mmap_mode="r", allow_pickle=False))


def _readonly_tensor(arr: np.ndarray) -> torch.Tensor:
    # The memory map is read-only on purpose (the cache is shared by runs); torch warns about
    # non-writable arrays, but we only ever index into it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def cache_key(model: nn.Module, dataset: GroupedDataset, *extra: object) -> str:
    """The cache key of a model's outputs on a dataset: its weights' and the data's fingerprints, and
    ``extra`` for what is derived from them (features, pseudo-groups and their settings)."""
    parts = [weights_fingerprint(model), dataset.fingerprint(), *map(str, extra)]
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:24]


def penultimate_layer(model: nn.Module) -> nn.Linear:
    """The model's last ``nn.Linear`` (the classifier): its input is the penultimate feature vector."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"model {type(model).__name__}: has no linear classifier to read features from")
    return linears[-1]


def compute_logits_and_features(
    model: nn.Module, dataset: GroupedDataset, batch_size: int = 256, device: torch.device | str = "cpu",
    **speed: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, C) float32 logits and (N, D) penultimate features (the classifier's input), in one pass
    (``speed``: :func:`compute_logits`'s keywords)."""
    model.eval()
    feats: list[torch.Tensor] = []
    hook = penultimate_layer(model).register_forward_pre_hook(
        lambda _m, args: feats.append(args[0].detach().flatten(1).float().cpu())
    )
    try:
        logits = compute_logits(model, dataset, batch_size, device, **speed)
    finally:
        hook.remove()
    return logits, torch.cat(feats) if feats else torch.zeros(0, 0)


class CachedPass(NamedTuple):
    """What :func:`cached_or_computed` returns."""

    logits: torch.Tensor  # (N, C)
    features: torch.Tensor | None  # (N, D) penultimate features; None unless asked for
    status: str  # "hit" (all read from the cache) or "miss" (computed and stored)


def cached_or_computed(
    model: nn.Module,
    dataset: GroupedDataset,
    cache: LogitCache,
    n_classes: int,
    *,
    features: bool = False,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int | None = None,
    amp: str = "none",
    channels_last: bool = False,
    held: HeldInputs | None = None,
) -> CachedPass:
    """A frozen model's logits (N, C) on ``dataset``, and with ``features`` its penultimate features
    (N, D), from the cache; computed in one pass (:func:`compute_logits`, with ``num_workers``,
    ``amp``, ``channels_last`` and ``held``) and stored on a miss.

    The logits have the same key with or without features, so a student distilled after the groups
    were inferred from the same teacher reads them without another pass. Logits computed under
    ``amp`` bf16 or fp16 are other numbers than float32's: they have a key of their own.
    """
    key = cache_key(model, dataset, *([f"amp={amp}"] if amp != "none" else []))
    speed = {"num_workers": num_workers, "amp": amp, "channels_last": channels_last, "held": held}
    logits = cache.load(key, (len(dataset), n_classes))
    if not features:
        if logits is not None:
            return CachedPass(logits, None, "hit")
        return CachedPass(cache.store(key, compute_logits(model, dataset, batch_size, device, **speed)), None, "miss")
    feats = cache.load(f"{key}-features", (len(dataset), penultimate_layer(model).in_features))
    if logits is not None and feats is not None:
        return CachedPass(logits, feats, "hit")
    logits, feats = compute_logits_and_features(model, dataset, batch_size, device, **speed)
    return CachedPass(cache.store(key, logits), cache.store(f"{key}-features", feats), "miss")


@dataclass
class TeacherMember:
    """One teacher: a frozen model, its post-hoc adjustment, and its cached logits when available."""

    model: nn.Module
    adjust: str = "none"
    tau: float = 1.0
    class_weights: torch.Tensor | None = None  # lambda of a robust teacher, for adjust="weighted"
    cached: torch.Tensor | None = None  # (N, C) logits on the training split, indexed by sample index
    calibration: Calibration | None = None  # applied to the raw (cached) logits, before ``adjust``

    def __post_init__(self) -> None:
        if self.adjust not in ADJUST:
            raise UserError(f"adjust: expected one of {', '.join(ADJUST)}, got {self.adjust!r}")
        if self.adjust == "weighted" and self.class_weights is None:
            raise UserError("adjust: 'weighted' needs class_weights (lambda of a robust teacher)")

    def raw_logits(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if self.cached is not None:
            return self.cached.index_select(0, index.cpu().long()).to(x.device, torch.float32)
        with torch.no_grad():
            return self.model(x).float()


class Teacher(nn.Module):
    """Teacher logits for a training batch: one model, or an ensemble combined by ``mean`` or
    ``agre-kd`` (Kenfack et al., 2025).

    The ensemble's target is a (weighted) mean of the members' probabilities at temperature T; it is
    returned as logits ``T * log p`` so that ``softmax(logits / T) = p`` feeds any KD loss unchanged.

    Args:
        members: the teachers. class_prior: (C,) training class frequencies (for adjustments).
        combine: ``mean`` or ``agre-kd``. reference: AGRE-KD's biased reference model.
        temperature: T of the distillation loss.
    """

    def __init__(
        self,
        members: Sequence[TeacherMember],
        class_prior: torch.Tensor,
        combine: str = "mean",
        reference: TeacherMember | None = None,
        temperature: float = 4.0,
    ) -> None:
        super().__init__()
        if not members:
            raise UserError("`teacher.checkpoints`: expected at least one teacher checkpoint")
        if combine not in COMBINE:
            raise UserError(f"`teacher.combine`: expected one of {', '.join(COMBINE)}, got {combine!r}")
        if combine == "agre-kd" and reference is None:
            raise UserError("`teacher.reference`: AGRE-KD needs a biased reference model checkpoint")
        self.members = list(members)
        #: One entry per calibrated member (:func:`groupdistil.calibration.calibration_report`).
        self.calibration_report: list[dict[str, Any]] = []
        self.reference = reference
        self.combine = combine
        self.temperature = float(temperature)
        self.register_buffer("class_prior", class_prior.float())
        # The teacher never trains: freeze it whatever the student does (mdistiller's habit).
        for m in self._models():
            m.eval()
            m.requires_grad_(False)

    def _models(self) -> list[nn.Module]:
        ms = [m.model for m in self.members]
        return ms + ([self.reference.model] if self.reference is not None else [])

    def train(self, mode: bool = True) -> Teacher:
        super().train(mode)
        for m in self._models():
            m.eval()
        return self

    def _member_logits(self, member: TeacherMember, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        t = member.raw_logits(x, index)
        if member.calibration is not None:
            t = member.calibration(t)
        if member.adjust == "balanced":
            t = adjust_logits(t, self.class_prior, member.tau)
        elif member.adjust == "weighted":
            t = adjust_logits_weighted(t, member.class_weights, self.class_prior)
        return t

    @torch.no_grad()
    def forward(
        self, x: torch.Tensor, index: torch.Tensor, student_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher logits (B, C) for inputs x (B, ...) with dataset indices ``index`` (B,)."""
        logits = [self._member_logits(m, x, index) for m in self.members]
        if len(logits) == 1 and self.combine == "mean":
            return logits[0]
        t = self.temperature
        probs = torch.stack([torch.softmax(v / t, dim=1) for v in logits])  # (M, B, C)
        if self.combine == "mean":
            target = probs.mean(0)
        else:
            if student_logits is None:
                raise ValueError("student_logits: AGRE-KD weights need the student's logits")
            p_s = torch.softmax(student_logits.detach().float() / t, dim=1)
            p_b = torch.softmax(self._member_logits(self.reference, x, index) / t, dim=1)
            w = agre_weights(p_s, probs, p_b)  # (M, B)
            w = torch.where(w.sum(0, keepdim=True) > 0, w, torch.ones_like(w))
            target = (w.unsqueeze(2) * probs).sum(0) / w.sum(0).unsqueeze(1)
        return t * target.clamp_min(1e-12).log()


def agre_weights(p_s: torch.Tensor, p_m: torch.Tensor, p_b: torch.Tensor) -> torch.Tensor:
    """AGRE-KD per-sample teacher weights ``1 - cos(p_s - p_m, p_s - p_b)``.

    For the student's final linear layer the gradient of KD is ``(p_s - p_m) features^T``, so the
    cosine between two teachers' gradients is the cosine of the probability differences: no extra
    backward pass is needed.

    Args:
        p_s: (B, C) student probabilities. p_m: (M, B, C) teachers'. p_b: (B, C) reference's.

    Returns:
        (M, B) weights in [0, 2].
    """
    return 1 - torch.cosine_similarity(p_s - p_m, (p_s - p_b).unsqueeze(0), dim=2)


def teacher_class_weights(checkpoint: dict[str, Any]) -> torch.Tensor | None:
    """lambda of a robust teacher (:func:`groupdistil.objectives.class_weights_of`), if the checkpoint
    has one."""
    q = class_weights_of(checkpoint.get("objective") or {})
    return None if q is None else q.float()
