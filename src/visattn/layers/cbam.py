"""Convolutional Block Attention Module (Woo et al., ECCV 2018, arXiv:1807.06521).

    channel attention  M_c(F) = sigma(MLP(AvgPool(F)) + MLP(MaxPool(F)))      (eq. 2)
                       MLP(z) = W_1 ReLU(W_0 z),  W_0: C -> C/r,  W_1: C/r -> C (shared)
    spatial attention  M_s(F) = sigma(f^{k x k}([AvgPool_c(F); MaxPool_c(F)]))   (eq. 3)
    CBAM               F' = M_c(F) * F,   F'' = M_s(F') * F'                      (eq. 1)

Code symbols: ``ChannelAttention.fc1`` / ``fc2`` are W_0 / W_1 (1 x 1 convolutions, with
biases like the official code's ``nn.Linear``), ``SpatialAttention.conv`` is f^{k x k}
(k = ``kernel_size``, 7 by default, padding k // 2), ``SpatialAttention.bn`` the optional
BatchNorm after it (``norm=True``, as in the official code). Pooled maps are concatenated in
the order of ``pool`` (average first by default, as in eq. 3).

``order`` covers the paper's arrangement ablation (Table 3): ``"channel_first"`` is eq. 1,
``"spatial_first"`` applies M_s first then M_c, and ``"parallel"`` computes both maps from the
same F and applies them together: F'' = M_c(F) * M_s(F) * F.

The block (order ``"channel_first"``, with or without ``norm``) runs
:func:`visattn.functional.cbam`: fused kernels by default (:mod:`visattn.kernels`), the plain
formula under ``VISATTN_BACKEND=reference``; the other orders and the standalone
``ChannelAttention`` / ``SpatialAttention`` use the formulas below.

Tests: ``tests/layers/test_cbam.py``, ``tests/kernels/test_kernels_se_cbam.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._checks import check_choice, check_int, check_tensor
from ..functional.attention import POOLS, channel_pool, channel_scale, global_pool
from ..functional.fused import cbam
from .squeeze_excite import reduced_channels

__all__ = ["CBAM", "ChannelAttention", "SpatialAttention"]

ORDERS = ("channel_first", "spatial_first", "parallel")


def _check_pool(pool: Sequence[str]) -> tuple[str, ...]:
    if isinstance(pool, str):
        pool = (pool,)
    pool = tuple(pool)
    if not pool or len(set(pool)) != len(pool):
        raise ValueError(f"pool: expected a non-empty tuple of distinct names, got {pool!r}")
    for p in pool:
        check_choice(p, "pool", POOLS)
    return pool


def _check_input(x: torch.Tensor, channels: int | None) -> None:
    check_tensor(x, "x", ndim=4, layout="(N, C, H, W)")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"x: expected {channels} channels, got shape {tuple(x.shape)}")


class ChannelAttention(nn.Module):
    """CBAM channel attention: F' = sigma(sum_p MLP(pool_p(F))) * F (eq. 2).

    Args:
        channels: C.
        reduction: r of the shared MLP (C/r hidden channels).
        pool: global pools whose MLP outputs are summed, ``("avg", "max")`` as in the paper.
        bias: biases in the MLP.

    Shape: (N, C, H, W) -> (N, C, H, W). ``attention(x)`` returns M_c, shape (N, C, 1, 1).
    """

    def __init__(
        self,
        channels: int,
        *,
        reduction: float = 16,
        pool: Sequence[str] = ("avg", "max"),
        bias: bool = True,
        divisor: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden = reduced_channels(channels, reduction, divisor=divisor)
        self.channels = channels
        self.pool = _check_pool(pool)
        factory = {"device": device, "dtype": dtype}
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=bias, **factory)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=bias, **factory)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """M_c(F), shape (N, C, 1, 1)."""
        logits = None
        for p in self.pool:
            out = self.fc2(self.act(self.fc1(global_pool(x, p))))
            logits = out if logits is None else logits + out
        return torch.sigmoid(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.channels)
        return channel_scale(x, self.attention(x))

    def extra_repr(self) -> str:
        return f"channels={self.channels}, pool={self.pool}"


class SpatialAttention(nn.Module):
    """CBAM spatial attention: F'' = sigma(f^{k x k}([pool_c(F) ...])) * F (eq. 3).

    Args:
        kernel_size: k, odd (7 in the paper, 3 in its ablation).
        pool: channel pools, concatenated in this order (``("avg", "max")`` as in eq. 3).
        norm: BatchNorm after the convolution (the official code has it).

    Shape: (N, C, H, W) -> (N, C, H, W). ``attention(x)`` returns M_s, shape (N, 1, H, W).
    """

    def __init__(
        self,
        *,
        kernel_size: int = 7,
        pool: Sequence[str] = ("avg", "max"),
        norm: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_int(kernel_size, "kernel_size", minimum=1)
        if kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size: expected an odd size so the map keeps its position, got {kernel_size}"
            )
        self.pool = _check_pool(pool)
        self.kernel_size = kernel_size
        factory = {"device": device, "dtype": dtype}
        self.conv = nn.Conv2d(
            len(self.pool), 1, kernel_size, padding=kernel_size // 2, bias=not norm, **factory
        )
        self.bn = nn.BatchNorm2d(1, **factory) if norm else nn.Identity()

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """M_s(F), shape (N, 1, H, W)."""
        return torch.sigmoid(self.bn(self.conv(channel_pool(x, self.pool))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, None)
        return x * self.attention(x)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, pool={self.pool}"


class CBAM(nn.Module):
    """Convolutional Block Attention Module: channel then spatial attention (eq. 1).

    Args:
        channels: C.
        reduction: r of the channel attention's MLP.
        kernel_size: k of the spatial attention's convolution (odd).
        order: ``"channel_first"`` (the paper), ``"spatial_first"`` or ``"parallel"``.
        norm: BatchNorm after the spatial convolution.
        pool: pools of both parts (``("avg", "max")``).

    Shape: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(
        self,
        channels: int,
        *,
        reduction: float = 16,
        kernel_size: int = 7,
        order: str = "channel_first",
        norm: bool = False,
        pool: Sequence[str] = ("avg", "max"),
        bias: bool = True,
        divisor: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.order = check_choice(order, "order", ORDERS)
        factory = {"device": device, "dtype": dtype}
        self.channel = ChannelAttention(
            channels, reduction=reduction, pool=pool, bias=bias, divisor=divisor, **factory
        )
        self.spatial = SpatialAttention(kernel_size=kernel_size, pool=pool, norm=norm, **factory)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._attend(x)

    def _attend(self, x: torch.Tensor, input_norm: nn.Module | None = None) -> torch.Tensor:
        """CBAM(x), or CBAM(input_norm(x)) fused (:func:`visattn.layers.batchnorm_attention`)."""
        _check_input(x, self.channels)
        if self.order == "channel_first" and set(self.channel.pool) == set(self.spatial.pool):
            ch, sp = self.channel, self.spatial
            norm = None if isinstance(sp.bn, nn.Identity) else sp.bn
            return cbam(
                x, ch.fc1.weight, ch.fc1.bias, ch.fc2.weight, ch.fc2.bias, sp.conv.weight,
                sp.conv.bias, pool=sp.pool, norm=norm, input_norm=input_norm,
            )  # fmt: skip
        if input_norm is not None:
            x = input_norm(x)
        if self.order == "channel_first":
            return self.spatial(self.channel(x))
        if self.order == "spatial_first":
            return self.channel(self.spatial(x))
        return x * self.channel.attention(x) * self.spatial.attention(x)

    def extra_repr(self) -> str:
        return f"order={self.order!r}"
