"""Triplet Attention (Misra, Nalamada, Arasanipalai, Hou, WACV 2021, arXiv:2010.03045).

    Z-pool(chi) = [MaxPool_0d(chi); AvgPool_0d(chi)]                                  (eq. 1)
    y = 1/3 (chi_1 * sigma(psi_cw(Z-pool(chi_1))) + chi_2 * sigma(psi_hc(Z-pool(chi_2)))
             + x * sigma(psi_hw(Z-pool(x))))           chi_i: x rotated, results rotated back  (eq. 2)

Each branch ``cw``, ``hc``, ``hw`` is a :class:`TripletGate`: psi = a k x k convolution from the
two pooled maps to one, without bias, then a BatchNorm (eps 1e-5, momentum 0.01, affine), both
as the paper's code has them, under the same names (``cw.conv.conv.weight``,
``cw.conv.bn.weight``, ...), so its checkpoints load with ``strict=True``. ``no_spatial=True``
(the code's option) drops the ``hw`` branch: y = 1/2 (branch_cw + branch_hc).

Parameters: 3 x (2 k^2 + 2) = 300 at k = 7 (each convolution 2 * 49 weights, each BatchNorm a
scale and a shift; plus the BatchNorms' running statistics as buffers), 16 x 300 = 4.8 K in a
ResNet-50, the paper's count. No channel count: the layer works for any C (the registry's
factory drops it).

The formulas are :mod:`visattn.functional.triplet_block`'s; ``attention(x)`` is the average
of the three branches' maps, broadcast to (N, C, H, W) (``map_kind = "mixed"``).

Tests: ``tests/layers/test_layers_triplet.py``, ``tests/functional/test_functional_triplet.py``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .._checks import check_int
from ..functional.triplet_block import triplet_attention, triplet_attention_map

__all__ = ["TripletAttention", "TripletGate"]


class _ConvNorm(nn.Module):
    """psi's parameters: ``conv`` (2 -> 1, k x k, no bias) and ``bn`` (the code's BasicConv)."""

    def __init__(self, kernel_size: int, factory: dict) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False, **factory)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01, affine=True, **factory)


class TripletGate(nn.Module):
    """One branch of triplet attention: psi, held as ``conv.conv`` and ``conv.bn``."""

    def __init__(self, kernel_size: int, factory: dict) -> None:
        super().__init__()
        self.conv = _ConvNorm(kernel_size, factory)


class TripletAttention(nn.Module):
    """Triplet attention: y = x * (a_cw + a_hc + a_hw) / 3 (arXiv:2010.03045, eq. 1-3).

    Args:
        kernel_size: k of the three convolutions, odd (7 in the paper).
        no_spatial: drop the (H, W) branch (the paper's code's option).

    Shape: (N, C, H, W) -> (N, C, H, W), any C. ``attention(x)`` returns the average of the
    branches' maps, (N, C, H, W).
    """

    map_kind: ClassVar[str] = "mixed"

    def __init__(
        self,
        *,
        kernel_size: int = 7,
        no_spatial: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_int(kernel_size, "kernel_size", minimum=1)
        if kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size: expected an odd size so the map keeps its position, got {kernel_size}"
            )
        if not isinstance(no_spatial, bool):
            raise TypeError(f"no_spatial: expected a bool, got {no_spatial!r}")
        factory = {"device": device, "dtype": dtype}
        self.kernel_size = kernel_size
        self.no_spatial = no_spatial
        self.cw = TripletGate(kernel_size, factory)
        self.hc = TripletGate(kernel_size, factory)
        self.hw = None if no_spatial else TripletGate(kernel_size, factory)

    def _arguments(self) -> tuple[tuple, dict]:
        cw, hc, hw = self.cw.conv, self.hc.conv, None if self.hw is None else self.hw.conv
        args = (cw.conv.weight, hc.conv.weight, None if hw is None else hw.conv.weight)
        kwargs = {"cw_norm": cw.bn, "hc_norm": hc.bn, "hw_norm": None if hw is None else hw.bn}
        return args, kwargs

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """(a_cw + a_hc + a_hw) / 3, (N, C, H, W) (:func:`visattn.functional.triplet_attention_map`)."""
        args, kwargs = self._arguments()
        return triplet_attention_map(x, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args, kwargs = self._arguments()
        return triplet_attention(x, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, no_spatial={self.no_spatial}"
