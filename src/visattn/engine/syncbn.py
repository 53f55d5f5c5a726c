"""BatchNorm with the statistics of the whole global batch in a multi-process run (``--sync-bn``).

Under DistributedDataParallel every process sees B / W images of a global batch of B, and a plain
BatchNorm normalises with the statistics of its own shard. Synchronised BatchNorm (Ioffe and
Szegedy, arXiv:1502.03167, Algorithm 1 over the global batch) uses

    mean = (1 / n) sum_r sum_i x_ri,   var = (1 / n) sum_r sum_i (x_ri - mean)^2,
    y = (x - mean) / sqrt(var + eps) * gamma + beta,

with the sums over every process r and every value i of a channel (n = all of them), so W
processes compute what one process computes on the whole batch. The running statistics are
updated as ``nn.BatchNorm`` does (unbiased variance n / (n - 1)).

On CUDA :func:`convert_sync_batchnorm` uses ``torch.nn.SyncBatchNorm``. PyTorch's class refuses
CPU tensors, so elsewhere it uses :class:`SyncBatchNorm` below: two differentiable all-reduces
(the sum and count, then the squared deviations from the global mean) whose backward
all-reduces the gradients, so every process gets the gradient of the global batch's
statistics. The arithmetic is float32 (float64 for float64 inputs). Outside a multi-process
training step (one process, or evaluation mode) it is exactly ``nn.BatchNorm``.

Tests: ``tests/engine/test_engine_syncbn.py`` and, end to end under torchrun,
``tests/engine/test_engine_distributed.py``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..functional._norm_fusion import update_running_stats

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm"]


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes of ``group``; the gradient of every process's copy of the sum
    reaches every input, so the backward is the same sum of the incoming gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:  # type: ignore[override]
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=ctx.group)
        return out, None


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over (N, C, ...) inputs whose training statistics span all processes.

    Same arguments, parameters and buffers as ``nn.BatchNorm2d`` (so state dicts are
    interchangeable), plus ``process_group`` (default: the whole world).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: dist.ProcessGroup | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"input: expected at least 2-D (N, C, ...), got {input.dim()}-D")

    def _synchronised(self) -> bool:
        # Training mode only, like torch.nn.SyncBatchNorm: evaluation is sharded unevenly, and a
        # collective that not every process reaches would hang.
        return (
            self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size(self.process_group) > 1
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not self._synchronised():
            return super().forward(input)
        group = self.process_group or dist.group.WORLD
        dims = [0, *range(2, input.dim())]
        x = input.to(torch.promote_types(input.dtype, torch.float32))
        local_count = x.numel() // x.shape[1]
        sums = torch.cat([x.sum(dims), x.new_full((1,), float(local_count))])
        sums = _AllReduceSum.apply(sums, group)
        count = sums[-1].detach()
        mean = sums[:-1] / count
        shape = [1, -1] + [1] * (input.dim() - 2)
        centred = x - mean.reshape(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims), group) / count
        y = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats and self.training and self.running_mean is not None:
            update_running_stats(self, mean.detach(), var.detach(), float(count))
        return y.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d/3d`` in ``module`` by a synchronised BatchNorm.

    CUDA: ``torch.nn.SyncBatchNorm``; other devices: :class:`SyncBatchNorm`. Parameters and
    buffers are the same objects (an optimiser built before keeps working) and state-dict keys
    do not change. Returns the converted module (a new one only if ``module`` itself was a
    BatchNorm).
    """
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, SyncBatchNorm | nn.SyncBatchNorm
    ):
        new = SyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        if module.affine:
            new.weight = module.weight
            new.bias = module.bias
        new.running_mean = module.running_mean
        new.running_var = module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child, device_type)
        if converted is not child:
            setattr(module, name, converted)
    return module
