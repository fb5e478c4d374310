"""Devices and numeric precision: which device a run means, and the autocast and gradient scaler of
``train.amp`` (none, bf16 or fp16), on CUDA or the CPU alike."""

from __future__ import annotations

import re
from contextlib import AbstractContextManager, nullcontext

import torch

from groupdistil.config import DEVICE_PATTERN
from groupdistil.errors import ConfigError
from groupdistil.parallel import distributed


def check_device(name: str) -> torch.device:
    """The device ``name`` stands for (``auto``: CUDA when available, else CPU), checked.

    Every ``train.amp`` works on every device: autocast and the fp16 grad scaler exist for CPU and
    CUDA alike (on a CPU without bf16 or fp16 arithmetic they are slow; the runner warns).

    Raises:
        ConfigError: CUDA asked for where there is none, or a GPU index beyond the machine's.
    """
    if not re.fullmatch(DEVICE_PATTERN, name):  # TrainConfig checks it too; fit() may get a raw one
        raise ConfigError(f"`train.device` {name}: expected auto, cpu, cuda or cuda:N")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"`train.device` {name}: CUDA is not available on this machine; use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"`train.device` {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def resolve_device(name: str) -> torch.device:
    """:func:`check_device`; under torchrun an unindexed ``cuda`` is this process's GPU (``LOCAL_RANK``,
    set by :func:`groupdistil.parallel.distributed.session`): DDP needs the index."""
    device = check_device(name)
    if device.type == "cuda" and device.index is None and distributed.is_distributed():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def cpu_has_native(amp: str) -> bool:
    """Whether this CPU computes ``amp`` ("bf16" or "fp16") natively, by oneDNN's test (AVX-512 BF16
    or AMX for bf16; AVX-512 FP16 or AMX-FP16 for fp16). Elsewhere autocast emulates it, slowly."""
    probe = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[amp]
    try:
        return bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def autocast(device: torch.device, amp: str) -> AbstractContextManager[object]:
    """The autocast context of ``amp``: none, bf16 or fp16, on CUDA or the CPU.

    On a CPU without bf16 (fp16) instructions autocast is slower than float32 but runs the same
    mixed-precision path; the runner warns.
    """
    if amp == "none" or device.type not in ("cuda", "cpu"):
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def make_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """The gradient scaler of ``amp``: active for fp16 only (bf16 has float32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")
