"""Squeeze-and-Excitation block (Hu et al., CVPR 2018, arXiv:1709.01507).

    squeeze     z_c = 1 / (H W) sum_i sum_j u_c(i, j)              (eq. 2; ``squeeze="max"``: max)
    excitation  s = gate(W_2 ReLU(W_1 z)),  W_1: C -> C/r,  W_2: C/r -> C        (eq. 3)
    reweight    x~_c = s_c * u_c                                                 (eq. 4)

Code symbols: ``fc1`` is W_1 (with bias b_1 when ``bias=True``), ``fc2`` is W_2, ``reduction``
is r. W_1 and W_2 are stored as 1 x 1 convolutions, the layout of timm's ``SEModule``
(``se.fc1`` / ``se.fc2``), so its checkpoints load unchanged.

``forward`` runs :func:`visattn.functional.squeeze_excite`: the fused kernels of
:mod:`visattn.kernels` by default, the plain formula under ``VISATTN_BACKEND=reference``.

Tests: ``tests/layers/test_squeeze_excite.py``, ``tests/kernels/test_kernels_se_cbam.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_choice, check_int, check_tensor
from ..functional.attention import GATES, POOLS, gate, global_pool
from ..functional.fused import squeeze_excite

__all__ = ["SqueezeExcite", "reduced_channels"]


def reduced_channels(
    channels: int, reduction: float, *, divisor: int = 1, rd_channels: int | None = None
) -> int:
    """C / r, rounded to a multiple of ``divisor`` the way timm's ``make_divisible`` does.

    ``rd_channels`` overrides the computation. Raises ``ValueError`` when ``reduction`` is
    larger than ``channels`` (the bottleneck would have less than one channel).
    """
    check_int(channels, "channels", minimum=1)
    if rd_channels is not None:
        return check_int(rd_channels, "rd_channels", minimum=1)
    if isinstance(reduction, bool) or not isinstance(reduction, (int, float)) or reduction <= 0:
        raise ValueError(f"reduction: expected a positive number, got {reduction!r}")
    if reduction > channels:
        raise ValueError(
            f"reduction: expected a value <= channels ({channels}) so that the bottleneck keeps "
            f"at least one channel, got {reduction}"
        )
    value = channels / reduction
    check_int(divisor, "divisor", minimum=1)
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class SqueezeExcite(nn.Module):
    """Squeeze-and-Excitation: x~ = x * gate(W_2 ReLU(W_1 pool(x))).

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
        input (N, C, H, W), output (N, C, H, W); any memory format.
    """

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
        factory = {"device": device, "dtype": dtype}
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=bias, **factory)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=bias, **factory)

    def excitation(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel weights s, shape (N, C, 1, 1)."""
        z = global_pool(x, self.squeeze)
        return gate(self.gate, self.fc2(self.act(self.fc1(z))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._attend(x)

    def _attend(self, x: torch.Tensor, input_norm: nn.Module | None = None) -> torch.Tensor:
        """SE(x), or SE(input_norm(x)) fused (:func:`visattn.layers.batchnorm_attention`)."""
        check_tensor(x, "x", ndim=4, layout="(N, C, H, W)")
        if x.shape[1] != self.channels:
            raise ValueError(f"x: expected {self.channels} channels, got shape {tuple(x.shape)}")
        return squeeze_excite(
            x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
            squeeze=self.squeeze, gate=self.gate, input_norm=input_norm,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"channels={self.channels}, squeeze={self.squeeze!r}, gate={self.gate!r}"
