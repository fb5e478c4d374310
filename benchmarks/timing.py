"""Timing helper: variants run interleaved (A B C A B C ...) so machine drift hits all alike; the
figure that matters is the ratio of medians measured in the same run."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

#: Each timed sample lasts at least this long: sub-millisecond calls are repeated inside one sample,
#: so the timer's resolution and one-off scheduler hiccups do not dominate the median.
MIN_SAMPLE_S = 0.05


def _calls_per_sample(fn: Callable[[], object]) -> int:
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    return max(1, math.ceil(MIN_SAMPLE_S / max(once, 1e-9)))


def interleaved(variants: dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each variant over ``repeats`` interleaved samples after ``warmup``.

    A sample times ``n`` back-to-back calls (``n`` chosen after warm-up so that a sample lasts at least
    :data:`MIN_SAMPLE_S`; 1 for calls longer than that) and divides by ``n``.
    """
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    number = {k: _calls_per_sample(fn) for k, fn in variants.items()}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            n = number[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t0) / n)
    return {k: statistics.median(v) for k, v in times.items()}


def ce_train_step(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    """One plain training step (cross-entropy forward, backward, optimiser step): what the model-cost
    benchmarks time, the objectives aside."""
    loss = nn.functional.cross_entropy(net(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
