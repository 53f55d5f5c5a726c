"""A BatchNorm folded into the fused SE / CBAM operators, and BatchNorm's statistics bookkeeping.

``input_norm=`` of :func:`visattn.functional.squeeze_excite` / :func:`visattn.functional.cbam`
applies the block to BN(c) = gamma (c - mu) / sqrt(var + eps) + beta, the BatchNorm that
precedes SE / CBAM in a residual branch. :class:`_BatchNormThen` runs both as one autograd node:
the BatchNorm is folded into the block's operators (:mod:`visattn.kernels.ops`), BN(c) is never
stored, only c is kept for backward (the BatchNorm needs it anyway), and the BatchNorm's
backward is part of the block's last pass. Here too: the running-statistics updates that
BatchNorm's own forward would make (:func:`float_batch_stats`, :func:`update_running_stats`,
also used by :mod:`visattn.engine.syncbn`) and the mode of CBAM's spatial BatchNorm
(:func:`spatial_norm_args`).

Tests: ``tests/kernels/test_kernels_norm_fusion.py``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._modes import BnMode
from ..kernels import _fold
from ..kernels import ops as _ops  # registers torch.ops.visattn.* and their FLOP counts
from ..kernels._backend import as_dtype
from ..kernels.ops import CbamSaved, SeSaved

__all__ = ["CBAMOperators", "SEOperators", "float_batch_stats", "fuses_norm", "has_hooks",
           "norm_inputs", "spatial_norm_args", "update_running_stats"]  # fmt: skip


def has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` would run hooks (its own or global ones, as nn.Module checks)."""
    from torch.nn.modules import module as m

    return bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
        or module._backward_pre_hooks or m._global_forward_hooks
        or m._global_forward_pre_hooks or m._global_backward_hooks
        or m._global_backward_pre_hooks
    )  # fmt: skip


def fuses_norm(norm: nn.Module | None, x: torch.Tensor, params: Sequence[Any]) -> bool:
    """Whether ``norm`` then the block runs as one :class:`_BatchNormThen` node.

    Only where it saves memory and changes nothing else: a plain ``nn.BatchNorm2d`` (not a
    subclass such as ``SyncBatchNorm``) over x's channels, without hooks, while autograd records.
    """
    if norm is None or type(norm) is not nn.BatchNorm2d or norm.num_features != x.shape[1]:
        return False
    if has_hooks(norm) or not torch.is_grad_enabled():
        return False
    tensors = (x, norm.weight, norm.bias, *params)
    return any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def norm_inputs(norm: nn.BatchNorm2d, c: torch.Tensor) -> tuple:
    """(weight, bias, mean, var, eps, batch_stats) of ``norm``'s forward on c.

    Batch statistics (training mode, or no running statistics) come from
    ``torch.batch_norm_update_stats``, which also updates the running statistics exactly as
    ``nn.BatchNorm2d.forward`` would (momentum, or the cumulative average when momentum is None);
    otherwise the running statistics are used.
    """
    batch_stats = norm.training or (norm.running_mean is None and norm.running_var is None)
    if not batch_stats:
        return norm.weight, norm.bias, norm.running_mean, norm.running_var, norm.eps, False
    update = norm.training and norm.track_running_stats and norm.running_mean is not None
    factor = 0.0
    with torch.no_grad():
        if update:
            norm.num_batches_tracked.add_(1)
            momentum = norm.momentum
            factor = 1.0 / float(norm.num_batches_tracked) if momentum is None else momentum
        running = (norm.running_mean, norm.running_var) if update else (None, None)
        mean, var = float_batch_stats(c, *running, factor)
    return norm.weight, norm.bias, mean, var, norm.eps, True


def float_batch_stats(c: torch.Tensor, running_mean=None, running_var=None, factor: float = 0.0):
    """float32 (mean, biased variance) of c (N, C, H, W) per channel, as BatchNorm normalises
    with them, updating the running statistics if given (``torch.batch_norm_update_stats``).

    Without float32 running statistics that function returns a bfloat16 input's statistics in
    bfloat16; here they are float32 whatever c's dtype (unused buffers, factor 0, then)."""
    if running_mean is None and c.dtype != torch.float32:
        running_mean = torch.zeros(c.shape[1], dtype=torch.float32, device=c.device)
        running_var = torch.ones_like(running_mean)
        factor = 0.0
    return torch.batch_norm_update_stats(c, running_mean, running_var, factor)


