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

    impl = select_impl(x) if x.shape[2] * x.shape[3] > 0 else None
    if impl is None:
        return squeeze_excite_reference(
            x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, squeeze=squeeze, gate_fn=gate
        )
    from ..kernels import ops  # noqa: F401  (registers torch.ops.visattn)

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
) -> torch.Tensor:
    """The plain CBAM formula (channel first, no BatchNorm), op by op."""
    logits = None
    for p in pool:
        z = global_pool(x, p)
        out = _conv1x1(torch.relu(_conv1x1(z, fc1_weight, fc1_bias)), fc2_weight, fc2_bias)
        logits = out if logits is None else logits + out
    f1 = channel_scale(x, torch.sigmoid(logits))
    pad = conv_weight.shape[-1] // 2
    m_s = torch.sigmoid(F.conv2d(channel_pool(f1, pool), conv_weight, conv_bias, padding=pad))
    return f1 * m_s


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
) -> torch.Tensor:
    """CBAM (channel attention, then spatial attention, eq. 1) of x (N, C, H, W), fused.

    Args:
        x: F, any memory format.
        fc1_weight ... fc2_bias: the shared MLP W_0, b_0, W_1, b_1 of M_c.
        conv_weight, conv_bias: f^{k x k} of M_s, shape (1, len(pool), k, k) with k odd, and (1,).
        pool: pools of both parts, avg before max in the spatial map (as the layers build it).

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
    impl = select_impl(x) if fast_pools and odd_square and x.numel() > 0 else None
    if impl is None:
        return cbam_reference(
            x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias, pool=pool
        )
    from ..kernels import ops  # noqa: F401  (registers torch.ops.visattn)

    return torch.ops.visattn.cbam(
        x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias,
        "avg" in pool, "max" in pool, impl,
    )[0]  # fmt: skip
