"""SE and CBAM blocks as single functions that pick the fastest correct backend.

- :func:`squeeze_excite`: x~ = x * gate(W_2 ReLU(W_1 pool(x) + b_1) + b_2)
  (Hu et al., arXiv:1709.01507, eq. 2-4).
- :func:`cbam`: F' = M_c(F) * F, F'' = M_s(F') * F' with M_c = sigma(sum_k MLP(pool_k(F))) and
  M_s = sigma(f^{k x k}([AvgPool_c(F'); MaxPool_c(F')])) (Woo et al., arXiv:1807.06521, eq. 1-3).
- ``input_norm=`` of both: the block applied to BN(c) = gamma (c - mu) / sqrt(var + eps) + beta,
  the BatchNorm that precedes SE / CBAM in a residual branch, folded into the block's kernels
  (:mod:`visattn.kernels.ops`): BN(c) is never stored, only c is kept for backward (the
  BatchNorm needs it anyway), and the BatchNorm's backward is part of the block's last pass.

Weights are given in the layout of the layers' 1 x 1 / k x k convolutions (``fc1.weight`` of
shape (C/r, C, 1, 1) or (C/r, C)). The backend (:mod:`visattn.kernels`) is ``auto`` unless
``VISATTN_BACKEND`` or ``visattn.kernels.use_backend`` says otherwise; the reference branch
below is the plain formula and is what every fast path is tested against.
Tests: ``tests/kernels/test_kernels_se_cbam.py``, ``tests/kernels/test_kernels_norm_fusion.py``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_choice, check_tensor
from ..kernels import _fold
from ..kernels import ops as _ops  # registers torch.ops.visattn.* and their FLOP counts
from ..kernels._backend import as_dtype, select_impl
from ..kernels._tune import tuned_impl
from .attention import GATES, POOLS, channel_pool, channel_scale, gate, global_pool

__all__ = ["cbam", "cbam_reference", "squeeze_excite", "squeeze_excite_reference"]


def _conv1x1(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if w.dim() == 2:
        w = w[:, :, None, None]
    return F.conv2d(z, w, b)


def squeeze_excite_reference(
    x: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor | None,
    *,
    squeeze: str = "avg",
    gate_fn: str = "sigmoid",
) -> torch.Tensor:
    """The plain SE formula (eq. 2-4), op by op."""
    z = global_pool(x, squeeze)
    s = gate(gate_fn, _conv1x1(torch.relu(_conv1x1(z, fc1_weight, fc1_bias)), fc2_weight, fc2_bias))
    return channel_scale(x, s)


def _check_block_input(x: torch.Tensor, weight: torch.Tensor, name: str) -> None:
    check_tensor(x, "x", ndim=4, layout="(N, C, H, W)")
    if weight.dim() not in (2, 4) or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"{name}: expected a weight of shape (hidden, {x.shape[1]}[, 1, 1]) for x of shape "
            f"{tuple(x.shape)}, got shape {tuple(weight.shape)}"
        )


def squeeze_excite(
    x: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor | None,
    *,
    squeeze: str = "avg",
    gate: str = "sigmoid",
    input_norm: nn.Module | None = None,
) -> torch.Tensor:
    """Squeeze-and-Excitation of x (N, C, H, W) -> (N, C, H, W), fused where possible.

    Args:
        x: u, any memory format (with ``input_norm``: the BatchNorm's input c, and u = BN(c)).
        fc1_weight, fc1_bias: W_1 (C/r, C[, 1, 1]) and b_1 (C/r) or None.
        fc2_weight, fc2_bias: W_2 (C, C/r[, 1, 1]) and b_2 (C) or None.
        squeeze: ``"avg"`` or ``"max"`` global pooling.
        gate: one of ``GATES``.
        input_norm: a module applied to x first, e.g. the residual branch's last BatchNorm.
            A plain ``nn.BatchNorm2d`` (C features, no hooks) is folded into the fast kernels
            when gradients are needed: statistics and running-statistics update as in its own
            forward, BN(x) computed as the kernels load x, never stored. Any other module is
            simply called.

    The fast path (float32 / bfloat16 on CPU and CUDA) makes 3 passes over the full-size
    tensor forward (read x twice, write y) and 5 backward (read x and dy twice, write dx) and
    saves only x; with a folded ``input_norm`` one more read for the batch statistics, and
    BatchNorm's backward comes with the last pass. The MLP runs in float32. Max-squeeze ties
    share the gradient equally (``torch.amax``'s rule).
    """
    _check_block_input(x, fc1_weight, "fc1_weight")
    check_choice(squeeze, "squeeze", POOLS)
    check_choice(gate, "gate", GATES)
    impl = select_impl(x) if x.numel() > 0 else None
    params = (fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    impl = tuned_impl(
        impl, ("squeeze_excite", squeeze, gate), x,
        lambda u: squeeze_excite(u, *params, squeeze=squeeze, gate=gate, input_norm=input_norm),
        params, [input_norm],
    )  # fmt: skip
    if impl is not None and _fuses_norm(input_norm, x, params):
        return _BatchNormThen.apply(x, *_norm_inputs(input_norm, x), _SE, (squeeze, gate, impl),
                                    *params)[0]  # fmt: skip
    if input_norm is not None:
        x = input_norm(x)
    if impl is None:
        return squeeze_excite_reference(x, *params, squeeze=squeeze, gate_fn=gate)
    return torch.ops.visattn.squeeze_excite(x, *params, None, squeeze, gate, impl)[0]


def cbam_reference(
    x: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor | None,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    *,
    pool: Sequence[str] = ("avg", "max"),
    norm: torch.nn.Module | None = None,
) -> torch.Tensor:
    """The plain CBAM formula (channel first; ``norm`` after the k x k convolution), op by op."""
    logits = None
    for p in pool:
        z = global_pool(x, p)
        out = _conv1x1(torch.relu(_conv1x1(z, fc1_weight, fc1_bias)), fc2_weight, fc2_bias)
        logits = out if logits is None else logits + out
    f1 = channel_scale(x, torch.sigmoid(logits))
    pad = conv_weight.shape[-1] // 2
    logits = F.conv2d(channel_pool(f1, pool), conv_weight, conv_bias, padding=pad)
    if norm is not None:
        logits = norm(logits)
    return f1 * torch.sigmoid(logits)


def cbam(
    x: torch.Tensor,
    fc1_weight: torch.Tensor,
    fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor,
    fc2_bias: torch.Tensor | None,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    *,
    pool: Sequence[str] = ("avg", "max"),
    norm: torch.nn.Module | None = None,
    input_norm: nn.Module | None = None,
) -> torch.Tensor:
    """CBAM (channel attention, then spatial attention, eq. 1) of x (N, C, H, W), fused.

    Args:
        x: F, any memory format (with ``input_norm``: the BatchNorm's input c, and F = BN(c)).
        fc1_weight ... fc2_bias: the shared MLP W_0, b_0, W_1, b_1 of M_c.
        conv_weight, conv_bias: f^{k x k} of M_s, shape (1, len(pool), k, k) with k odd, and (1,).
        pool: pools of both parts, avg before max in the spatial map (as the layers build it).
        norm: optional ``nn.BatchNorm2d(1)`` after the convolution (the official code's layout).
            It behaves exactly as if called: batch statistics and a running-statistics update
            in training mode, running statistics in evaluation mode.
        input_norm: a module applied to x first, fused like :func:`squeeze_excite`'s.

    The fast path makes 4 passes over the full-size tensor forward and 6 backward (5 and 6
    with a folded ``input_norm``), keeps only x for backward and handles max ties like
    ``torch.amax`` (equal shares). Other pool orders use the reference formula.
    """
    _check_block_input(x, fc1_weight, "fc1_weight")
    pool = tuple(pool)
    for p in pool:
        check_choice(p, "pool", POOLS)
    if conv_weight.dim() != 4 or conv_weight.shape[:2] != (1, len(pool)):
        raise ValueError(
            f"conv_weight: expected shape (1, {len(pool)}, k, k), got {tuple(conv_weight.shape)}"
        )
    fast_pools = pool in (("avg",), ("max",), ("avg", "max"))
    odd_square = conv_weight.shape[2] == conv_weight.shape[3] and conv_weight.shape[2] % 2 == 1
    plain_norm = norm is None or (type(norm) is torch.nn.BatchNorm2d and norm.num_features == 1)
    fast = fast_pools and odd_square and plain_norm and x.numel() > 0
    impl = select_impl(x) if fast else None
    impl = tuned_impl(
        impl, ("cbam", "+".join(pool), "bn" if norm is not None else "no bn"), x,
        lambda u: cbam(u, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias,
                       pool=pool, norm=norm, input_norm=input_norm),
        (fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias), [norm, input_norm],
    )  # fmt: skip
    if impl is None:
        if input_norm is not None:
            x = input_norm(x)
        return cbam_reference(
            x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias, pool=pool,
            norm=norm,
        )  # fmt: skip
    bn: tuple = (None, None, None, None, 0, 1e-5)
    if norm is not None:
        batch_stats = norm.training or (norm.running_mean is None and norm.running_var is None)
        running = (None, None) if batch_stats else (norm.running_mean, norm.running_var)
        bn = (norm.weight, norm.bias, *running, 1 if batch_stats else 2, float(norm.eps))
    params = (fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias, *bn[:4])
    options = (*bn[4:], "avg" in pool, "max" in pool, impl)
    if _fuses_norm(input_norm, x, params):
        y, stats = _BatchNormThen.apply(x, *_norm_inputs(input_norm, x), _CBAM, options, *params)
    else:
        if input_norm is not None:
            x = input_norm(x)
        y, *_, stats = torch.ops.visattn.cbam(x, *params, None, *options)  # stats come last
    if norm is not None and norm.training and norm.track_running_stats:
        update_running_stats(norm, stats[0], stats[1], x.shape[0] * x.shape[2] * x.shape[3])
    return y


# ----------------------------------------------------------------------------- input BatchNorm


def _has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` would run hooks (its own or global ones, as nn.Module checks)."""
    from torch.nn.modules import module as m

    return bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
        or module._backward_pre_hooks or m._global_forward_hooks
        or m._global_forward_pre_hooks or m._global_backward_hooks
        or m._global_backward_pre_hooks
    )  # fmt: skip


def _fuses_norm(norm: nn.Module | None, x: torch.Tensor, params: Sequence[Any]) -> bool:
    """Whether ``norm`` then the block runs as one :class:`_BatchNormThen` node.

    Only where it saves memory and changes nothing else: a plain ``nn.BatchNorm2d`` (not a
    subclass such as ``SyncBatchNorm``) over x's channels, without hooks, while autograd records.
    """
    if norm is None or type(norm) is not nn.BatchNorm2d or norm.num_features != x.shape[1]:
        return False
    if _has_hooks(norm) or not torch.is_grad_enabled():
        return False
    tensors = (x, norm.weight, norm.bias, *params)
    return any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def _norm_inputs(norm: nn.BatchNorm2d, c: torch.Tensor) -> tuple:
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


def _batchnorm_as_folded(norm: nn.BatchNorm2d, c: torch.Tensor) -> torch.Tensor:
    """norm(c) with BatchNorm's own gradient, valued as the folded kernels compute BN(c):
    fma(c, al, be) with the rows of ``fold`` (exact in float64, then rounded once), in c's
    dtype, al and be from the fast path active for c (:mod:`visattn.kernels._fold`, or its
    Triton twin). For tests and ``benchmarks/gpu_correctness.py``: in bfloat16, BatchNorm's own
    output rounds some values the other way, which can switch a maximum or a ReLU of the MLP
    downstream and move whole gradients, so the unfused path is compared on this value."""
    out = norm(c)
    with torch.no_grad():
        if norm.training or norm.running_mean is None:
            mean, var = float_batch_stats(c)
        else:
            mean, var = norm.running_mean, norm.running_var
        fold = _ops._kernels(select_impl(c) or "c").fold
        al, be = fold(norm.weight, norm.bias, mean, var, norm.eps)[:2, :, None, None].double()
        want = (c.double() * al + be).float().to(c.dtype)
    return (out.float() + (want.float() - out.float()).detach()).to(c.dtype)


class _SE:
    """SE through the visattn::squeeze_excite operators; options (squeeze, gate, impl)."""

    saved = 4  # s, z, h, l

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


class _CBAM:
    """CBAM through the visattn::cbam operators; options (bn_mode, eps, use_avg, use_max, impl)."""

    saved = 5  # a, b, z, pooled, h

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
        fold = _fold.fold if torch.compiler.is_compiling() else _ops._kernels(options[-1]).fold
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
