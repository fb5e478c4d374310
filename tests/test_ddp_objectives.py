"""Data-parallel exactness: two gloo ranks on uneven halves of a batch give the single-process q and
gradients on the whole batch (METHODS.md: per-group sums and counts are all-reduced before the update),
also through BatchNorm layers once they are GlobalBatchNorm."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import groupdistil as gd
from conftest import free_port
from groupdistil.parallel.batchnorm import convert_global_batchnorm

N_GROUPS, N_CLASSES, N_FEATURES, BATCH, SPLIT, STEPS = 3, 3, 5, 16, 5, 3
CONTEXT = {
    "n_groups": N_GROUPS,
    "n_classes": N_CLASSES,
    "group_counts": [30.0, 10.0, 2.0],
    "class_prior": [0.5, 0.3, 0.2],
}
#: case -> (objective name, options)
CASES: dict[str, tuple[str, dict[str, object]]] = {
    "groupdistil": ("groupdistil", {"step_size": 0.5, "adjustment": 1.0}),
    "groupdistil-dro-on-kd": ("groupdistil", {"step_size": 0.5, "dro_on": "kd"}),
    "class-robust-kd": ("class-robust-kd", {"step_size": 0.5, "mode": "tradeoff", "beta": 0.5}),
    "reweight": ("reweight", {}),
    "kd": ("kd", {"alpha": 0.7}),
    # A model with BatchNorm, converted to GlobalBatchNorm on the ranks; "plain" keeps nn.BatchNorm1d,
    # which normalises each rank's part with its own statistics and so must differ.
    "groupdistil-batchnorm": ("groupdistil", {"step_size": 0.5}),
    "groupdistil-plain-batchnorm": ("groupdistil", {"step_size": 0.5}),
}


def _data(step: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, N_FEATURES, generator=g)
    teacher = 2 * torch.randn(BATCH, N_CLASSES, generator=g)
    y = torch.randint(0, N_CLASSES, (BATCH,), generator=g)
    groups = torch.randint(0, N_GROUPS, (BATCH,), generator=g)
    return x, y, groups, teacher


def _train(case: str, rank: int | None) -> dict[str, torch.Tensor]:
    """STEPS of SGD with one objective; rank None is the single process on the whole batch."""
    torch.manual_seed(0)
    model: nn.Module = nn.Linear(N_FEATURES, N_CLASSES)
    if case.endswith("batchnorm"):
        model = nn.Sequential(nn.Linear(N_FEATURES, 8), nn.BatchNorm1d(8, momentum=0.3), nn.ReLU(),
                              nn.Linear(8, N_CLASSES))
        if rank is not None and "plain" not in case:
            model = convert_global_batchnorm(model)
    if rank is not None:
        model = DistributedDataParallel(model, broadcast_buffers=False)
    name, options = CASES[case]
    objective = gd.build_objective(name, **CONTEXT, **options)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(STEPS):
        x, y, groups, teacher = _data(step)
        # Uneven shards: exactness must not depend on equal local batch sizes.
        part = slice(None) if rank is None else (slice(0, SPLIT) if rank == 0 else slice(SPLIT, None))
        optimiser.zero_grad()
        out = objective(model(x[part]), y[part], groups[part], teacher[part])
        out.loss.backward()
        optimiser.step()
    result = {name: p.detach().clone() for name, p in model.state_dict().items()}
    result = {k.removeprefix("module."): v for k, v in result.items()}
    result["loss"] = out.loss.detach()
    if out.weights is not None:
        result["weights"] = out.weights
    return result


def _leave() -> NoReturn:
    """End a spawned rank that ran DDP without the interpreter's finalisation, as the command does
    (`distributed.exit_process`): DDP keeps the process group alive inside torch, and a gloo thread
    that releases a tensor while the interpreter finalises aborts the process ("terminate called
    without an active exception", SIGABRT), a finished rank that mp.spawn reports as failed (1 of
    about 30 fresh-clone runs of the suite)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)  # two ranks on a small CI machine: no thread oversubscription
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.save({case: _train(case, rank) for case in CASES}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    _leave()  # an error above propagates to mp.spawn as usual



@pytest.mark.slow  # two spawned interpreters importing torch: ~6 s on an idle 2-core machine
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for case in CASES:
        single = _train(case, None)
        if "plain" in case:
            assert not torch.allclose(ranks[0][case]["0.weight"], single["0.weight"], atol=1e-3)
            continue
        for shard in ranks:
            got = shard[case]
            assert set(got) == set(single), case
            for key, value in single.items():
                torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-5, msg=f"{case}: {key}")
    # The trajectory moved the weights: comparing them tests something.
    assert not torch.allclose(ranks[0]["groupdistil"]["weights"], torch.full((N_GROUPS,), 1 / N_GROUPS))


# ---- GlobalBatchNorm alone: 4-D input, channels_last, no affine, cumulative running average ----------

BN_VARIANTS = {"affine": {}, "no-affine": {"affine": False}, "cumulative": {"momentum": None}}


def _bn_case(variant: str, part: slice, channels_last: bool) -> dict[str, torch.Tensor]:
    """Two training-mode calls of a BatchNorm2d on ``x[part]``; what a rank (or one process) sees."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(10, 3, 4, 5, generator=g) * 3 + 2
    r = torch.randn(10, 3, 4, 5, generator=g)
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, **BN_VARIANTS[variant])
    if bn.affine:
        nn.init.uniform_(bn.weight, 0.5, 1.5)
        nn.init.uniform_(bn.bias, -1, 1)
    if dist.is_initialized():
        bn = convert_global_batchnorm(bn)
    xs = x[part].clone()
    if channels_last:
        xs = xs.contiguous(memory_format=torch.channels_last)
    xs.requires_grad_(True)
    for _ in range(2):
        y = bn(xs)
        (y * r[part]).sum().backward()
    out = {"y": y.detach(), "dx": xs.grad, **{k: v.clone() for k, v in bn.state_dict().items()}}
    if bn.affine:
        out.update(dw=bn.weight.grad, db=bn.bias.grad)
    return out


def _bn_worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        part = slice(0, 3) if rank == 0 else slice(3, None)  # uneven: 3 and 7 samples
        torch.save({(v, cl): _bn_case(v, part, cl) for v in BN_VARIANTS for cl in (False, True)},
                   Path(out_dir) / f"bn{rank}.pt")
    finally:
        dist.destroy_process_group()
    _leave()


@pytest.mark.slow  # two spawned interpreters importing torch
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_global_batchnorm_on_two_ranks_is_batchnorm_on_the_whole_batch(tmp_path: Path) -> None:
    mp.spawn(_bn_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"bn{r}.pt") for r in range(2)]
    for key in ranks[0]:
        variant, _ = key
        whole = _bn_case(variant, slice(None), channels_last=False)
        got = {k: torch.cat([ranks[0][key][k], ranks[1][key][k]]) for k in ("y", "dx")}
        for k in ("y", "dx"):
            torch.testing.assert_close(got[k], whole[k], rtol=1e-5, atol=1e-5, msg=f"{key}: {k}")
        for k in ("running_mean", "running_var", "num_batches_tracked"):
            if k in whole:
                for shard in ranks:
                    torch.testing.assert_close(shard[key][k], whole[k], rtol=1e-5, atol=1e-6, msg=f"{key}: {k}")
        if "dw" in whole:  # each rank's share of the parameter gradients; DDP adds them up
            for k in ("dw", "db"):
                total = ranks[0][key][k] + ranks[1][key][k]
                torch.testing.assert_close(total, whole[k], rtol=1e-5, atol=1e-5, msg=f"{key}: {k}")
