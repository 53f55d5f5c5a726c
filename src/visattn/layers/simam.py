"""SimAM, a simple, parameter-free attention module (Yang, Zhang, Li, Xie, ICML 2021).

    1/e_t* = (t - mu)^2 / (4 (sigma^2 + lambda)) + 1/2     per channel; sigma^2 over H W - 1
    X~     = sigmoid(1/E) * X                               (eq. 5)

No parameters: ``e_lambda`` is lambda (1e-4, the paper's value; the official code's name). The
layer computes a 3-D map (one weight per position and channel), so its ``map_kind`` is
``"mixed"``: ``attention(x)`` returns sigmoid(1/E), (N, C, H, W), and forward(x) is x times it.
A map of one position (H W = 1) gives sigmoid(1/2) x (see :mod:`visattn.functional.simam_block`,
where the official code's 0/0 gives NaN).

The formula is :mod:`visattn.functional.simam_block`'s (:func:`visattn.functional.simam`).
Tests: ``tests/layers/test_layers_simam.py``, ``tests/functional/test_functional_simam.py``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..functional.simam_block import SIMAM_LAMBDA, check_e_lambda, simam, simam_map

__all__ = ["SimAM"]


class SimAM(nn.Module):
    """SimAM: X~ = sigmoid(1/E) * X (eq. 5), the energies of eq. 4 per channel, no parameters.

    Args:
        e_lambda: lambda, the energy's regulariser (1e-4 in the paper), > 0.

    Shape: (N, C, H, W) -> (N, C, H, W), any C, any memory format (kept).
    ``attention(x)`` returns sigmoid(1/E), (N, C, H, W).
    """

    #: A map per position and channel (N, C, H, W); forward(x) == x * attention(x).
    map_kind: ClassVar[str] = "mixed"

    def __init__(self, *, e_lambda: float = SIMAM_LAMBDA) -> None:
        super().__init__()
        check_e_lambda(e_lambda)
        self.e_lambda = float(e_lambda)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """sigmoid(1/E), the map x is multiplied by, (N, C, H, W)."""
        return torch.sigmoid(simam_map(x, e_lambda=self.e_lambda))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return simam(x, e_lambda=self.e_lambda)

    def extra_repr(self) -> str:
        return f"e_lambda={self.e_lambda}"
