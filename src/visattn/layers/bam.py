"""BAM, the Bottleneck Attention Module (Park, Woo, Lee, Kweon, BMVC 2018, arXiv:1807.06514).

    F' = F + F * M(F),   M(F) = sigma(M_c(F) + M_s(F))                          (eq. 1-2)
    M_c(F) = BN(MLP(AvgPool(F)))                       channel branch, r = 16    (eq. 3)
    M_s(F) = BN(f_3^{1x1}(f_2^{3x3}(f_1^{3x3}(f_0^{1x1}(F)))))  spatial, r = 16, d = 4  (eq. 4)

The parameters carry the names of the paper's official code, so its checkpoints (the ResNet-50
+ BAM of its repository) load with ``strict=True`` into ``variant="official"``:

- ``channel_att.gate_c``: ``gate_c_fc_0`` (``nn.Linear`` C -> C/r: W_1, b_1 in the package's
  symbols, the paper's W_0, b_0), ``gate_c_fc_final`` (C/r -> C: W_2, b_2, the paper's W_1, b_1),
  and the BatchNorm1d ``gate_c_bn_final`` after the MLP (eq. 3's BN; ``variant="paper"``) or
  ``gate_c_bn_1`` on the hidden layer before its ReLU (``variant="official"``).
- ``spatial_att.gate_s``: ``gate_s_conv_reduce0`` (f_0, 1 x 1, C -> C/r) and
  ``gate_s_bn_reduce0``; ``gate_s_conv_di_<i>`` (f_1, f_2: 3 x 3, dilation d, padding d) and
  ``gate_s_bn_di_<i>``; ``gate_s_conv_final`` (f_3, 1 x 1, C/r -> 1); ``gate_s_bn_final`` (eq. 4's
  BN; ``variant="paper"`` only). Every BatchNorm but the last is followed by a ReLU; every
  convolution has a bias, as in the official code.

``variant="official"`` is the official code's layout: BN on the channel MLP's hidden layer and
none after it, no BN after f_3, and 1 + sigma(M_c * M_s), a product where eq. 2 has a sum. C/r
is rounded as :func:`visattn.layers.reduced_channels` (the official code floors C // r: the same
when r divides C, as in ResNets).

The formulas are :mod:`visattn.functional.bam_block`'s; ``BAM.attention(x)`` is 1 + M(F),
(N, C, H, W) (``map_kind = "mixed"``), and ``BAM(x) = x * BAM.attention(x)``.

Tests: ``tests/layers/test_layers_bam.py``, ``tests/functional/test_functional_bam.py``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .. import _modes
from .._checks import check_choice, check_int
from ..functional.bam_block import bam, bam_attention, bam_channel_attention, bam_spatial_attention
from ._common import check_channels, reduced_channels

__all__ = ["BAM", "BAMChannelGate", "BAMSpatialGate"]


def _optional(modules: nn.ModuleDict, name: str) -> nn.Module | None:
    return modules[name] if name in modules else None


class BAMChannelGate(nn.Module):
    """BAM's channel branch M_c(F) (eq. 3), before the sigmoid: (N, C, H, W) -> (N, C, 1, 1).

    Built by :class:`BAM`; ``gate_c`` holds the official code's layers (see the module).
    """

    def __init__(self, channels: int, hidden: int, variant: str, factory: dict) -> None:
        super().__init__()
        layers: dict[str, nn.Module] = {"gate_c_fc_0": nn.Linear(channels, hidden, **factory)}
        if variant == "official":
            layers["gate_c_bn_1"] = nn.BatchNorm1d(hidden, **factory)
        layers["gate_c_fc_final"] = nn.Linear(hidden, channels, **factory)
        if variant == "paper":
            layers["gate_c_bn_final"] = nn.BatchNorm1d(channels, **factory)
        self.gate_c = nn.ModuleDict(layers)

    def weights(self) -> tuple:
        """(W_1, b_1, W_2, b_2)."""
        fc0, fc1 = self.gate_c["gate_c_fc_0"], self.gate_c["gate_c_fc_final"]
        return (fc0.weight, fc0.bias, fc1.weight, fc1.bias)

    def norms(self) -> dict:
        """The keyword arguments ``hidden_norm`` and ``channel_norm`` of the BAM functions."""
        return {
            "hidden_norm": _optional(self.gate_c, "gate_c_bn_1"),
            "channel_norm": _optional(self.gate_c, "gate_c_bn_final"),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norms()
        return bam_channel_attention(
            x, *self.weights(), hidden_norm=n["hidden_norm"], norm=n["channel_norm"]
        )


class BAMSpatialGate(nn.Module):
    """BAM's spatial branch M_s(F) (eq. 4), before the sigmoid: (N, C, H, W) -> (N, 1, H, W).

    Built by :class:`BAM`; ``gate_s`` holds the official code's layers (see the module).
    """

    def __init__(self, channels: int, hidden: int, dilation: int, dilated_convs: int,
                 variant: str, factory: dict) -> None:  # fmt: skip
        super().__init__()
        layers: dict[str, nn.Module] = {
            "gate_s_conv_reduce0": nn.Conv2d(channels, hidden, 1, **factory),
            "gate_s_bn_reduce0": nn.BatchNorm2d(hidden, **factory),
        }
        convs, norms = ["gate_s_conv_reduce0"], ["gate_s_bn_reduce0"]
        for i in range(dilated_convs):
            layers[f"gate_s_conv_di_{i}"] = nn.Conv2d(
                hidden, hidden, 3, padding=dilation, dilation=dilation, **factory
            )
            layers[f"gate_s_bn_di_{i}"] = nn.BatchNorm2d(hidden, **factory)
            convs.append(f"gate_s_conv_di_{i}")
            norms.append(f"gate_s_bn_di_{i}")
        layers["gate_s_conv_final"] = nn.Conv2d(hidden, 1, 1, **factory)
        convs.append("gate_s_conv_final")
        if variant == "paper":
            layers["gate_s_bn_final"] = nn.BatchNorm2d(1, **factory)
        norms.append("gate_s_bn_final")
        self.gate_s = nn.ModuleDict(layers)
        self.dilation = dilation
        self._convs, self._norms = tuple(convs), tuple(norms)

    def weights(self) -> tuple:
        """(spatial_weights, spatial_biases): f_0, f_1, ..., f_last."""
        convs = [self.gate_s[name] for name in self._convs]
        return tuple(c.weight for c in convs), tuple(c.bias for c in convs)

    def norms(self) -> tuple:
        """One BatchNorm (or None) per convolution: ``spatial_norms``."""
        return tuple(_optional(self.gate_s, name) for name in self._norms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bam_spatial_attention(
            x, *self.weights(), dilation=self.dilation, spatial_norms=self.norms()
        )

    def extra_repr(self) -> str:
        return f"dilation={self.dilation}"


class BAM(nn.Module):
    """BAM: F' = F * (1 + sigma(M_c(F) + M_s(F))) (arXiv:1807.06514, eq. 1-4).

    Args:
        channels: C.
        reduction: r of both branches (16 in the paper).
        dilation: d of the spatial branch's 3 x 3 convolutions (4 in the paper).
        dilated_convs: how many of them (2 in the paper).
        variant: ``"paper"`` (eq. 2-4) or ``"official"`` (the official code's BatchNorm places
            and its product sigma(M_c * M_s); see the module).

    Shape: (N, C, H, W) -> (N, C, H, W). ``attention(x)`` returns 1 + M(F), (N, C, H, W). In
    training mode the channel branch's BatchNorm needs N > 1.
    """

    map_kind: ClassVar[str] = "mixed"

    def __init__(
        self,
        channels: int,
        *,
        reduction: float = 16,
        dilation: int = 4,
        dilated_convs: int = 2,
        variant: str = "paper",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden = reduced_channels(channels, reduction)
        check_int(dilation, "dilation", minimum=1)
        check_int(dilated_convs, "dilated_convs", minimum=0)
        self.variant = check_choice(variant, "variant", _modes.BAM_VARIANTS)
        self.combine = "sum" if variant == "paper" else "product"
        self.channels = channels
        factory = {"device": device, "dtype": dtype}
        self.channel_att = BAMChannelGate(channels, hidden, variant, factory)
        self.spatial_att = BAMSpatialGate(
            channels, hidden, dilation, dilated_convs, variant, factory
        )

    def _arguments(self) -> tuple[tuple, dict]:
        sp = self.spatial_att
        args = (*self.channel_att.weights(), *sp.weights())
        kwargs = {"dilation": sp.dilation, "spatial_norms": sp.norms(), "combine": self.combine}
        return args, {**kwargs, **self.channel_att.norms()}

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """1 + M(F) = 1 + sigma(M_c(F) + M_s(F)), (N, C, H, W)
        (:func:`visattn.functional.bam_attention`)."""
        check_channels(x, self.channels)
        args, kwargs = self._arguments()
        return bam_attention(x, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels(x, self.channels)
        args, kwargs = self._arguments()
        return bam(x, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, variant={self.variant!r}"
