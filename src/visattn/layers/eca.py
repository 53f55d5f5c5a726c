"""Channel gates without dimensionality reduction: ECA, circular ECA and effective SE.

    ECA   s = sigma(C1D_k(GAP(x))), zero padding      (Wang et al., CVPR 2020, arXiv:1910.03151,
          k = psi(C) = |log2(C) / gamma + b / gamma|_odd                          eq. 9 and 12)
    CECA  the same with circular padding across channels                   (timm's CecaModule)
    eSE   s = hard_sigmoid(W_C GAP(x) + b_C)          (Lee & Park, CenterMask, CVPR 2020,
                                                                  arXiv:1911.06667, Sec. 3.3)

and out = s * x. Code symbols: ``ECA.conv`` / ``CECA.conv`` is the 1-D convolution
``nn.Conv1d(1, 1, k, bias=False)`` (its weight the shared kernel w of C1D_k), ``ESE.fc`` is
W_C, b_C as a 1 x 1 convolution C -> C with bias: timm's attribute names (``EcaModule``,
``CecaModule``, ``EffectiveSEModule``), so their state_dicts load with ``strict=True``.

The formulas are :mod:`visattn.functional.eca_block`'s (:func:`visattn.functional.eca`,
:func:`visattn.functional.ese`); the layers own the parameters and call them.

Tests: ``tests/layers/test_layers_eca.py``, ``tests/functional/test_functional_eca.py``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .._checks import check_int
from ..functional.eca_block import (
    check_kernel_size,
    eca,
    eca_gate,
    eca_kernel_size,
    ese,
    ese_gate,
)
from ._common import check_channels

__all__ = ["CECA", "ECA", "ESE"]


class ECA(nn.Module):
    """Efficient Channel Attention: x * sigma(C1D_k(GAP(x))) (arXiv:1910.03151, eq. 9).

    Args:
        channels: C.
        kernel_size: k, odd; None (the paper) takes k = psi(C) of eq. 12 with ``gamma``, ``b``.
        gamma, b: the mapping psi's gamma and b (2 and 1 in the paper).

    The paper's psi gives k = 1 (no interaction across channels) for C < 8. timm's
    ``EcaModule`` uses max(psi(C), 3): for C < 8, ``kernel_size=3`` reproduces it (for C >= 8
    the two agree). The authors' ``eca_layer`` takes k as an argument (3 by default).

    Shape:
        (N, C, H, W) -> (N, C, H, W), any memory format. ``attention(x)`` returns s,
        (N, C, 1, 1).
    """

    #: What ``attention(x)`` returns (a gate (N, C, 1, 1)), and where :mod:`visattn.viz.capture`
    #: records it.
    map_kind: ClassVar[str] = "channel"
    #: Padding across channels: zeros (ECA) or circular (:class:`CECA`).
    circular: ClassVar[bool] = False

    def __init__(
        self,
        channels: int,
        *,
        kernel_size: int | None = None,
        gamma: float = 2,
        b: float = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_int(channels, "channels", minimum=1)
        k = eca_kernel_size(channels, gamma, b)  # validates gamma and b even when k is given
        if kernel_size is not None:
            k = check_kernel_size(kernel_size)
        self.channels = channels
        self.conv = nn.Conv1d(
            1,
            1,
            k,
            padding=k // 2,
            padding_mode="circular" if self.circular else "zeros",
            bias=False,
            device=device,
            dtype=dtype,
        )

    @property
    def kernel_size(self) -> int:
        """k, the 1-D convolution's size."""
        return self.conv.kernel_size[0]

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The gate s = sigma(C1D_k(GAP(x))), (N, C, 1, 1) (:func:`visattn.functional.eca_gate`)."""
        check_channels(x, self.channels)
        return eca_gate(x, self.conv.weight, circular=self.circular)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels(x, self.channels)
        return eca(x, self.conv.weight, circular=self.circular)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}"


class CECA(ECA):
    """Circular ECA (timm's ``CecaModule``): ECA whose 1-D convolution pads circularly across
    channels, so the first and the last channels are neighbours.

    Arguments, defaults (psi of arXiv:1910.03151, eq. 12) and shapes as :class:`ECA`; timm uses
    max(psi(C), 3) here too (``kernel_size=3`` for C < 8). k may exceed C: the padding then
    wraps around the channels more than once.
    """

    circular: ClassVar[bool] = True


class ESE(nn.Module):
    """Effective Squeeze-Excitation: x * hard_sigmoid(W_C GAP(x) + b_C) (arXiv:1911.06667,
    Sec. 3.3).

    Args:
        channels: C; ``fc`` (W_C, b_C) maps C -> C, without SE's reduction.

    The paper's gate and layout, also timm's ``EffectiveSEModule`` defaults (its experimental
    ``add_maxpool`` and other gates are not offered). hard_sigmoid(v) = clamp((v + 3) / 6, 0, 1).

    Shape:
        (N, C, H, W) -> (N, C, H, W), any memory format. ``attention(x)`` returns s,
        (N, C, 1, 1).
    """

    map_kind: ClassVar[str] = "channel"

    def __init__(
        self,
        channels: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_int(channels, "channels", minimum=1)
        self.channels = channels
        self.fc = nn.Conv2d(channels, channels, 1, device=device, dtype=dtype)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The gate s = hard_sigmoid(W_C GAP(x) + b_C), (N, C, 1, 1)
        (:func:`visattn.functional.ese_gate`)."""
        check_channels(x, self.channels)
        return ese_gate(x, self.fc.weight, self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels(x, self.channels)
        return ese(x, self.fc.weight, self.fc.bias)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
