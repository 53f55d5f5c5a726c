"""Channel gates without dimensionality reduction, as pure tensor functions: ECA, its circular
variant and effective SE.

ECA (Wang et al., CVPR 2020, arXiv:1910.03151):

    y = GAP(x) = 1/(H W) sum_ij x(i, j)           (N, C)   g(X) of eq. 1
    s = sigma(C1D_k(y))                           (N, C)   eq. 9: a 1-D cross-correlation across
                                                           channels, one shared kernel w (k,),
                                                           zero padding k // 2, no bias
    k = psi(C) = |log2(C) / gamma + b / gamma|_odd         eq. 12, gamma = 2, b = 1
    out = s * x                                   (N, C, H, W)

Circular ECA (timm's ``CecaModule``): the same with circular padding across channels, so the
first and the last channels are neighbours (s_c = sigma(sum_j w_j y_{(c + j - k // 2) mod C})).

Effective SE, eSE (Lee & Park, CenterMask, CVPR 2020, arXiv:1911.06667, Sec. 3.3):

    s = hard_sigmoid(W_C GAP(x) + b_C)            (N, C)   one C x C fully connected layer
    out = s * x                                            (``fc``), hard_sigmoid(v) =
                                                           clamp((v + 3) / 6, 0, 1)

eSE's W_C is the single C x C layer that ECA's paper calls SE-Var3 (its eq. 3 with a full W),
with a bias and the hard sigmoid.

Symbols -> arguments: ECA's w (the paper's shared w^j of C1D_k) is ``weight`` (1, 1, k), the
weight of ``nn.Conv1d(1, 1, k, bias=False)`` (``ECA.conv``, timm's layout); eSE's W_C, b_C are
``weight`` (C, C[, 1, 1]) and ``bias`` (C,) of a 1 x 1 convolution (``ESE.fc``, timm's layout).

Each block is pool -> excitation -> gate -> scale. The excitation step alone, from the pooled
descriptor z (N, C) to the gate s (N, C), is :func:`_eca_excitation` and
:func:`_ese_excitation`, registered as the excitations ``"eca"``, ``"ceca"`` and ``"ese"`` of
the fused channel gate (:func:`visattn.functional.channel_gate`): the blocks :func:`eca` and
:func:`ese` run on SE's fused pool / scale kernels where the backend has them (float32 /
bfloat16 on CPU and CUDA), the plain formula elsewhere. The public functions validate once
(:func:`check_eca`, :func:`check_ese`) and call the private ones.

Tests: ``tests/functional/test_functional_eca.py``, ``tests/layers/test_layers_eca.py``.
"""

from __future__ import annotations

import math
from functools import partial
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_int, check_tensor, describe
from .attention import (
    GATES,
    _check_bias,
    _check_linear,
    _check_x,
    _global_pool,
    _linear,
    channel_scale,
)
from .fused import _fused_channel_gate, register_excitation

__all__ = ["check_eca", "check_ese", "eca", "eca_gate", "eca_kernel_size", "ese", "ese_gate"]


# ------------------------------------------------------------------------------- validation


def _check_real(value, name: str, *, positive: bool = False) -> float:
    """A finite real number (not a bool), > 0 when ``positive``."""
    what = "a positive number" if positive else "a finite real number"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected {what}, got {describe(value)}")
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return float(value)


def check_kernel_size(kernel_size, name: str = "kernel_size") -> int:
    """An odd int >= 1: the size k of ECA's 1-D convolution (odd, so that s_c is centred on c)."""
    check_int(kernel_size, name, minimum=1)
    if kernel_size % 2 == 0:
        raise ValueError(f"{name}: expected an odd int >= 1, got {kernel_size}")
    return kernel_size


def check_eca(x: Tensor, weight: Tensor, circular: bool = False) -> None:
    """x (N, C, H, W); weight (1, 1, k) with k odd; ``circular`` a bool."""
    _check_x(x)
    check_tensor(weight, "weight")
    if weight.dim() != 3 or weight.shape[:2] != (1, 1) or weight.shape[2] % 2 == 0:
        raise ValueError(f"weight: expected shape (1, 1, k) with k odd, got {tuple(weight.shape)}")
    if not isinstance(circular, bool):
        raise TypeError(f"circular: expected a bool, got {describe(circular)}")


