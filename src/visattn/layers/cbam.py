"""Convolutional Block Attention Module (Woo et al., ECCV 2018, arXiv:1807.06521).

    channel attention  M_c(F) = sigma(MLP(AvgPool(F)) + MLP(MaxPool(F)))      (eq. 2)
                       MLP(z) = W_2 ReLU(W_1 z + b_1) + b_2  (the paper's W_1 ReLU(W_0 z))
    spatial attention  M_s(F) = sigma(f^{k x k}([AvgPool_c(F); MaxPool_c(F)]))   (eq. 3)
    CBAM               F' = M_c(F) * F,   F'' = M_s(F') * F'                      (eq. 1)

Code symbols (as in :mod:`visattn.functional`): ``ChannelAttention.fc1`` is W_1, b_1 (the
paper's W_0, C -> C/r) and ``fc2`` is W_2, b_2 (the paper's W_1, C/r -> C), 1 x 1 convolutions
with biases like the official code's ``nn.Linear``; ``SpatialAttention.conv`` is f^{k x k}
(k = ``kernel_size``, 7 by default, padding k // 2), ``SpatialAttention.bn`` the optional
BatchNorm after it (``norm=True``, as in the official code). Pooled maps are concatenated in
the order of ``pool`` (average first by default, as in eq. 3).

``order`` covers the paper's arrangement ablation (Table 3): ``"channel_first"`` is eq. 1,
``"spatial_first"`` applies M_s first then M_c, and ``"parallel"`` computes both maps from the
same F and applies them together: F'' = M_c(F) * M_s(F) * F.

The formulas are :mod:`visattn.functional.cbam_block`'s. The block (order
``"channel_first"``, with or without ``norm``) runs :func:`visattn.functional.cbam`: fused
kernels by default (:mod:`visattn.kernels`), the plain formula under
``VISATTN_BACKEND=reference``; the other orders are :func:`visattn.functional.cbam_arrange` of
the two parts' maps (:func:`visattn.functional.channel_attention_map`,
:func:`visattn.functional.spatial_attention_map`).

timm's light CBAM (its ``LightCbamModule``; a variant of timm's own, with no paper) is
:class:`LightCBAM`: the same arrangement, channel first, with the pools averaged before the MLP
and before the convolution (``merge_pools=True`` of the maps):

    M_c'(F) = sigma(MLP(0.5 AvgPool(F) + 0.5 MaxPool(F)))
    M_s'(F) = sigma(BN(f^{k x k}(0.5 AvgPool_c(F) + 0.5 MaxPool_c(F))))

Its parts are a :class:`ChannelAttention` with ``merge_pools=True`` and no MLP biases
(``channel.fc1`` / ``channel.fc2``) and a :class:`LightSpatialAttention` (``spatial.conv.conv``,
``spatial.conv.bn``): timm's names, so its state_dict loads with ``strict=True``. Its forward
runs the two parts as modules (what :func:`visattn.functional.light_cbam` computes, and what
lets the visualisation record both maps).

Tests: ``tests/layers/test_layers_cbam.py``, ``tests/kernels/test_kernels_se_cbam.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from .._checks import check_choice, check_int, describe
from ..functional.attention import _check_pool
from ..functional.cbam_block import (
    ORDERS,
    _channel_map,
    _spatial_map,
    cbam_arrange,
    channel_attention_map,
    spatial_attention_map,
)
from ..functional.fused import cbam
from ._common import add_bottleneck, bottleneck_weights, check_channels, reduced_channels

__all__ = ["CBAM", "ChannelAttention", "LightCBAM", "LightSpatialAttention", "SpatialAttention"]


def _check_kernel_size(kernel_size: int) -> None:
    check_int(kernel_size, "kernel_size", minimum=1)
    if kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size: expected an odd size so the map keeps its position, got {kernel_size}"
        )


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {describe(value)}")
    return value


class _MapAttention(nn.Module):
    """A CBAM part: F' = M(F) * F, with M(F) the subclass's ``attention(x)`` (broadcast)."""

    #: What ``attention(x)`` returns (``"channel"``: (N, C, 1, 1), ``"spatial"``: (N, 1, H, W)),
    #: and where :mod:`visattn.viz.capture` records it.
    map_kind: ClassVar[str]

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class ChannelAttention(_MapAttention):
    """CBAM channel attention: F' = M_c(F) * F, M_c(F) = sigma(sum_p MLP(pool_p(F))) (eq. 2).

    Args:
        channels: C.
        reduction: r of the shared MLP (C/r hidden channels).
        pool: global pools whose MLP outputs are summed, ``("avg", "max")`` as in the paper.
        bias: biases in the MLP.
        divisor: round C/r to a multiple of this (:func:`visattn.layers.reduced_channels`).
        rd_channels: the hidden width given directly (overrides ``reduction``).
        merge_pools: timm's light variant: one MLP pass on the pools' mean,
            sigma(MLP(mean_p pool_p(F))), instead of the sum of one pass per pool.

    Shape: (N, C, H, W) -> (N, C, H, W). ``attention(x)`` returns M_c, shape (N, C, 1, 1).
    """

    map_kind = "channel"

    def __init__(
        self,
        channels: int,
        *,
        reduction: float = 16,
        pool: Sequence[str] = ("avg", "max"),
        bias: bool = True,
        divisor: int = 1,
        rd_channels: int | None = None,
        merge_pools: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden = reduced_channels(channels, reduction, divisor=divisor, rd_channels=rd_channels)
        self.channels = channels
        self.pool = _check_pool(pool, distinct=True)
        self.merge_pools = _check_bool(merge_pools, "merge_pools")
        add_bottleneck(self, channels, hidden, bias, {"device": device, "dtype": dtype})

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """M_c(F), x unchecked (the caller checked it)."""
        return _channel_map(x, *bottleneck_weights(self), self.pool, self.merge_pools)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """M_c(F), shape (N, C, 1, 1) (:func:`visattn.functional.channel_attention_map`)."""
        check_channels(x, self.channels)
        return channel_attention_map(
            x, *bottleneck_weights(self), pool=self.pool, merge_pools=self.merge_pools
        )

    def extra_repr(self) -> str:
        merge = ", merge_pools=True" if self.merge_pools else ""
        return f"channels={self.channels}, pool={self.pool}{merge}"


class SpatialAttention(_MapAttention):
    """CBAM spatial attention: F'' = M_s(F) * F, M_s(F) = sigma(f^{k x k}([pool_c(F) ...])) (eq. 3).

    Args:
        kernel_size: k, odd (7 in the paper, 3 in its ablation).
        pool: channel pools, concatenated in this order (``("avg", "max")`` as in eq. 3).
        norm: BatchNorm after the convolution (the official code has it).

    Shape: (N, C, H, W) -> (N, C, H, W). ``attention(x)`` returns M_s, shape (N, 1, H, W).
    """

    map_kind = "spatial"

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
        _check_kernel_size(kernel_size)
        self.pool = _check_pool(pool, distinct=True)
        self.kernel_size = kernel_size
        factory = {"device": device, "dtype": dtype}
        self.conv = nn.Conv2d(
            len(self.pool), 1, kernel_size, padding=kernel_size // 2, bias=not norm, **factory
        )
        self.bn = nn.BatchNorm2d(1, **factory) if norm else nn.Identity()

    @property
    def norm(self) -> nn.BatchNorm2d | None:
        """The BatchNorm after f^{k x k}, or None (``norm=False``: ``bn`` is an Identity)."""
        return None if isinstance(self.bn, nn.Identity) else self.bn

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # timm's CbamModule holds f^{k x k} and its BatchNorm in one ConvNormAct, keys
        # ``conv.conv.*`` / ``conv.bn.*``: read them as ``conv.*`` / ``bn.*`` (with norm=True).
        if self.norm is not None and f"{prefix}conv.conv.weight" in state_dict:
            for key in [k for k in state_dict if k.startswith(f"{prefix}conv.")]:
                rest = key[len(prefix) + len("conv.") :]
                part, _, tail = rest.partition(".")
                if part in ("conv", "bn"):
                    state_dict[f"{prefix}{part}.{tail}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """M_s(F), x unchecked (the caller checked it)."""
        return _spatial_map(x, self.conv.weight, self.conv.bias, self.pool, self.norm)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """M_s(F), shape (N, 1, H, W) (:func:`visattn.functional.spatial_attention_map`)."""
        return spatial_attention_map(
            x, self.conv.weight, self.conv.bias, pool=self.pool, norm=self.norm
        )

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, pool={self.pool}"


class CBAM(nn.Module):
    """Convolutional Block Attention Module: channel then spatial attention (eq. 1).

    Args:
        channels: C.
        reduction, bias, divisor: the channel attention's MLP (r, biases, rounding of C/r).
        kernel_size: k of the spatial attention's convolution (odd).
        norm: BatchNorm after the spatial convolution.
        pool: pools of both parts (``("avg", "max")``).
        order: ``"channel_first"`` (the paper), ``"spatial_first"`` or ``"parallel"``.

    Shape: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(
        self,
        channels: int,
        *,
        reduction: float = 16,
        bias: bool = True,
        divisor: int = 1,
        kernel_size: int = 7,
        norm: bool = False,
        pool: Sequence[str] = ("avg", "max"),
        order: str = "channel_first",
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
        check_channels(x, self.channels)
        ch, sp = self.channel, self.spatial
        if self.order == "channel_first" and set(ch.pool) == set(sp.pool):
            return cbam(
                x, *bottleneck_weights(ch), sp.conv.weight, sp.conv.bias, pool=sp.pool, norm=sp.norm,
                input_norm=input_norm,
            )  # fmt: skip
        if input_norm is not None:
            x = input_norm(x)
        return cbam_arrange(x, ch._attention, sp._attention, self.order)

    def extra_repr(self) -> str:
        return f"order={self.order!r}"


class _ConvNorm(nn.Module):
    """f^{k x k} (1 -> 1 channel) and the BatchNorm after it, as ``conv`` / ``bn``: the layout
    of timm's ``ConvNormAct`` in its ``LightSpatialAttn`` (keys ``conv.weight``, ``bn.*``)."""

    def __init__(self, kernel_size: int, norm: bool, factory: dict) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, kernel_size, padding=kernel_size // 2, bias=not norm, **factory)
        self.bn = nn.BatchNorm2d(1, **factory) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class LightSpatialAttention(_MapAttention):
    """timm's light spatial attention (``LightSpatialAttn``; no paper): F' = M_s'(F) * F,
    M_s'(F) = sigma(BN(f^{k x k}(mean_p pool_c,p(F)))), the pooled maps averaged into one
    channel (0.5 AvgPool_c + 0.5 MaxPool_c by default).

    Args:
        kernel_size: k, odd (7 in timm).
        pool: the channel pools averaged.
        norm: BatchNorm after the convolution (timm has it; without it the convolution has a
            bias).

    Submodules: ``conv.conv`` (f^{k x k}, 1 -> 1 channel) and ``conv.bn``, timm's names.
    Shape: (N, C, H, W) -> (N, C, H, W). ``attention(x)`` returns M_s', shape (N, 1, H, W).
    """

    map_kind = "spatial"

    def __init__(
        self,
        *,
        kernel_size: int = 7,
        pool: Sequence[str] = ("avg", "max"),
        norm: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_kernel_size(kernel_size)
        self.pool = _check_pool(pool, distinct=True)
        self.kernel_size = kernel_size
        self.conv = _ConvNorm(kernel_size, norm, {"device": device, "dtype": dtype})

    @property
    def norm(self) -> nn.BatchNorm2d | None:
        """The BatchNorm after f^{k x k}, or None (``norm=False``)."""
        return None if isinstance(self.conv.bn, nn.Identity) else self.conv.bn

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """M_s'(F), x unchecked (the caller checked it)."""
        conv = self.conv.conv
        return _spatial_map(x, conv.weight, conv.bias, self.pool, self.norm, True)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """M_s'(F), shape (N, 1, H, W) (``spatial_attention_map(..., merge_pools=True)``)."""
        conv = self.conv.conv
        return spatial_attention_map(
            x, conv.weight, conv.bias, pool=self.pool, norm=self.norm, merge_pools=True
        )

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, pool={self.pool}"


class LightCBAM(nn.Module):
    """timm's light CBAM (``LightCbamModule``; a variant of timm's own, there is no paper):
    CBAM's eq. 1, channel then spatial attention, each from the mean of its pools.

        F' = sigma(MLP(mean_p pool_p(F))) * F,   F'' = sigma(BN(f^{k x k}(mean_p pool_c,p(F')))) * F'

    Defaults are timm's: r = 16, no MLP biases, k = 7, BatchNorm after the convolution, the
    average and max pools (0.5 each); C/r is rounded as timm's CBAM modules do (to the nearest
    multiple of ``divisor``, never rounded up as :class:`CBAM` does below 0.9 C/r).

    Args:
        channels: C.
        reduction, bias, divisor: the channel attention's MLP (r, biases, rounding of C/r).
        rd_channels: the MLP's hidden width given directly (overrides ``reduction``).
        kernel_size: k of the spatial convolution (odd).
        norm: BatchNorm after the spatial convolution.
        pool: the pools both parts average.

    Parts: ``channel`` (:class:`ChannelAttention` with ``merge_pools=True``, map kind
    ``"channel"``) and ``spatial`` (:class:`LightSpatialAttention`, ``"spatial"``).
    Shape: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(
        self,
        channels: int,
        *,
        reduction: float = 16,
        bias: bool = False,
        divisor: int = 1,
        rd_channels: int | None = None,
        kernel_size: int = 7,
        norm: bool = True,
        pool: Sequence[str] = ("avg", "max"),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if rd_channels is None:  # timm's rounding (make_divisible with round_limit 0)
            rd_channels = reduced_channels(channels, reduction, divisor=divisor, round_limit=0.0)
        self.channel = ChannelAttention(
            channels, pool=pool, bias=bias, rd_channels=rd_channels, merge_pools=True, **factory
        )
        self.spatial = LightSpatialAttention(kernel_size=kernel_size, pool=pool, norm=norm,
                                             **factory)  # fmt: skip
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """F'' = M_s'(F') F', F' = M_c'(F) F: the parts run as modules (each calls its public
        map function), so :func:`visattn.viz.capture` records both maps through the parts'
        hooks; the same operations as :func:`visattn.functional.light_cbam`."""
        check_channels(x, self.channels)
        return self.spatial(self.channel(x))
