"""Triplet Attention (Misra, Nalamada, Arasanipalai, Hou, WACV 2021, arXiv:2010.03045) as pure
tensor functions.

    Z-pool(chi) = [MaxPool_0d(chi); AvgPool_0d(chi)]    over the tensor's first axis   (eq. 1)
    branch i     = chi_i * sigma(psi_i(Z-pool(chi_i)))  chi_i: x rotated so that the
                   pair (C, W), (H, C) or (H, W) is the plane psi_i convolves over
    y            = 1/3 (branch_1 + branch_2 + branch_3), rotated back             (eq. 2, 3)

psi_i is a k x k convolution (k = 7, no bias) from the two pooled maps to one, followed by a
BatchNorm. The three branches, as the paper's code names them (x is (N, C, H, W)):

- ``cw``: x rotated to (N, H, C, W); Z-pool over H gives (N, 2, C, W); the map, (N, C, 1, W).
- ``hc``: x rotated to (N, W, H, C); Z-pool over W gives (N, 2, H, C); the map, (N, C, H, 1).
- ``hw``: x itself; Z-pool over C gives (N, 2, H, W); the map, (N, 1, H, W) (CBAM's spatial
  attention with max first).

No rotated copy of x is made: the pools reduce x along H, W or C directly, and the ``hc``
branch convolves its (C, H) plane with the transposed kernel, which is psi_hc on the paper's
(H, C) plane. So each kernel has the layout of the paper's code (``cw``: (1, 2, k_C, k_W),
``hc``: (1, 2, k_H, k_C), ``hw``: (1, 2, k_H, k_W)) and its checkpoints apply. Since
x_i * a_i summed is x * sum_i a_i, the block is y = x * (a_cw + a_hc + a_hw) / 3; with
``hw_weight=None`` (the code's ``no_spatial``) the spatial branch is dropped and y = x * (a_cw
+ a_hc) / 2.

Arguments: ``cw_weight``, ``hc_weight``, ``hw_weight`` (1, 2, k_a, k_b), odd sizes, padding
k // 2; ``cw_norm`` ... ``hw_norm``: callables applied to each convolution's output (the code's
``nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)``), or None.

Tests: ``tests/functional/test_functional_triplet.py``, ``tests/layers/test_layers_triplet.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_tensor, describe
from .attention import _check_x

__all__ = ["triplet_attention", "triplet_attention_map", "triplet_attention_maps"]

Norm = Callable[[Tensor], Tensor]

BRANCHES = ("cw", "hc", "hw")


# ------------------------------------------------------------------------------- validation


def check_triplet(x, weights, norms) -> None:
    """x (N, C, H, W); each psi's weight (1, 2, k_a, k_b) with odd sizes (``hw_weight`` may be
    None); norms None or callables."""
    _check_x(x)
    for name, w in zip(BRANCHES, weights, strict=True):
        if w is None and name == "hw":
            continue
        check_tensor(w, f"{name}_weight")
        if w.dim() != 4 or w.shape[:2] != (1, 2) or not all(k % 2 for k in w.shape[2:]):
            raise ValueError(
                f"{name}_weight: expected shape (1, 2, k, k) with k odd, got {tuple(w.shape)}"
            )
    for name, norm in zip(BRANCHES, norms, strict=True):
        if norm is not None and not callable(norm):
            raise TypeError(
                f"{name}_norm: expected None or a callable (e.g. a BatchNorm), got {describe(norm)}"
            )


# ------------------------------------------------------------------------------- formulas


def _z_pool(x: Tensor, dim: int) -> Tensor:
    """[max; mean] over ``dim`` (eq. 1), stacked as two channels."""
    return torch.stack([x.amax(dim=dim), x.mean(dim=dim)], dim=1)


def _psi(z: Tensor, weight: Tensor, norm) -> Tensor:
    """sigma(BN(conv_k(z))), (N, 1, a, b) for z (N, 2, a, b)."""
    out = F.conv2d(z, weight, padding=(weight.shape[2] // 2, weight.shape[3] // 2))
    return torch.sigmoid(out if norm is None else norm(out))


def _triplet_maps(x, cw_weight, hc_weight, hw_weight, cw_norm, hc_norm, hw_norm):
    a_cw = _psi(_z_pool(x, 2), cw_weight, cw_norm).transpose(1, 2)  # (N, C, 1, W)
    # the (H, C) plane, held as (C, H): the kernel transposed to match
    a_hc = _psi(_z_pool(x, 3), hc_weight.transpose(2, 3), hc_norm).permute(0, 2, 3, 1)
    a_hw = None if hw_weight is None else _psi(_z_pool(x, 1), hw_weight, hw_norm)
    return a_cw, a_hc, a_hw  # (N, C, H, 1), (N, 1, H, W)


def _average(a_cw: Tensor, a_hc: Tensor, a_hw: Tensor | None) -> Tensor:
    """(a_cw + a_hc + a_hw) / 3, or (a_cw + a_hc) / 2, broadcast to (N, C, H, W); the small
    maps are scaled before the full-size sums."""
    if a_hw is None:
        return a_cw * 0.5 + a_hc * 0.5
    third = 1.0 / 3.0
    return a_cw * third + a_hc * third + a_hw * third


def triplet_attention_maps(x: Tensor, cw_weight: Tensor, hc_weight: Tensor,
                           hw_weight: Tensor | None, *, cw_norm: Norm | None = None,
                           hc_norm: Norm | None = None,
                           hw_norm: Norm | None = None) -> tuple[Tensor, Tensor, Tensor | None]:  # fmt: skip
    """The three branches' maps sigma(psi_i(Z-pool(chi_i))) (arXiv:2010.03045, eq. 1-2), in x's
    axes.

    Args:
        x: chi, (N, C, H, W).
        cw_weight: psi of the (C, W) branch, (1, 2, k_C, k_W) (channel 0: max, 1: mean).
        hc_weight: psi of the (H, C) branch, (1, 2, k_H, k_C).
        hw_weight: psi of the (H, W) branch, (1, 2, k_H, k_W), or None (no spatial branch).
        cw_norm, hc_norm, hw_norm: applied to each convolution's output before sigma (the
            paper's BatchNorm), or None.

    Returns:
        (a_cw (N, C, 1, W), a_hc (N, C, H, 1), a_hw (N, 1, H, W) or None).
    """
    check_triplet(x, (cw_weight, hc_weight, hw_weight), (cw_norm, hc_norm, hw_norm))
    return _triplet_maps(x, cw_weight, hc_weight, hw_weight, cw_norm, hc_norm, hw_norm)


def triplet_attention_map(x: Tensor, cw_weight: Tensor, hc_weight: Tensor,
                          hw_weight: Tensor | None, *, cw_norm: Norm | None = None,
                          hc_norm: Norm | None = None,
                          hw_norm: Norm | None = None) -> Tensor:  # fmt: skip
    """The map triplet attention multiplies x by: the average of the branches' maps (eq. 3),
    broadcast to (N, C, H, W). Arguments as :func:`triplet_attention_maps`."""
    check_triplet(x, (cw_weight, hc_weight, hw_weight), (cw_norm, hc_norm, hw_norm))
    return _average(*_triplet_maps(x, cw_weight, hc_weight, hw_weight, cw_norm, hc_norm, hw_norm))


def triplet_attention(x: Tensor, cw_weight: Tensor, hc_weight: Tensor, hw_weight: Tensor | None,
                      *, cw_norm: Norm | None = None, hc_norm: Norm | None = None,
                      hw_norm: Norm | None = None) -> Tensor:  # fmt: skip
    """The block y = 1/3 sum_i chi_i * sigma(psi_i(Z-pool(chi_i))) (arXiv:2010.03045, eq. 2-3),
    (N, C, H, W): what the layer's forward calls. Arguments as :func:`triplet_attention_maps`.
    """
    check_triplet(x, (cw_weight, hc_weight, hw_weight), (cw_norm, hc_norm, hw_norm))
    maps = _triplet_maps(x, cw_weight, hc_weight, hw_weight, cw_norm, hc_norm, hw_norm)
    return x * _average(*maps)
