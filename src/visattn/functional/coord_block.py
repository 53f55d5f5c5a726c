"""Coordinate Attention (Hou, Zhou, Feng, CVPR 2021, arXiv:2103.02907) as pure tensor functions.

    z^h_c(h) = 1/W sum_i x_c(h, i)                           (N, C, H, 1)   eq. 4
    z^w_c(w) = 1/H sum_j x_c(j, w)                           (N, C, 1, W)   eq. 5
    f = delta(BN(F_1([z^h, z^w])))                           (N, C/r, H + W, 1)   eq. 6
    f^h, f^w = split(f)                                      (N, C/r, H, 1), (N, C/r, W, 1)
    g^h = sigma(F_h(f^h))                                    (N, C, H, 1)   eq. 7
    g^w = sigma(F_w(f^w))                                    (N, C, 1, W)   eq. 8
    y_c(i, j) = x_c(i, j) * g^h_c(i) * g^w_c(j)              (N, C, H, W)   eq. 9

Symbols -> arguments: F_1 is ``conv1_weight`` / ``conv1_bias`` (C/r, C[, 1, 1]) and (C/r,) or
None, the shared 1 x 1 convolution of the concatenated strips (z^w is laid out as a column,
(N, C, W, 1), below z^h); BN is ``norm`` (a callable such as ``nn.BatchNorm2d(C/r)``, applied
to the concatenation, as the paper's code); delta is ``act`` (h-swish x * ReLU6(x + 3) / 6 in
the paper, one of :data:`visattn._modes.ACTIVATIONS`); F_h, F_w are ``conv_h_*`` / ``conv_w_*``
(C, C/r[, 1, 1]); sigma is ``gate`` (sigmoid in the paper, one of
:data:`visattn.functional.GATES`). The names are those of timm's ``CoordAttn`` and the paper's
code (``conv1``, ``bn1``, ``act``, ``conv_h``, ``conv_w``). C/r: the paper's code uses
max(8, C // 32); timm's default differs (see :class:`visattn.layers.CoordAttention`).

Tests: ``tests/functional/test_functional_coord.py``, ``tests/layers/test_layers_coord.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .. import _modes
from .._checks import check_choice, describe
from .attention import GATES, _check_bias, _check_linear, _check_x, _linear

__all__ = ["ACTIVATIONS", "coord_attention", "coord_attention_gates", "coord_attention_map"]

#: delta's names (:data:`visattn._modes.ACTIVATIONS`): ``"hard_swish"`` (the paper), ...
ACTIVATIONS: tuple[str, ...] = _modes.ACTIVATIONS


# ------------------------------------------------------------------------------- validation


def check_coord(x, conv1_weight, conv1_bias, conv_h_weight, conv_h_bias, conv_w_weight,
                conv_w_bias, norm, act, gate) -> None:  # fmt: skip
    """Validate Coordinate Attention's arguments once (x (N, C, H, W), F_1 C -> C/r, F_h and
    F_w C/r -> C, the options)."""
    _check_x(x)
    c, ref = x.shape[1], f"x of shape {tuple(x.shape)}"
    _check_linear(conv1_weight, "conv1_weight", c, None, ref)
    hidden = conv1_weight.shape[0]
    _check_bias(conv1_bias, "conv1_bias", hidden)
    for w, b, name in (
        (conv_h_weight, conv_h_bias, "conv_h"),
        (conv_w_weight, conv_w_bias, "conv_w"),
    ):
        _check_linear(w, f"{name}_weight", hidden, c, ref)
        _check_bias(b, f"{name}_bias", c)
    if norm is not None and not callable(norm):
        raise TypeError(
            f"norm: expected None or a callable (e.g. a BatchNorm), got {describe(norm)}"
        )
    check_choice(act, "act", ACTIVATIONS)
    check_choice(gate, "gate", GATES)


# ------------------------------------------------------------------------------- formulas


def _coord_gates(x, w1, b1, wh, bh, ww, bw, norm, act: str, gate: str) -> tuple[Tensor, Tensor]:
    h, w = x.shape[2], x.shape[3]
    z_h = x.mean(dim=3, keepdim=True)  # eq. 4, (N, C, H, 1)
    z_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # eq. 5, as a column (N, C, W, 1)
    f = _linear(torch.cat([z_h, z_w], dim=2), w1, b1)  # F_1, (N, C/r, H + W, 1)
    if norm is not None:
        f = norm(f)
    f_h, f_w = torch.split(_modes.ACTIVATION_FUNCTIONS[act](f), [h, w], dim=2)  # eq. 6
    g_h = GATES[gate](_linear(f_h, wh, bh))  # eq. 7, (N, C, H, 1)
    g_w = GATES[gate](_linear(f_w, ww, bw)).transpose(2, 3)  # eq. 8, (N, C, 1, W)
    return g_h, g_w


def coord_attention_gates(x: Tensor, conv1_weight: Tensor, conv1_bias: Tensor | None,
                          conv_h_weight: Tensor, conv_h_bias: Tensor | None,
                          conv_w_weight: Tensor, conv_w_bias: Tensor | None, *,
                          norm: Callable[[Tensor], Tensor] | None = None,
                          act: str = "hard_swish", gate: str = "sigmoid") -> tuple[Tensor, Tensor]:  # fmt: skip
    """The two directional gates g^h, g^w of Coordinate Attention (arXiv:2103.02907, eq. 4-8).

    Args:
        x: (N, C, H, W).
        conv1_weight, conv1_bias: F_1, (C/r, C[, 1, 1]) and (C/r,) or None.
        conv_h_weight, conv_h_bias: F_h, (C, C/r[, 1, 1]) and (C,) or None.
        conv_w_weight, conv_w_bias: F_w, (C, C/r[, 1, 1]) and (C,) or None.
        norm: applied to F_1's output (N, C/r, H + W, 1) before delta (the paper's BatchNorm);
            called as is. None: no normalisation.
        act: delta, one of :data:`ACTIVATIONS` (``"hard_swish"`` in the paper).
        gate: sigma, one of :data:`visattn.functional.GATES` (``"sigmoid"`` in the paper).

    Returns:
        (g^h (N, C, H, 1), g^w (N, C, 1, W)).
    """
    check_coord(x, conv1_weight, conv1_bias, conv_h_weight, conv_h_bias, conv_w_weight,
                conv_w_bias, norm, act, gate)  # fmt: skip
    return _coord_gates(x, conv1_weight, conv1_bias, conv_h_weight, conv_h_bias, conv_w_weight,
                        conv_w_bias, norm, act, gate)  # fmt: skip


def coord_attention_map(x: Tensor, conv1_weight: Tensor, conv1_bias: Tensor | None,
                        conv_h_weight: Tensor, conv_h_bias: Tensor | None, conv_w_weight: Tensor,
                        conv_w_bias: Tensor | None, *,
                        norm: Callable[[Tensor], Tensor] | None = None, act: str = "hard_swish",
                        gate: str = "sigmoid") -> Tensor:  # fmt: skip
    """The map Coordinate Attention multiplies x by, g^h_c(i) * g^w_c(j) (eq. 9), (N, C, H, W).

    Arguments as :func:`coord_attention_gates`.
    """
    check_coord(x, conv1_weight, conv1_bias, conv_h_weight, conv_h_bias, conv_w_weight,
                conv_w_bias, norm, act, gate)  # fmt: skip
    g_h, g_w = _coord_gates(x, conv1_weight, conv1_bias, conv_h_weight, conv_h_bias,
                            conv_w_weight, conv_w_bias, norm, act, gate)  # fmt: skip
    return g_h * g_w


def coord_attention(x: Tensor, conv1_weight: Tensor, conv1_bias: Tensor | None,
                    conv_h_weight: Tensor, conv_h_bias: Tensor | None, conv_w_weight: Tensor,
                    conv_w_bias: Tensor | None, *, norm: Callable[[Tensor], Tensor] | None = None,
                    act: str = "hard_swish", gate: str = "sigmoid") -> Tensor:  # fmt: skip
    """The block y_c(i, j) = x_c(i, j) * g^h_c(i) * g^w_c(j) (arXiv:2103.02907, eq. 4-9),
    (N, C, H, W): what the layer's forward calls. Arguments as :func:`coord_attention_gates`.
    """
    check_coord(x, conv1_weight, conv1_bias, conv_h_weight, conv_h_bias, conv_w_weight,
                conv_w_bias, norm, act, gate)  # fmt: skip
    g_h, g_w = _coord_gates(x, conv1_weight, conv1_bias, conv_h_weight, conv_h_bias,
                            conv_w_weight, conv_w_bias, norm, act, gate)  # fmt: skip
    return x * g_w * g_h
