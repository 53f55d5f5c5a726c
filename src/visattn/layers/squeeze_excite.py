"""Squeeze-and-Excitation block (Hu et al., CVPR 2018, arXiv:1709.01507).

    squeeze     z_c = 1 / (H W) sum_i sum_j u_c(i, j)              (eq. 2; ``squeeze="max"``: max)
    excitation  s = sigma(W_2 ReLU(W_1 z + b_1) + b_2),  W_1: C -> C/r,  W_2: C/r -> C  (eq. 3)
    reweight    x~_c = s_c * u_c                                                 (eq. 4)

Code symbols (as in :mod:`visattn.functional`): ``fc1`` is W_1, b_1 (biases when
``bias=True``), ``fc2`` is W_2, b_2, ``reduction`` is r, ``gate`` names sigma. W_1 and W_2 are
stored as 1 x 1 convolutions, the layout of timm's ``SEModule`` (``se.fc1`` / ``se.fc2``), so
its checkpoints load unchanged.

The formulas are :mod:`visattn.functional.se_block`'s: ``forward`` runs
:func:`visattn.functional.squeeze_excite` (the fused kernels of :mod:`visattn.kernels` by
default, the plain formula under ``VISATTN_BACKEND=reference``), ``excitation`` is
:func:`visattn.functional.excitation` of the squeezed input.

Tests: ``tests/layers/test_layers_squeeze_excite.py``, ``tests/kernels/test_kernels_se_cbam.py``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .._checks import check_choice
from ..functional.attention import GATES, POOLS, _global_pool
from ..functional.fused import squeeze_excite
from ..functional.se_block import FC_NAMES, _excitation, check_squeeze_excite
from ._common import add_bottleneck, bottleneck_weights, check_channels, reduced_channels

__all__ = ["SqueezeExcite", "reduced_channels"]


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation: x~ = x * sigma(W_2 ReLU(W_1 pool(x) + b_1) + b_2).

    Args:
        channels: C, the number of input (and output) channels.
        reduction: r, bottleneck ratio (C/r hidden channels), 16 as in the paper.
        squeeze: ``"avg"`` (the paper) or ``"max"`` global pooling.
        gate: gate function, one of ``"sigmoid"`` (the paper), ``"hard_sigmoid"``, ``"tanh"``,
            ``"relu"`` (the gates of the paper's Table 12 ablation).
        bias: whether W_1 and W_2 have biases.
        divisor: round C/r to a multiple of this (timm uses 8 in its ResNets).
        rd_channels: explicit number of hidden channels (overrides ``reduction``).

    Shape:
        input (N, C, H, W), output (N, C, H, W); any memory format. ``attention(x)`` (also
        ``excitation(x)``) returns s, shape (N, C, 1, 1).
    """

    #: What ``attention(x)`` returns, and where :mod:`visattn.viz.capture` records it.
    map_kind: ClassVar[str] = "se"

    def __init__(
        self,
        channels: int,
        *,
        reduction: float = 16,
        squeeze: str = "avg",
        gate: str = "sigmoid",
        bias: bool = True,
        divisor: int = 1,
        rd_channels: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden = reduced_channels(channels, reduction, divisor=divisor, rd_channels=rd_channels)
        self.channels = channels
        self.squeeze = check_choice(squeeze, "squeeze", POOLS)
        self.gate = check_choice(gate, "gate", GATES)
        add_bottleneck(self, channels, hidden, bias, {"device": device, "dtype": dtype})

    def excitation(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel weights s = sigma(W_2 ReLU(W_1 z + b_1) + b_2) (eq. 3) of the squeezed
        x, shape (N, C, 1, 1)."""
        check_channels(x, self.channels)
        check_squeeze_excite(x, *bottleneck_weights(self), self.squeeze, self.gate, FC_NAMES)
        return _excitation(_global_pool(x, self.squeeze), *bottleneck_weights(self), self.gate)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The map the layer multiplies x by: the excitation s, (N, C, 1, 1)."""
        return self.excitation(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._attend(x)

    def _attend(self, x: torch.Tensor, input_norm: nn.Module | None = None) -> torch.Tensor:
        """SE(x), or SE(input_norm(x)) fused (:func:`visattn.layers.batchnorm_attention`)."""
        check_channels(x, self.channels)
        return squeeze_excite(
            x,
            *bottleneck_weights(self),
            squeeze=self.squeeze,
            gate=self.gate,
            input_norm=input_norm,
        )

    def extra_repr(self) -> str:
        return f"channels={self.channels}, squeeze={self.squeeze!r}, gate={self.gate!r}"