def check_ese(x: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    """x (N, C, H, W); weight (C, C[, 1, 1]); bias (C,) or None."""
    _check_x(x)
    c = x.shape[1]
    _check_linear(weight, "weight", c, c, f"x of shape {tuple(x.shape)}")
    _check_bias(bias, "bias", c)


# ------------------------------------------------------------------------------- formulas


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """k = psi(C) = |log2(C) / gamma + b / gamma|_odd (arXiv:1910.03151, eq. 12).

    ``|t|_odd`` is computed as the paper's code does: t truncated to an int, plus one if even.
    This is the nearest odd number of t except at the ties t = 2m (as far from 2m - 1 as from
    2m + 1), which go up. With the paper's gamma = 2, b = 1: k = 1 for C < 8, 3 for C = 8 ... 127,
    5 for C = 128 ... 2047, 7 for C = 2048 ... 32767.

    Args:
        channels: C, an int >= 1.
        gamma, b: the mapping's gamma > 0 and b.

    Returns:
        k, an odd int >= 1. timm's ``EcaModule`` / ``CecaModule`` use max(k, 3) instead.
    """
    check_int(channels, "channels", minimum=1)
    gamma = _check_real(gamma, "gamma", positive=True)
    b = _check_real(b, "b")
    t = int(abs(math.log2(channels) / gamma + b / gamma))
    return t if t % 2 else t + 1


def _eca_excitation(z: Tensor, weight: Tensor, circular: bool) -> Tensor:
    """s = sigma(C1D_k(z)) (eq. 9) for z (N, C): the gate (N, C). Zero padding k // 2, or
    circular padding (index (c + j - k // 2) mod C, wrapping as often as k needs). Unvalidated."""
    pad = weight.shape[-1] // 2
    y = z.unsqueeze(1)  # (N, 1, C): channels as the 1-D convolution's length
    if circular and pad:
        c = z.shape[1]
        y = y[..., torch.arange(-pad, c + pad, device=z.device) % c]
        logits = F.conv1d(y, weight)
    else:
        logits = F.conv1d(y, weight, padding=pad)
    return GATES["sigmoid"](logits.squeeze(1))


def _eca_gate(x: Tensor, weight: Tensor, circular: bool) -> Tensor:
    return _eca_excitation(_global_pool(x, "avg").flatten(1), weight, circular)


def eca_gate(x: Tensor, weight: Tensor, *, circular: bool = False) -> Tensor:
    """ECA's gate s = sigma(C1D_k(GAP(x))) (arXiv:1910.03151, eq. 9), shape (N, C, 1, 1).

    Args:
        x: X, (N, C, H, W).
        weight: the shared kernel w of C1D_k, (1, 1, k), k odd (``ECA.conv.weight``).
        circular: circular padding across channels (timm's ``CecaModule``) instead of the
            paper's zero padding.
    """
    check_eca(x, weight, circular)
    return _eca_gate(x, weight, circular)[:, :, None, None]


def eca(x: Tensor, weight: Tensor, *, circular: bool = False) -> Tensor:
    """The ECA block, s * x (arXiv:1910.03151, eq. 9 and Fig. 2), shape (N, C, H, W).

    Arguments as :func:`eca_gate`; ``circular=True`` is circular ECA. What ``ECA`` and ``CECA``
    run.
    """
    check_eca(x, weight, circular)
    return _fused_channel_gate(x, "ceca" if circular else "eca", [weight], "avg")


def _ese_excitation(z: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """s = hard_sigmoid(W_C z + b_C) for z (N, C): the gate (N, C). Unvalidated."""
    return GATES["hard_sigmoid"](_linear(z, weight, bias))


def _ese_gate(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return _ese_excitation(_global_pool(x, "avg").flatten(1), weight, bias)


def ese_gate(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """eSE's gate s = hard_sigmoid(W_C GAP(x) + b_C) (arXiv:1911.06667, Sec. 3.3), (N, C, 1, 1).

    Args:
        x: X_div, (N, C, H, W).
        weight: W_C, (C, C[, 1, 1]) (``ESE.fc.weight``).
        bias: b_C, (C,) or None (``ESE.fc.bias``).
    """
    check_ese(x, weight, bias)
    return _ese_gate(x, weight, bias)[:, :, None, None]


def ese(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The eSE block X_refine = s * X_div (arXiv:1911.06667, Sec. 3.3), shape (N, C, H, W).

    Arguments as :func:`ese_gate`. What ``ESE`` runs.
    """
    check_ese(x, weight, bias)
    if bias is None:  # the fused operator takes tensors only: no fast path without the bias
        return channel_scale(x, _ese_gate(x, weight, bias))
    return _fused_channel_gate(x, "ese", [weight, bias], "avg")


# The excitation steps of the fused channel gate (visattn.functional.fused.channel_gate).
register_excitation("eca", partial(_eca_excitation, circular=False))
register_excitation("ceca", partial(_eca_excitation, circular=True))
register_excitation("ese", _ese_excitation)
