"""Thin helpers over ``torch.distributed`` that are no-ops in a single process."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """True on rank 0, the rank that writes logs and checkpoints."""
    return rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (a new tensor, no autograd); ``t`` itself when single-process."""
    if not is_distributed():
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def global_sum_with_local_grad(local: torch.Tensor) -> torch.Tensor:
    """A tensor whose value is the sum of ``local`` over ranks and whose gradient is
    ``world_size * d(local)``.

    DDP averages gradients over ranks; scaling the local gradient by the world size makes that
    average equal to the gradient of the global sum, i.e. the gradient one process would get on the
    concatenated global batch.
    """
    if not is_distributed():
        return local
    total = all_reduce_sum(local)
    w = world_size()
    return local * w + (total - local.detach() * w)


def env_rank_info() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) as set by torchrun, or (0, 0, 1)."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("LOCAL_RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
    )
