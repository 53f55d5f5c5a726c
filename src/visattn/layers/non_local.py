"""The non-local block (Wang, Girshick, Gupta, He, CVPR 2018, arXiv:1711.07971).

    y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j)      (eq. 1; f: eq. 3, 4 or 5)
    z_i = BN(W_z y_i) + x_i                     (eq. 6, with the BatchNorm of Sec. 4.1)

Code symbols (timm's ``NonLocalAttn`` names, so its state_dict loads with ``strict=True``):
``t`` is theta, ``p`` phi, ``g`` g (1 x 1 convolutions C -> C', with biases), ``z`` W_z (C' ->
C), ``norm`` the BatchNorm after it, its scale initialised to zero (Sec. 4.1: the block starts as
the identity); ``f`` is w_f of the concatenation form (no bias). C' = C / ``reduction``, 2 as
in the paper (Sec. 3.3: half the channels of x).

timm's ``NonLocalAttn(C)`` is ``NonLocal(C, reduction=8, divisor=8, scale=C ** -0.5)``: C' =
C/8 rounded to a multiple of 8, and theta^T phi scaled by C^(-1/2) before the softmax (the
paper has no scale; the official code's ``USE_SCALE`` option scales by C'^(-1/2)).

``map_kind`` is ``"residual"``: ``attention(x)`` returns BN(W_z y), and forward(x) is x plus it.
``affinity(x)`` returns the pairwise matrix f(x_i, x_j) / C(x), (N, H W, N_j), to visualise.

The formulas are :mod:`visattn.functional.nonlocal_block`'s.
Tests: ``tests/layers/test_layers_nonlocal.py``, ``tests/functional/test_functional_nonlocal.py``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..functional.nonlocal_block import (
    check_non_local_options,
    non_local,
    non_local_affinity,
    non_local_response,
)
from ._common import check_channels, reduced_channels

__all__ = ["NonLocal"]


class NonLocal(nn.Module):
    """Non-local block: z = BN(W_z y) + x, y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j) (eq. 1, 6).

    Args:
        channels: C.
        reduction: C / C', the embeddings' channel reduction (2 in the paper, 8 in timm).
        divisor: round C' to a multiple of this (timm: 8), as :func:`reduced_channels`.
        rd_channels: C' given directly (overrides ``reduction``).
        pairwise: f, ``"embedded_gaussian"`` (the paper's default, eq. 3), ``"dot_product"``
            (eq. 4) or ``"concatenation"`` (eq. 5, adds the weight ``f``).
        scale: multiplies theta^T phi; None (the paper) is 1; timm uses ``channels ** -0.5``.
        subsample: max-pool phi and g by 2 x 2 (Sec. 3.3), a quarter of the pairs.
        bias: biases of the four 1 x 1 convolutions (the official code and timm have them).

    Shape: (N, C, H, W) -> (N, C, H, W), any memory format (kept). ``attention(x)`` returns
    BN(W_z y), (N, C, H, W); ``affinity(x)`` the pairwise matrix, (N, H W, N_j).
    """

    #: forward(x) == x + attention(x).
    map_kind: ClassVar[str] = "residual"

    def __init__(
        self,
        channels: int,
        *,
        reduction: float = 2,
        divisor: int = 1,
        rd_channels: int | None = None,
        pairwise: str = "embedded_gaussian",
        scale: float | None = None,
        subsample: bool = False,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        inter = reduced_channels(channels, reduction, divisor=divisor, rd_channels=rd_channels)
        check_non_local_options(pairwise, scale, subsample)
        self.channels, self.inter_channels = channels, inter
        self.pairwise, self.scale, self.subsample = pairwise, scale, subsample
        factory = {"device": device, "dtype": dtype}
        self.t = nn.Conv2d(channels, inter, 1, bias=bias, **factory)
        self.p = nn.Conv2d(channels, inter, 1, bias=bias, **factory)
        self.g = nn.Conv2d(channels, inter, 1, bias=bias, **factory)
        self.z = nn.Conv2d(inter, channels, 1, bias=bias, **factory)
        self.norm = nn.BatchNorm2d(channels, **factory)
        nn.init.zeros_(self.norm.weight)  # Sec. 4.1: BN(W_z y) = 0, the block starts as x
        if pairwise == "concatenation":
            self.f = nn.Conv2d(2 * inter, 1, 1, bias=False, **factory)

    def _options(self) -> dict:
        return {
            "pairwise": self.pairwise,
            "concat_weight": self.f.weight if self.pairwise == "concatenation" else None,
            "scale": self.scale,
            "subsample": self.subsample,
        }

    def _weights(self) -> tuple:
        return tuple(w for m in (self.t, self.p, self.g, self.z) for w in (m.weight, m.bias))

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        """f(x_i, x_j) / C(x), (N, H W, N_j) (:func:`visattn.functional.non_local_affinity`)."""
        check_channels(x, self.channels)
        return non_local_affinity(x, *self._weights()[:4], **self._options())

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """BN(W_z y), the term added to x, (N, C, H, W)."""
        check_channels(x, self.channels)
        return non_local_response(x, *self._weights(), norm=self.norm, **self._options())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels(x, self.channels)
        return non_local(x, *self._weights(), norm=self.norm, **self._options())

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, inter_channels={self.inter_channels}, "
            f"pairwise={self.pairwise!r}, scale={self.scale}, subsample={self.subsample}"
        )
