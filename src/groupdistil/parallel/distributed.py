"""Thin helpers over ``torch.distributed`` that are no-ops in a single process, and the process-group
session that a ``torchrun`` launch needs (docs/distributed.md)."""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import NoReturn, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from groupdistil._omp import launched_as_cli
from groupdistil.errors import UserError

T = TypeVar("T")


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


def restart_count() -> int:
    """How many times torchrun has restarted this job's workers (``--max-restarts``); 0 otherwise."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)


def _attempt_store(rank: int, world: int) -> dict[str, object]:
    """init_process_group arguments that keep a torchrun restart from reading the failed attempt's keys.

    torchrun's c10d rendezvous shares its TCP store with the workers (``TORCHELASTIC_USE_AGENT_STORE``)
    and every attempt of a job writes the same keys there, so after ``--max-restarts`` restarts the
    workers a rank can read a dead rank's address and fail to connect (pytorch/pytorch#135712). The
    keys of each attempt go under their own prefix instead. Empty (torch's env:// default) otherwise.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    # torch's default process-group timeout, which its env:// rendezvous gives the store too: a slow
    # node may join late.
    tcp = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                        timeout=timedelta(minutes=30))
    return {"store": dist.PrefixStore(f"groupdistil/attempt_{restart_count()}", tcp), "rank": rank, "world_size": world}


#: Whether this process has initialised a process group through :func:`session` (see :func:`exit_process`).
_ran_process_group = False


@contextmanager
def session(device: str = "auto") -> Iterator[None]:
    """The default process group of a ``torchrun`` launch (``WORLD_SIZE > 1``), destroyed on exit.

    ``device`` is the run's ``--device``: CPU runs use gloo; CUDA runs bind this process to GPU
    ``LOCAL_RANK`` and use nccl for CUDA tensors and gloo for CPU ones (the metric accumulators and
    the objects :func:`on_main` broadcasts live on the CPU). A no-op in a single process, and when a
    group is already initialised: that one belongs to the caller, who destroys it.
    """
    rank_, local_rank, world = env_rank_info()
    if world <= 1 or not dist.is_available() or dist.is_initialized():
        yield
        return
    global _ran_process_group
    store = _attempt_store(rank_, world)
    _ran_process_group = True
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("cpu:gloo,cuda:nccl", device_id=torch.device("cuda", local_rank), **store)
    else:
        dist.init_process_group("gloo", **store)
    try:
        yield
    except BaseException:
        dist.destroy_process_group()  # no barrier: the other ranks may never reach it
        raise
    dist.barrier()  # rank 0 may still be writing final.json: every rank leaves with the run complete
    dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End this process with ``code``; without the interpreter's finalisation once it ran a process group.

    DDP keeps a reference to the process group inside torch, so ``destroy_process_group`` cannot
    destroy it and gloo's worker threads outlive it. Such a thread releases each finished collective's
    tensors after the collective has returned to Python, and releasing a tensor Python created takes
    the GIL. When that happens while the interpreter finalises, Python ends the thread inside a C++
    frame that may not unwind and the process aborts ("terminate called without an active exception",
    SIGABRT): a finished run that torchrun reports as failed (core dump: ``ProcessGroupGloo::runLoop``
    -> ``~AsyncBarrierWork`` -> ``~AsyncBroadcastWork`` -> ``decref_pyobject`` -> ``take_gil`` ->
    ``pthread_exit`` -> ``std::terminate``, while the main thread was in ``Py_FinalizeEx``). So a
    process that ran a process group flushes its output and leaves with ``os._exit``: finalisation,
    the only place the race can happen, never starts. Every file the run writes is closed by then;
    no ``atexit`` work of ours is skipped.

    Other processes exit normally; the ``groupdistil`` command's after ``gc.freeze()``: Python's
    finalisation collects the reference cycles among every object the process made (torch._dynamo and
    sympy alone are over a million) in several full passes, which took 0.78 s of a one-epoch run's exit
    (0.21 s frozen). ``atexit`` handlers still run and objects outside cycles are still freed; only
    objects in cycles are left to the operating system, whose ``__del__`` Python does not promise to
    call at exit anyway. Every file the command writes is closed before this. A caller that is not the
    command (``main()`` from a notebook, where ``SystemExit`` does not end the interpreter) keeps its
    collector as it was.
    """
    if not _ran_process_group:
        if launched_as_cli():
            gc.freeze()
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):  # a closed or broken pipe must not turn an exit into a traceback
            stream.flush()
    logging.shutdown()
    os._exit(code)


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_distributed():
        dist.barrier()


#: Called by rank 0 with a user error's message before the other ranks learn of it (see
#: :func:`set_error_reporter`).
_error_reporter: Callable[[str], None] | None = None


def set_error_reporter(reporter: Callable[[str], None] | None) -> None:
    """Have rank 0 report a shared user error itself, before broadcasting it.

    Once the other ranks know of the error they exit, and torchrun then stops rank 0 with SIGTERM,
    possibly before rank 0's own error handler has printed anything. Reporting first guarantees
    the user sees the message exactly once. The command line installs ``print`` to stderr here.
    """
    global _error_reporter
    _error_reporter = reporter


def _on_main(fn: Callable[[], T], share: bool) -> T | None:
    """Run ``fn`` on rank 0 and broadcast its outcome: the result when ``share``, always its error.

    A UserError on rank 0 is raised again on every rank (marked ``from_rank0`` so that the command
    line prints it once); any other exception becomes a RuntimeError there. Every rank thus leaves
    the collective together instead of waiting forever for a rank that has already failed.
    """
    if not is_distributed():
        return fn()
    box: list[object] = [None]
    result: T | None = None
    error: BaseException | None = None
    if is_main_process():
        try:
            result = fn()
            box[0] = ("ok", result if share else None)
        except Exception as e:
            error = e
            if isinstance(e, UserError):
                box[0] = ("error", (type(e), str(e)))
                if _error_reporter is not None:
                    _error_reporter(str(e))
                    e.reported = True  # type: ignore[attr-defined]
            else:  # an arbitrary exception may not pickle: send its description
                box[0] = ("error", (RuntimeError, f"rank 0 failed: {e!r}"))
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]  # type: ignore[misc]
    if error is not None:
        raise error
    if status == "error":
        kind, message = value
        copy = kind(message)
        copy.from_rank0 = True
        raise copy
    return result if is_main_process() else value


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` run by rank 0 alone, its result given to every rank (it must be picklable).

    For work on shared files that only one process may do, such as preparing the run folder.
    """
    return _on_main(fn, share=True)  # type: ignore[return-value]


def main_first(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 first, then on the other ranks once rank 0 has succeeded.

    For a file that rank 0 builds and every rank then reads, such as the teacher-logit cache: the
    others find it complete instead of computing and writing it concurrently.
    """
    result = _on_main(fn, share=False)
    return result if is_main_process() else fn()  # type: ignore[return-value]


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    Without SyncBatchNorm each rank updates its running statistics from its own batch; after an epoch
    the ranks would evaluate slightly different models. Rank 0's are the ones its checkpoints hold.
    """
    if is_distributed():
        for b in model.buffers():
            dist.broadcast(b, src=0)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside its ``torch.compile`` and DDP wrappers (the one whose state dict is saved)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP
