"""Pooling and gating pieces of Squeeze-and-Excitation and CBAM, as plain tensor functions.

- SE (Hu et al., 2018, arXiv:1709.01507): squeeze z_c = 1/(H W) sum_ij u_c(i, j) (eq. 2) is
  :func:`global_pool` with ``"avg"``; the gate sigma of s = sigma(W_2 ReLU(W_1 z)) (eq. 3) is
  :func:`gate`; the reweight x~_c = s_c u_c (eq. 4) is :func:`channel_scale`.
- CBAM (Woo et al., 2018, arXiv:1807.06521): AvgPool(F) and MaxPool(F) of the channel attention
  M_c(F) = sigma(MLP(AvgPool(F)) + MLP(MaxPool(F))) (eq. 2) are :func:`global_pool`; AvgPool_c
  and MaxPool_c of the spatial attention M_s(F) = sigma(f^{7x7}([AvgPool_c(F); MaxPool_c(F)]))
  (eq. 3) are :func:`channel_pool`.

Max-pool ties: the value is unique; the gradient goes to one position, PyTorch's ``amax``
convention (shared equally among tied elements) is used by these reference functions.

Tests: ``tests/functional/test_attention.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .._checks import check_choice, check_tensor

__all__ = ["GATES", "POOLS", "channel_pool", "channel_scale", "gate", "global_pool"]

POOLS = ("avg", "max")


def _hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.hardsigmoid(x)


GATES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "hard_sigmoid": _hard_sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
}


def gate(name: str, x: torch.Tensor) -> torch.Tensor:
    """Apply the gate function ``name`` (one of ``GATES``: sigmoid, hard_sigmoid, tanh, relu)."""
    check_choice(name, "gate", GATES)
    return GATES[name](x)


def global_pool(x: torch.Tensor, mode: str = "avg") -> torch.Tensor:
    """Pool each channel over all positions: (N, C, H, W) -> (N, C, 1, 1).

    ``"avg"``: z_c = 1/(H W) sum_ij x_c(i, j) (SE's squeeze); ``"max"``: z_c = max_ij x_c(i, j).
    """
    check_tensor(x, "x", ndim=4, layout="(N, C, H, W)")
    check_choice(mode, "mode", POOLS)
    if mode == "avg":
        return x.mean(dim=(2, 3), keepdim=True)
    return x.amax(dim=(2, 3), keepdim=True)


def channel_pool(x: torch.Tensor, modes: Sequence[str] = ("avg", "max")) -> torch.Tensor:
    """Pool across channels at every position and stack in the order of ``modes``.

    (N, C, H, W) -> (N, len(modes), H, W); ``"avg"`` is 1/C sum_c x_c, ``"max"`` is max_c x_c.
    """
    check_tensor(x, "x", ndim=4, layout="(N, C, H, W)")
    maps = []
    for mode in modes:
        check_choice(mode, "modes", POOLS)
        maps.append(x.mean(dim=1, keepdim=True) if mode == "avg" else x.amax(dim=1, keepdim=True))
    return torch.cat(maps, dim=1)


def channel_scale(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Reweight: x~_c = s_c * x_c, with ``scale`` of shape (N, C, 1, 1) or (N, C)."""
    if scale.dim() == 2:
        scale = scale[:, :, None, None]
    return x * scale
