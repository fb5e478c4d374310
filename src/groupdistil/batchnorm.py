"""Batch normalisation with the statistics of the global batch, on any device.

Under data parallelism each rank sees 1/N of the global batch. Plain BatchNorm then normalises with
its own part's mean and variance, so the run is no longer the single-process run on the global batch.
torch's ``SyncBatchNorm`` fixes that on GPUs only; :class:`GlobalBatchNorm` does the same with two
all-reduces per layer that any backend (gloo on the CPU included) supports. The engine uses torch's
on CUDA (its fused kernels) and this one elsewhere (docs/distributed.md).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from groupdistil import distributed


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) that autograd can go through: the gradient of a sum over ranks with respect to
    each rank's term is the sum over ranks of the upstream gradients."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out)
        return out


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (1d, 2d or 3d: input (B, C, *)) whose training-mode statistics are those of the
    batch summed over all ranks; outside training, or in one process, it is plain BatchNorm.

    Same parameters, buffers and state_dict keys as ``nn.BatchNorm*d``, so checkpoints are
    interchangeable. Statistics are computed in float32 and in two passes (mean, then the mean
    squared deviation) like torch's CPU kernel; the running variance is the unbiased one.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and distributed.is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        local_n = xf.new_tensor([x.numel() // x.shape[1]])
        totals = _SumOverRanks.apply(torch.cat([xf.sum(dims), local_n]))
        n = totals[-1]
        mean = totals[:-1] / n
        centred = xf - mean.view(shape)
        var = _SumOverRanks.apply(centred.square().sum(dims)) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), n.detach())
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        # momentum None means a cumulative average, as in nn.BatchNorm.
        f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * n / (n - 1).clamp_min(1)
        self.running_mean.mul_(1 - f).add_(mean.to(self.running_mean.dtype), alpha=f)
        self.running_var.mul_(1 - f).add_(unbiased.to(self.running_var.dtype), alpha=f)


def convert_global_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every ``nn.BatchNorm*d`` replaced by a :class:`GlobalBatchNorm` holding the same
    parameters and buffers (in place for children; the converted module is returned)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        new.train(module.training)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_global_batchnorm(child))
    return module
