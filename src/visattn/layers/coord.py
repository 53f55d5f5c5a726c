"""Coordinate Attention (Hou, Zhou, Feng, CVPR 2021, arXiv:2103.02907).

    z^h = AvgPool_W(x) (N, C, H, 1),  z^w = AvgPool_H(x) (N, C, 1, W)           (eq. 4-5)
    f = delta(BN(F_1([z^h, z^w])))                                             (eq. 6)
    g^h = sigma(F_h(f^h)),  g^w = sigma(F_w(f^w))                              (eq. 7-8)
    y = x * g^h * g^w                                                          (eq. 9)

Code symbols: ``conv1`` is F_1 (1 x 1, C -> C/r), ``bn1`` its BatchNorm (``norm=False``: an
Identity), ``act`` the name of delta (h-swish), ``conv_h`` / ``conv_w`` are F_h / F_w
(C/r -> C), sigma is ``gate``: the attribute names of timm's ``CoordAttn`` and of the paper's
code, so their state dicts load with ``strict=True``.

Defaults are the paper's code's: C/r = max(8, C // 32), convolutions with biases, h-swish,
sigmoid. timm 1.0's ``CoordAttn`` differs in two defaults: its bottleneck is C * (1/16) * (2/3)
= C/24 rounded to the nearest multiple of 8 (``make_divisible``, no round-down limit), at least
8, and its convolutions have no bias: ``CoordAttention(C, reduction=24, divisor=8, bias=False)``
builds its layout (the same width as timm's for every C up to 20000, checked;
``rd_channels=`` sets the width directly, as timm's ``rd_channels``). Its h-swish, BatchNorm
and sigmoid are the paper's (``gate="hard_sigmoid"`` is timm's ``gate_layer="hardsigmoid"``).

The formulas are :mod:`visattn.functional.coord_block`'s; ``attention(x)`` is g^h * g^w,
(N, C, H, W) (``map_kind = "mixed"``).

Tests: ``tests/layers/test_layers_coord.py``, ``tests/functional/test_functional_coord.py``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .. import _modes
from .._checks import check_choice, check_int, check_positive
from ..functional.attention import GATES
from ..functional.coord_block import coord_attention, coord_attention_map
from ._common import check_channels

__all__ = ["CoordAttention", "coord_channels"]


def coord_channels(channels: int, reduction: float = 32, *, min_channels: int = 8,
                   divisor: int | None = None) -> int:  # fmt: skip
    """C/r of Coordinate Attention's bottleneck.

    ``divisor=None`` (the paper's code): max(min_channels, C // r). An int: C / r rounded to
    the nearest multiple of ``divisor`` (at least ``divisor``; timm's ``make_divisible`` with
    ``round_limit=0``), then at least ``min_channels``.
    """
    check_int(channels, "channels", minimum=1)
    check_positive(reduction, "reduction")
    check_int(min_channels, "min_channels", minimum=1)
    if divisor is None:
        return max(min_channels, int(channels // reduction))
    check_int(divisor, "divisor", minimum=1)
    rounded = max(divisor, int(channels / reduction + divisor / 2) // divisor * divisor)
    return max(min_channels, rounded)


class CoordAttention(nn.Module):
    """Coordinate Attention: y = x * g^h * g^w (arXiv:2103.02907, eq. 4-9).

    Args:
        channels: C.
        reduction: r (32 in the paper's code).
        min_channels: the bottleneck's least width (8 in the paper's code).
        divisor: None (C // r, the paper's code) or round C / r to a multiple of it (timm: 8).
        rd_channels: the bottleneck's width, overriding the three above.
        bias: biases in F_1, F_h, F_w (the paper's code: yes; timm: no).
        norm: BatchNorm after F_1 (the paper: yes).
        act: delta, one of :data:`visattn._modes.ACTIVATIONS` (``"hard_swish"``, the paper's).
        gate: sigma, one of :data:`visattn.functional.GATES` (``"sigmoid"``, the paper's).

    Shape: (N, C, H, W) -> (N, C, H, W). ``attention(x)`` returns g^h * g^w, (N, C, H, W).
    """

    map_kind: ClassVar[str] = "mixed"

    def __init__(
        self,
        channels: int,
        *,
        reduction: float = 32,
        min_channels: int = 8,
        divisor: int | None = None,
        rd_channels: int | None = None,
        bias: bool = True,
        norm: bool = True,
        act: str = "hard_swish",
        gate: str = "sigmoid",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if rd_channels is None:
            hidden = coord_channels(channels, reduction, min_channels=min_channels, divisor=divisor)
        else:
            check_int(channels, "channels", minimum=1)
            hidden = check_int(rd_channels, "rd_channels", minimum=1)
        self.channels = channels
        self.act = check_choice(act, "act", _modes.ACTIVATIONS)
        self.gate = check_choice(gate, "gate", GATES)
        factory = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(channels, hidden, 1, bias=bias, **factory)
        self.bn1 = nn.BatchNorm2d(hidden, **factory) if norm else nn.Identity()
        self.conv_h = nn.Conv2d(hidden, channels, 1, bias=bias, **factory)
        self.conv_w = nn.Conv2d(hidden, channels, 1, bias=bias, **factory)

    def _arguments(self) -> tuple[tuple, dict]:
        args = (self.conv1.weight, self.conv1.bias, self.conv_h.weight, self.conv_h.bias,
                self.conv_w.weight, self.conv_w.bias)  # fmt: skip
        norm = None if isinstance(self.bn1, nn.Identity) else self.bn1
        return args, {"norm": norm, "act": self.act, "gate": self.gate}

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """g^h * g^w, (N, C, H, W) (:func:`visattn.functional.coord_attention_map`)."""
        check_channels(x, self.channels)
        args, kwargs = self._arguments()
        return coord_attention_map(x, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels(x, self.channels)
        args, kwargs = self._arguments()
        return coord_attention(x, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, act={self.act!r}, gate={self.gate!r}"
