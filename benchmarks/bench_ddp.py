"""The price of exact BatchNorm under data parallelism on the CPU: a DDP training step on 2 gloo ranks
with GlobalBatchNorm (the global batch's statistics, `--sync-batchnorm`, the default) over the same
step with plain BatchNorm (each rank's own statistics, `--no-sync-batchnorm`).

Figures: `global_over_plain`, the DDP step ratio (two all-reduces per BatchNorm layer and step, so it
is mostly the collectives' latency, `allreduce_us`, measured in the same processes); and
`compute_over_plain`, the same model's step in one process with the collectives taken out, i.e. what
GlobalBatchNorm's own arithmetic costs over torch's fused kernel.
"""

from __future__ import annotations

import json
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from groupdistil.models import create_model
from groupdistil.parallel import batchnorm
from groupdistil.parallel.batchnorm import convert_global_batchnorm
from timing import ce_train_step

CASES = [("cnn-small", 8, 32), ("resnet20", 32, 32)]  # model, input px, batch per rank


def _models(name: str) -> dict[str, nn.Module]:
    out = {}
    for kind in ("plain", "global"):
        torch.manual_seed(0)
        model = create_model(name, 10)
        out[kind] = convert_global_batchnorm(model) if kind == "global" else model
    return out


def _rank(rank: int, port: int, repeats: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        t = torch.zeros(129, dtype=torch.float64)
        for _ in range(10):
            dist.all_reduce(t)
        t0 = time.perf_counter()
        for _ in range(200):
            dist.all_reduce(t)
        results: dict[str, Any] = {"allreduce_us": (time.perf_counter() - t0) / 200 * 1e6}
        for name, size, batch in CASES:
            nets = {k: nn.parallel.DistributedDataParallel(m) for k, m in _models(name).items()}
            opts = {k: torch.optim.SGD(n.parameters(), lr=0.01) for k, n in nets.items()}
            gen = torch.Generator().manual_seed(rank)
            x, y = torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
            times: dict[str, list[float]] = {k: [] for k in nets}
            # Interleaved, each step between barriers so both ranks time the same step; a fixed number
            # of calls (not timing-dependent) keeps the ranks' collectives in step.
            for i in range(3 + repeats):
                for k in nets:
                    dist.barrier()
                    t0 = time.perf_counter()
                    ce_train_step(nets[k], opts[k], x, y)
                    dist.barrier()
                    if i >= 3:
                        times[k].append(time.perf_counter() - t0)
            results[name] = {k: statistics.median(v) for k, v in times.items()}
        if rank == 0:
            Path(out).write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def _compute_only(name: str, size: int, batch: int, timer, repeats: int) -> float:
    """Step time ratio global / plain in one process, GlobalBatchNorm's collectives replaced by no-ops."""
    models = _models(name)
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01) for k, m in models.items()}
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    with mock.patch.object(batchnorm.dist, "all_reduce", lambda t: None), \
            mock.patch.object(batchnorm.distributed, "is_distributed", lambda: True):
        med = timer({k: (lambda k=k: ce_train_step(models[k], opts[k], x, y)) for k in models}, repeats=repeats)
    return med["global"] / med["plain"]


def run(repeats: int, timer) -> list[dict[str, Any]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        out = str(Path(d) / "ddp.json")
        mp.spawn(_rank, args=(port, repeats, out), nprocs=2, join=True)
        measured = json.loads(Path(out).read_text())
    rows = []
    for name, size, batch in CASES:
        med = measured[name]
        rows.append({
            "case": f"{name} {size}px, 2 gloo ranks x B={batch}",
            "plain_ms": med["plain"] * 1e3, "global_ms": med["global"] * 1e3,
            "global_over_plain": med["global"] / med["plain"],
            "compute_over_plain": _compute_only(name, size, batch, timer, repeats),
            "allreduce_us": measured["allreduce_us"],
        })
    return rows
