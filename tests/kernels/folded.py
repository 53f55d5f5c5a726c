"""Test helper: a BatchNorm's output rounded as the fused kernels compute it.

Used by ``test_kernels_norm_fusion.py`` and ``benchmarks/gpu_correctness.py`` (which puts this
folder on ``sys.path``); not part of the package.
"""

from __future__ import annotations

import torch
from torch import nn

from visattn.functional._norm_fusion import float_batch_stats
from visattn.kernels import ops
from visattn.kernels._backend import select_impl

__all__ = ["batchnorm_as_folded"]


def batchnorm_as_folded(norm: nn.BatchNorm2d, c: torch.Tensor) -> torch.Tensor:
    """norm(c) with BatchNorm's own gradient, valued as the folded kernels compute BN(c):
    fma(c, al, be) with the rows of ``fold`` (exact in float64, then rounded once), in c's
    dtype, al and be from the fast path active for c (:mod:`visattn.kernels._fold`, or its
    Triton twin). In bfloat16, BatchNorm's own output rounds some values the other way, which
    can switch a maximum or a ReLU of the MLP downstream and move whole gradients, so the
    unfused path is compared with the fused node on this value."""
    out = norm(c)
    with torch.no_grad():
        if norm.training or norm.running_mean is None:
            mean, var = float_batch_stats(c)
        else:
            mean, var = norm.running_mean, norm.running_var
        fold = ops.block_kernels(select_impl(c) or "c").fold
        al, be = fold(norm.weight, norm.bias, mean, var, norm.eps)[:2, :, None, None].double()
        want = (c.double() * al + be).float().to(c.dtype)
    return (out.float() + (want.float() - out.float()).detach()).to(c.dtype)
