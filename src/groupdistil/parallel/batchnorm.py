"""Batch normalisation with the statistics of the global batch, on any device.

Under data parallelism each rank sees 1/N of the global batch. Plain BatchNorm then normalises with
its own part's mean and variance, so the run is no longer the single-process run on the global batch.
torch's ``SyncBatchNorm`` fixes that on GPUs only; :class:`GlobalBatchNorm` does the same with one
all-reduce per layer in the forward pass and one in the backward, which any backend (gloo on the CPU
included) supports. The engine uses torch's on CUDA (its fused kernels) and this one elsewhere
(docs/distributed.md).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from groupdistil.parallel import distributed


class _GlobalBatchNormFn(torch.autograd.Function):
    """Training-mode batch norm of a rank's part ``x`` (B, C, *) with the global batch's statistics.

    Forward: per-rank mean and variance, combined over ranks in float64 with one
    all-reduce, then torch's own (fused) normalisation with those statistics. Backward: the usual
    batch-norm gradient, whose two batch sums are global sums (one all-reduce):
    ``dx = w / sigma * (dy - sum(dy) / N - xhat * sum(dy * xhat) / N)``, sums over every rank's part;
    ``dw`` and ``db`` are the rank's own sums (DDP adds them up). Written out rather than left to
    autograd over elementwise ops, which cost about 2x the step of a small CNN on the CPU.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        dims = [0, *range(2, x.dim())]
        n_local = x.numel() // x.shape[1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        # Two passes over the rank's part (mean, then squared deviations): as precise as a variance
        # gets, and several times faster than torch.var_mean's reduction over (B, H, W) on the CPU.
        mean_l = x.sum(dims) / n_local
        m2_l = (x - mean_l.view(shape)).square_().sum(dims)
        mean_l, m2_l = mean_l.double(), m2_l.double()
        # Sums of x and x^2 per channel; float64 keeps E[x^2] - E[x]^2 exact enough.
        packed = torch.cat([mean_l * n_local, m2_l + mean_l.square() * n_local, mean_l.new_tensor([n_local])])
        dist.all_reduce(packed)
        c = x.shape[1]
        n = packed[-1]
        mean = packed[:c] / n
        var = (packed[c:2 * c] / n - mean.square()).clamp_min(0)
        mean, var = mean.to(x.dtype), var.to(x.dtype)
        y = F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, weight, mean, var, invstd)
        ctx.n, ctx.eps = float(n), eps
        ctx.mark_non_differentiable(mean, var, n)
        return y, mean, var, n

    @staticmethod
    def backward(
        ctx: Any, dy: torch.Tensor, *_: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        x, weight, mean, var, invstd = ctx.saved_tensors
        # torch's fused eval-mode backward with the global statistics gives, in one pass, the rank's
        # sums sum(dy * xhat) and sum(dy) and the part of dx without the batch terms, w / sigma * dy.
        dx, sum_dy_xhat, sum_dy = torch.ops.aten.native_batch_norm_backward(
            dy.contiguous(memory_format=_layout(x)), x, weight, mean, var, None, None, False, ctx.eps,
            [True, True, True],
        )
        totals = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(totals)
        c = x.shape[1]
        k = weight * invstd
        # dx -= w / sigma * (sum(dy) / N + xhat * sum(dy * xhat) / N), written as x * c1 + c0.
        c1 = -k * invstd * totals[c:] / ctx.n
        c0 = -k * totals[:c] / ctx.n - c1 * mean
        shape = [1, -1] + [1] * (x.dim() - 2)
        dx = dx.addcmul_(x, c1.view(shape)).add_(c0.view(shape))
        return dx, sum_dy_xhat, sum_dy, None


def _layout(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (1d, 2d or 3d: input (B, C, *)) whose training-mode statistics are those of the
    batch summed over all ranks; outside training, or in one process, it is plain BatchNorm.

    Same parameters, buffers and state_dict keys as ``nn.BatchNorm*d``, so checkpoints are
    interchangeable. Statistics are computed in float32 (float64 across ranks), the normalisation
    runs in float32 whatever the input's dtype; the running variance is the unbiased one.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and distributed.is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        weight = self.weight if self.affine else x.new_ones(c, dtype=torch.float32)
        bias = self.bias if self.affine else x.new_zeros(c, dtype=torch.float32)
        y, mean, var, n = _GlobalBatchNormFn.apply(x.float(), weight, bias, self.eps)
        if self.track_running_stats:
            self._update_running_stats(mean, var, n)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        # momentum None means a cumulative average, as in nn.BatchNorm.
        f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (n / (n - 1).clamp_min(1)).to(var.dtype)
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
