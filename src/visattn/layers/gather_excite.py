"""Gather-Excite (Hu, Shen, Albanie, Sun, Vedaldi, NeurIPS 2018, arXiv:1810.12348).

    gather  x^ = xi_G(x), extent ratio e (global: one value per channel)          §3
    excite  y = x * sigmoid(interp(x^)), interp = nearest-neighbour resize to H x W   §3

The paper's pairings (§4) by option, named as timm's ``GatherExcite``:

| pairing | options | gather | parameters |
|---|---|---|---|
| GE-theta^- | (default) | average pooling, window 2e - 1, stride e (global: GAP) | none |
| GE-theta | ``extra_params=True`` | log2(e) depthwise 3 x 3 stride-2 convolutions, BatchNorm after each, ReLU between (global: one depthwise conv with kernel ``feat_size``, BatchNorm) | ``gather`` |
| GE-theta^+ | ``extra_params=True, use_mlp=True`` | as GE-theta, then 1 x 1 convs C -> C/r -> C (ReLU) before the sigmoid | ``gather``, ``mlp`` |

Defaults pinned: GE-theta^- with a global extent, the paper's parameter-free operator (with it,
its abstract says, a ResNet-50 outperforms a ResNet-101 with no added parameters; global was its
best extent). The paper's best pairing is GE-theta^+ (global), but a global parametric gather
needs the map's size (its kernel covers it, ``feat_size``), which a layer built by name for
every block of a network does not know; the finite extents work at any size. r = 16 (the
SE-style subnetwork of GE-theta^+, as the paper's).

Submodules and state_dict keys are timm's (``gather.conv1``, ``gather.norm1``, ``gather.act1``,
..., ``mlp.fc1``, ``mlp.fc2``), so a timm ``GatherExcite`` checkpoint loads with ``strict=True``.
Where timm differs: its global GE-theta convolution is padded by (k - 1) // 2, so its context
is about H x W, not 1 x 1 (``global_padding="timm"`` reproduces it); its default,
``use_mlp=True`` with no extra parameters, is SE with a sigmoid gate (``use_mlp=True`` here).
timm 1.0.31 cannot build its own module with ``extra_params`` or ``use_mlp`` (it passes its
device/dtype dictionary with ``*``).

The formulas are :mod:`visattn.functional.ge_block`'s (:func:`visattn.functional.gather_excite`).

Tests: ``tests/layers/test_layers_ge.py``, ``tests/functional/test_functional_ge.py``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import _modes
from .._checks import check_choice, check_pair
from ..functional.ge_block import gather_excite, gather_excite_map, ge_extent
from ._common import add_bottleneck, bottleneck_weights, check_channels, reduced_channels

__all__ = ["GatherExcite"]


class _ConvMlp(nn.Module):
    """The parameters of timm's ``ConvMlp`` (``fc1``, ``fc2``: 1 x 1 convolutions with biases);
    :func:`visattn.functional.gather_excite` computes with them."""

    def __init__(self, channels: int, hidden: int, factory: dict) -> None:
        super().__init__()
        add_bottleneck(self, channels, hidden, True, factory)


class GatherExcite(nn.Module):
    """Gather-Excite: y = x * sigmoid(interp(xi_G(x))) (arXiv:1810.12348, §3-4).

    Args:
        channels: C.
        extent: the extent ratio e: ``0`` or ``"global"`` (the default), or an int >= 2 (a power
            of 2 with ``extra_params``; the paper uses 2, 4, 8).
        extra_params: GE-theta's parametric gather (depthwise convolutions and BatchNorms).
        use_mlp: GE-theta^+'s subnetwork W_2 ReLU(W_1 x^ + b_1) + b_2 before the sigmoid.
        reduction: r of the subnetwork (C/r hidden channels), 16 as in the paper.
        divisor, rd_channels: round C/r to a multiple of ``divisor``, or give it (as SE's).
        feat_size: (H, W) of the input, needed by (and only by) the global parametric gather.
        global_padding: ``"none"`` (the paper) or ``"timm"``: the global parametric gather's
            padding (see the module docstring).

    Shape:
        (N, C, H, W) -> (N, C, H, W), any memory format. ``attention(x)`` returns the map the
        input is multiplied by: a gate (N, C, 1, 1) for a global gather (``map_kind``
        ``"channel"``), else (N, C, H, W) (``map_kind`` ``"mixed"``).
    """

    def __init__(
        self,
        channels: int,
        *,
        extent: int | str = 0,
        extra_params: bool = False,
        use_mlp: bool = False,
        reduction: float = 16,
        divisor: int = 1,
        rd_channels: int | None = None,
        feat_size: int | tuple[int, int] | None = None,
        global_padding: str = "none",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.channels = channels
        self.extent = ge_extent(extent)
        self.global_padding = check_choice(
            global_padding, "global_padding", _modes.GE_GLOBAL_PADDINGS
        )
        parametric_global = bool(extra_params) and self.extent == 0
        if parametric_global and feat_size is None:
            raise ValueError(
                "feat_size: expected the input's (H, W) for the global gather with "
                "extra_params=True (its kernel covers the map), got None"
            )
        if feat_size is not None and not parametric_global:
            raise ValueError(
                "feat_size: expected None (only the global gather with extra_params=True uses "
                f"it), got {feat_size!r}"
            )
        if extra_params and self.extent and self.extent & (self.extent - 1):
            raise ValueError(
                f"extent: expected a power of 2 with extra_params=True (log2(e) stride-2 "
                f"convolutions), got {self.extent}"
            )
        self.feat_size = None if feat_size is None else check_pair(feat_size, "feat_size")
        self.gather = self._build_gather(channels, factory) if extra_params else None
        if use_mlp:
            hidden = reduced_channels(channels, reduction, divisor=divisor, rd_channels=rd_channels)
            self.mlp = _ConvMlp(channels, hidden, factory)
        else:
            self.mlp = None
        global_map = self.extent == 0 and (not extra_params or self.global_padding == "none")
        #: What ``attention(x)`` returns: a channel gate, or a map of x's shape.
        self.map_kind = "channel" if global_map else "mixed"

    def _build_gather(self, channels: int, factory: dict) -> nn.Sequential:
        gather = nn.Sequential()
        if self.extent == 0:  # one convolution over the map (padded as timm's with "timm")
            kernels = [self.feat_size]
            pad = 0 if self.global_padding == "none" else tuple((k - 1) // 2 for k in kernels[0])
            stride = 1
        else:  # log2(e) stride-2 3 x 3 convolutions: the formula's stride and padding
            kernels = [(3, 3)] * int(math.log2(self.extent))
            pad, stride = 1, 2
        for i, k in enumerate(kernels, 1):
            conv = nn.Conv2d(
                channels, channels, k, stride, pad, groups=channels, bias=False, **factory
            )
            gather.add_module(f"conv{i}", conv)
            gather.add_module(f"norm{i}", nn.BatchNorm2d(channels, **factory))
            if i != len(kernels):
                gather.add_module(f"act{i}", nn.ReLU())
        return gather

    def _arguments(self) -> dict:
        """The formula's keyword arguments: the extent, the gather's and the subnetwork's weights."""
        kw: dict = {"extent": self.extent, "global_padding": self.global_padding}
        if self.gather is not None:
            convs = [m for m in self.gather if isinstance(m, nn.Conv2d)]
            kw["conv_weights"] = [m.weight for m in convs]
            kw["norms"] = [m for m in self.gather if isinstance(m, nn.BatchNorm2d)]
        if self.mlp is not None:
            names = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")
            kw.update(zip(names, bottleneck_weights(self.mlp), strict=True))
        return kw

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """sigmoid(interp(x^)) (GE-theta^+: of the subnetwork's output): (N, C, 1, 1) for a global
        gather, else (N, C, H, W) (:func:`visattn.functional.gather_excite_map`)."""
        check_channels(x, self.channels)
        return gather_excite_map(x, **self._arguments())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels(x, self.channels)
        return gather_excite(x, **self._arguments())

    def extra_repr(self) -> str:
        extent = "'global'" if self.extent == 0 else self.extent
        return f"channels={self.channels}, extent={extent}, map_kind={self.map_kind!r}"
