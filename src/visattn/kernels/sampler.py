"""``torch.library`` operators of the Triton bilinear sampler (Jaderberg et al., arXiv:1506.02025).

``visattn::bilinear_sample(input, grid, align_corners)`` computes eq. 5 with zero padding;
its autograd formula calls ``visattn::bilinear_sample_backward``, which evaluates eq. 6 (the
input gradient, deterministic: sorted gather, no atomics) and eq. 7 (the grid gradient). Both run
the kernels of :mod:`visattn.kernels.triton_kernels` (CUDA, or CPU under ``TRITON_INTERPRET=1``),
whose contract is :class:`visattn.kernels._contract.SamplerKernels`.
The arithmetic is float32 whatever the input dtype; the output has the input's dtype.
Tests: ``tests/kernels/test_kernels_sampler.py``, ``tests/kernels/test_kernels_triton.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._contract import SamplerKernels

__all__ = ["bilinear_sample", "bilinear_sample_backward"]


def _kernels() -> SamplerKernels:
    """The Triton backend, imported on first use (importing triton takes a while)."""
    from . import triton_kernels

    return triton_kernels


@torch.library.custom_op("visattn::bilinear_sample", mutates_args=())
def bilinear_sample(input: Tensor, grid: Tensor, align_corners: bool) -> Tensor:
    """V = sampler(U, grid), eq. 5, zero padding."""
    return _kernels().sample_forward(input, grid, align_corners)


@bilinear_sample.register_fake
def _(input, grid, align_corners):
    n, c = input.shape[:2]
    cl = (not input.is_contiguous()) and input.is_contiguous(memory_format=torch.channels_last)
    out = input.new_empty(n, c, grid.shape[1], grid.shape[2])
    return out.contiguous(memory_format=torch.channels_last) if cl else out


@torch.library.custom_op("visattn::bilinear_sample_backward", mutates_args=())
def bilinear_sample_backward(
    grad_out: Tensor, input: Tensor, grid: Tensor, align_corners: bool, need_input: bool,
    need_grid: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(dL/dU, dL/dgrid); an empty tensor stands for a gradient that was not asked for."""
    gi, gg = _kernels().sample_backward(grad_out, input, grid, align_corners, need_input, need_grid)
    gi = gi if gi is not None else input.new_empty(0)
    gg = gg.to(grid.dtype) if gg is not None else grid.new_empty(0)
    return gi, gg


@bilinear_sample_backward.register_fake
def _(grad_out, input, grid, align_corners, need_input, need_grid):
    gi = torch.empty_like(input) if need_input else input.new_empty(0)
    gg = torch.empty_like(grid) if need_grid else grid.new_empty(0)
    return gi, gg


def _setup(ctx, inputs, output):
    input, grid, align_corners = inputs
    ctx.save_for_backward(input, grid)
    ctx.align_corners = align_corners


def _backward(ctx, grad_out):
    input, grid = ctx.saved_tensors
    need_input, need_grid = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
    gi, gg = torch.ops.visattn.bilinear_sample_backward(
        grad_out, input, grid, ctx.align_corners, need_input, need_grid
    )
    return (gi if need_input else None), (gg if need_grid else None), None


bilinear_sample.register_autograd(_backward, setup_context=_setup)