def spatial_norm_args(norm: nn.BatchNorm2d | None) -> tuple:
    """(weight, bias, running_mean, running_var, mode, eps) of CBAM's spatial BatchNorm for
    ``torch.ops.visattn.cbam``: batch statistics in training mode (or without running
    statistics), the running ones otherwise, none without ``norm``."""
    if norm is None:
        return (None, None, None, None, int(BnMode.NONE), 1e-5)
    batch_stats = norm.training or (norm.running_mean is None and norm.running_var is None)
    running = (None, None) if batch_stats else (norm.running_mean, norm.running_var)
    mode = BnMode.BATCH if batch_stats else BnMode.RUNNING
    return (norm.weight, norm.bias, *running, int(mode), float(norm.eps))


class SEOperators:
    """SE through the visattn::squeeze_excite operators; options :class:`SeOptions`."""

    saved = len(SeSaved._fields)

    @staticmethod
    def forward(c, params, options, in_norm):
        y, *saved = torch.ops.visattn.squeeze_excite(c, *params, in_norm, *options)
        return y, tuple(saved), ()

    @staticmethod
    def backward(dy, c, saved, params, options, in_norm, batch):
        dc, *grads, dnorm = torch.ops.visattn.squeeze_excite_backward(
            dy, c, *saved, *params, in_norm, batch, *options, True
        )
        return dc, grads, dnorm


class CBAMOperators:
    """CBAM through the visattn::cbam operators; options :class:`CbamOptions`."""

    saved = len(CbamSaved._fields)

    @staticmethod
    def forward(c, params, options, in_norm):
        y, *saved, stats = torch.ops.visattn.cbam(c, *params, in_norm, *options)
        return y, tuple(saved), (stats,)

    @staticmethod
    def backward(dy, c, saved, params, options, in_norm, batch):
        dc, *grads, dnorm = torch.ops.visattn.cbam_backward(dy, c, *saved, *params, in_norm, batch,
                                                            *options, True)  # fmt: skip
        return dc, grads, dnorm  # no gradient for the spatial BatchNorm's running statistics


class _BatchNormThen(torch.autograd.Function):
    """y = block(BN(c)) as one node, the BatchNorm folded into the block's operators: it saves
    c and the (5, C) rows of the kernels' ``fold`` (:mod:`visattn.kernels._fold`), never BN(c).
    Backward: the block's backward operator gives dL/dc (through the batch statistics in
    training mode, as BatchNorm's own backward), dL/dgamma, dL/dbeta and the block's parameters'
    gradients in one go. Outputs: y, then the block's extra outputs (non-differentiable).
    """

    @staticmethod
    def forward(ctx, c, weight, bias, mean, var, eps, batch_stats, block, options, *params):
        # Traced by torch.compile, the fold's few PyTorch ops (Inductor fuses them); else the
        # kernels' own (one launch with the Triton kernels).
        fold = (
            _fold.fold if torch.compiler.is_compiling() else _ops.block_kernels(options.impl).fold
        )
        in_norm = fold(weight, bias, mean, var, eps)
        y, saved, extra = block.forward(c, params, options, in_norm)
        ctx.save_for_backward(c, in_norm, *saved, *params)
        ctx.set_materialize_grads(False)  # the extra outputs' gradients are never read
        dtypes = tuple(t.dtype if t is not None else None for t in (weight, bias))
        ctx.setup = (batch_stats, block, options, dtypes)
        ctx.mark_non_differentiable(*extra)
        return (y, *extra)

    @staticmethod
    def backward(ctx, dy, *_extra):
        batch_stats, block, options, (w_dtype, b_dtype) = ctx.setup
        c, in_norm, *rest = ctx.saved_tensors
        saved, params = rest[: block.saved], rest[block.saved :]
        dc, grads, dnorm = block.backward(dy, c, saved, params, options, in_norm, batch_stats)
        need = ctx.needs_input_grad
        dw = dnorm[0].to(w_dtype) if w_dtype is not None and need[1] else None
        db = dnorm[1].to(b_dtype) if b_dtype is not None and need[2] else None
        grads = [  # parameters without a gradient output (running statistics) get None
            g if p is not None and n else None
            for g, p, n in itertools.zip_longest(grads, params, need[9:])
        ]
        return (dc if need[0] else None, dw, db, None, None, None, None, None, None, *grads)


def update_running_stats(
    norm: torch.nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, var: torch.Tensor, count: float
) -> None:
    """What ``nn.BatchNorm`` does to its buffers in a training step, from the batch's mean and
    biased variance over ``count`` values per channel (the running variance is unbiased)."""
    with torch.no_grad():
        rm, rv = norm.running_mean, norm.running_var
        norm.num_batches_tracked.add_(1)
        if norm.momentum is None:  # cumulative average
            factor = 1.0 / norm.num_batches_tracked.to(rm.dtype)
        else:
            factor = norm.momentum
        rm.lerp_(as_dtype(mean, rm.dtype), factor)
        rv.lerp_(as_dtype(var * (count / max(count - 1, 1)), rv.dtype), factor)
