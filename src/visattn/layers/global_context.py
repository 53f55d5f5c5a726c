"""The Global Context (GC) block of GCNet (Cao, Xu, Lin, Wei, Hu, arXiv:1904.11492).

    context modelling  c = sum_j alpha_j x_j,  alpha_j = softmax_j(W_k x_j)
    transform          t = W_v2 ReLU(LN(W_v1 c))        W_v1: C -> C/r, W_v2: C/r -> C
    fusion             z = x + t                        (eq. 5; ``fusion="scale"``: x * sigma(t))

Code symbols: ``conv_attn`` is W_k (a 1 x 1 convolution C -> 1, with the bias the official code
gives it; the softmax cancels it), ``mlp_add`` (or ``mlp_scale``) holds the transform:
``fc1`` = W_v1, b_v1, ``norm`` = LN over the C/r values, ``fc2`` = W_v2, b_v2. These are the
names of timm's ``GlobalContext``, so its checkpoints load with ``strict=True``.

Defaults pinned to the paper: r = 16, fusion by addition, attention pooling, LN's epsilon 1e-5
(the official code's ``nn.LayerNorm``), W_v2 and b_v2 zero at initialisation (the official
code's ``last_zero_init``: the block starts as the identity). Where timm's ``GlobalContext``
differs: its default fuses by scaling (``fuse_scale=True``) with r = 8 (``rd_ratio=1/8``), its
LayerNorm2d has epsilon 1e-6 (``norm_eps=1e-6`` here) and it zeroes W_v2 only. timm's
``fuse_add=True, fuse_scale=True`` (both at once) is not the paper's and has no option here.

The formulas are :mod:`visattn.functional.gc_block`'s.

Tests: ``tests/layers/test_layers_gc.py``, ``tests/functional/test_functional_gc.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _modes
from .._checks import check_choice, check_positive
from ..functional.gc_block import gc_context_weights, global_context, global_context_map
from ._common import check_channels, reduced_channels

__all__ = ["GlobalContext"]


class _ConvMlpNorm(nn.Module):
    """The parameters of timm's ``ConvMlp`` with a norm: ``fc1`` (W_v1, b_v1), ``norm`` (LN's
    scale and shift, (C/r,)), ``fc2`` (W_v2, b_v2); :func:`visattn.functional.global_context`
    computes with them."""

    def __init__(self, channels: int, hidden: int, eps: float, factory: dict) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1, **factory)
        self.norm = nn.LayerNorm(hidden, eps=eps, **factory)
        self.fc2 = nn.Conv2d(hidden, channels, 1, **factory)


class GlobalContext(nn.Module):
    """Global Context block: z = x + W_v2 ReLU(LN(W_v1 sum_j alpha_j x_j)) (arXiv:1904.11492,
    eq. 5), alpha = softmax over positions of W_k x.

    Args:
        channels: C.
        reduction: r, the bottleneck ratio (C/r hidden channels), 16 as in the paper.
        divisor, rd_channels: round C/r to a multiple of ``divisor``, or give it (as SE's).
        fusion: ``"add"`` (the paper's GC block) or ``"scale"`` (z = x * sigma(t), the paper's
            fusion ablation and timm's default).
        use_attn: attention pooling (the paper); False: the context is GAP(x) (its ablation).
        norm_eps: LN's epsilon, 1e-5 (the official code); timm's LayerNorm2d uses 1e-6.
        zero_init_last: start W_v2 and b_v2 of the add fusion at zero (the official code), so
            that the block is the identity at initialisation.

    Shape:
        (N, C, H, W) -> (N, C, H, W), any memory format. ``attention(x)`` returns what is fused
        with x, (N, C, 1, 1): the term t that is added (``map_kind`` ``"residual"``) or the gate
        sigma(t) (``map_kind`` ``"channel"``). ``context_weights(x)`` returns alpha (N, 1, H, W).
    """

    def __init__(
        self,
        channels: int,
        *,
        reduction: float = 16,
        divisor: int = 1,
        rd_channels: int | None = None,
        fusion: str = "add",
        use_attn: bool = True,
        norm_eps: float = 1e-5,
        zero_init_last: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.channels = channels
        self.fusion = check_choice(fusion, "fusion", _modes.GC_FUSIONS)
        check_positive(norm_eps, "norm_eps")
        hidden = reduced_channels(channels, reduction, divisor=divisor, rd_channels=rd_channels)
        self.conv_attn = nn.Conv2d(channels, 1, 1, **factory) if use_attn else None
        mlp = _ConvMlpNorm(channels, hidden, norm_eps, factory)
        self.mlp_add = mlp if fusion == "add" else None
        self.mlp_scale = mlp if fusion == "scale" else None
        #: What ``attention(x)`` returns: the term added to x, or the gate x is multiplied by.
        self.map_kind = "residual" if fusion == "add" else "channel"
        self.reset_parameters(zero_init_last)

    @property
    def mlp(self) -> _ConvMlpNorm:
        """The transform's parameters (``mlp_add`` or ``mlp_scale``)."""
        return self.mlp_add if self.mlp_add is not None else self.mlp_scale

    def reset_parameters(self, zero_init_last: bool = True) -> None:
        """W_k: He-normal (fan in), bias 0 (the official code's ``kaiming_init``); with the add
        fusion and ``zero_init_last``, W_v2 and b_v2 at zero."""
        if self.conv_attn is not None:
            nn.init.kaiming_normal_(self.conv_attn.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(self.conv_attn.bias)
        if self.fusion == "add" and zero_init_last:
            nn.init.zeros_(self.mlp.fc2.weight)
            nn.init.zeros_(self.mlp.fc2.bias)

    def _arguments(self) -> tuple:
        attn = self.conv_attn
        m = self.mlp
        return (
            None if attn is None else attn.weight, None if attn is None else attn.bias,
            m.fc1.weight, m.fc1.bias, m.norm.weight, m.norm.bias, m.fc2.weight, m.fc2.bias,
        )  # fmt: skip

    def context_weights(self, x: torch.Tensor) -> torch.Tensor:
        """alpha = softmax over positions of W_k x, (N, 1, H, W): where the context comes from
        (:func:`visattn.functional.gc_context_weights`; needs ``use_attn=True``)."""
        check_channels(x, self.channels)
        if self.conv_attn is None:
            raise RuntimeError("context_weights: this block pools by average (use_attn=False)")
        return gc_context_weights(x, self.conv_attn.weight, self.conv_attn.bias)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """t (fusion ``"add"``) or sigma(t) (``"scale"``), (N, C, 1, 1)
        (:func:`visattn.functional.global_context_map`)."""
        check_channels(x, self.channels)
        return global_context_map(x, *self._arguments(), fusion=self.fusion, eps=self.mlp.norm.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels(x, self.channels)
        return global_context(x, *self._arguments(), fusion=self.fusion, eps=self.mlp.norm.eps)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, fusion={self.fusion!r}"
