"""SE and CBAM blocks as single functions that pick the fastest correct backend.

- :func:`squeeze_excite`: x~ = x * gate(W_2 ReLU(W_1 pool(x) + b_1) + b_2)
  (Hu et al., arXiv:1709.01507, eq. 2-4).
- :func:`cbam`: F' = M_c(F) * F, F'' = M_s(F') * F' with M_c = sigma(sum_k MLP(pool_k(F))) and
  M_s = sigma(f^{k x k}([AvgPool_c(F'); MaxPool_c(F')])) (Woo et al., arXiv:1807.06521, eq. 1-3).

Weights are given in the layout of the layers' 1 x 1 / k x k convolutions (``fc1.weight`` of
shape (C/r, C, 1, 1) or (C/r, C)). The backend (:mod:`visattn.kernels`) is ``auto`` unless
``VISATTN_BACKEND`` or ``visattn.kernels.use_backend`` says otherwise; the reference branch
below is the plain formula and is what every fast path is tested against.
Tests: ``tests/kernels/test_kernels_se_cbam.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .._checks import check_choice, check_tensor
from ..kernels import ops as _ops  # noqa: F401  (registers torch.ops.visattn.* and their FLOP counts)
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
) -> torch.Tensor:
    """Squeeze-and-Excitation of x (N, C, H, W) -> (N, C, H, W), fused where possible.

    Args:
        x: u, any memory format.
        fc1_weight, fc1_bias: W_1 (C/r, C[, 1, 1]) and b_1 (C/r) or None.
        fc2_weight, fc2_bias: W_2 (C, C/r[, 1, 1]) and b_2 (C) or None.
        squeeze: ``"avg"`` or ``"max"`` global pooling.
        gate: one of ``GATES``.

    The fast path (float32 / bfloat16 on CPU and CUDA) reads x three times forward and four
    times backward and saves only x; the MLP runs in float32. Max-squeeze ties share the
    gradient equally (``torch.amax``'s rule).
    """
    _check_block_input(x, fc1_weight, "fc1_weight")
    check_choice(squeeze, "squeeze", POOLS)
    check_choice(gate, "gate", GATES)
    from ..kernels._backend import select_impl

    impl = select_impl(x) if x.numel() > 0 else None
    if impl is None:
        return squeeze_excite_reference(
            x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, squeeze=squeeze, gate_fn=gate
        )
    return torch.ops.visattn.squeeze_excite(
        x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, squeeze, gate, impl
    )[0]


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
) -> torch.Tensor:
    """CBAM (channel attention, then spatial attention, eq. 1) of x (N, C, H, W), fused.

    Args:
        x: F, any memory format.
        fc1_weight ... fc2_bias: the shared MLP W_0, b_0, W_1, b_1 of M_c.
        conv_weight, conv_bias: f^{k x k} of M_s, shape (1, len(pool), k, k) with k odd, and (1,).
        pool: pools of both parts, avg before max in the spatial map (as the layers build it).
        norm: optional ``nn.BatchNorm2d(1)`` after the convolution (the official code's layout).
            It behaves exactly as if called: batch statistics and a running-statistics update
            in training mode, running statistics in evaluation mode.

    The fast path reads x four times forward and six times backward (plus dy / dx), keeps only
    x for backward and handles max ties like ``torch.amax`` (equal shares). Other pool orders
    use the reference formula.
    """
    _check_block_input(x, fc1_weight, "fc1_weight")
    pool = tuple(pool)
    for p in pool:
        check_choice(p, "pool", POOLS)
    if conv_weight.dim() != 4 or conv_weight.shape[:2] != (1, len(pool)):
        raise ValueError(
            f"conv_weight: expected shape (1, {len(pool)}, k, k), got {tuple(conv_weight.shape)}"
        )
    from ..kernels._backend import select_impl

    fast_pools = pool in (("avg",), ("max",), ("avg", "max"))
    odd_square = conv_weight.shape[2] == conv_weight.shape[3] and conv_weight.shape[2] % 2 == 1
    plain_norm = norm is None or (type(norm) is torch.nn.BatchNorm2d and norm.num_features == 1)
    fast = fast_pools and odd_square and plain_norm and x.numel() > 0
    impl = select_impl(x) if fast else None
    if impl is None:
        return cbam_reference(
            x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias, pool=pool,
            norm=norm,
        )  # fmt: skip
    bn: tuple = (None, None, None, None, 0, 1e-5)
    if norm is not None:
        batch_stats = norm.training or (norm.running_mean is None and norm.running_var is None)
        running = (None, None) if batch_stats else (norm.running_mean, norm.running_var)
        bn = (norm.weight, norm.bias, *running, 1 if batch_stats else 2, float(norm.eps))
    y, *_, stats = torch.ops.visattn.cbam(
        x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias, *bn,
        "avg" in pool, "max" in pool, impl,
    )  # fmt: skip
    if norm is not None and norm.training and norm.track_running_stats:
        update_running_stats(norm, stats[0], stats[1], x.shape[0] * x.shape[2] * x.shape[3])
    return y


def update_running_stats(
    norm: torch.nn.modules.batchnorm._BatchNorm, mean: torch.Tensor, var: torch.Tensor, count: float
) -> None:
    """What ``nn.BatchNorm`` does to its buffers in a training step, from the batch's mean and
    biased variance over ``count`` values per channel (the running variance is unbiased)."""
    with torch.no_grad():
        norm.num_batches_tracked.add_(1)
        if norm.momentum is None:
            factor = 1.0 / norm.num_batches_tracked.to(mean.dtype)
        else:
            factor = torch.tensor(norm.momentum, dtype=mean.dtype, device=mean.device)
        var = var * (count / max(count - 1, 1))
        rm, rv = norm.running_mean, norm.running_var
        rm.copy_(rm * (1 - factor) + (mean * factor).to(rm.dtype))
        rv.copy_(rv * (1 - factor) + (var * factor).to(rv.dtype))
