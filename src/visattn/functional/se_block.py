"""Squeeze-and-Excitation (Hu et al., CVPR 2018, arXiv:1709.01507) as pure tensor functions.

    squeeze     z_c = 1/(H W) sum_i sum_j u_c(i, j)         (eq. 2; ``squeeze="max"``: max_ij)
    excitation  s = sigma(W_2 ReLU(W_1 z + b_1) + b_2)                          (eq. 3)
    reweight    x~_c = s_c * u_c                                                (eq. 4)

with u (N, C, H, W), W_1 (C/r, C) and W_2 (C, C/r) (symbols as in :mod:`visattn.functional`)
and sigma one of the gates of :data:`visattn.functional.GATES` (sigmoid in the paper).
:func:`excitation` is eq. 3, :func:`squeeze_excite_reference` eq. 2-4 op by op; the layer
:class:`visattn.layers.SqueezeExcite` and the fused block's reference branch
(:func:`visattn.functional.squeeze_excite`) use them.

Tests: ``tests/functional/test_functional_blocks.py``, ``tests/kernels/test_kernels_se_cbam.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_choice
from .attention import (
    GATES,
    POOLS,
    _check_mlp,
    _check_x,
    _check_z_mlp,
    _global_pool,
    _mlp,
    _renamed,
)

__all__ = ["excitation", "squeeze_excite_reference"]


#: The names of W_1, b_1, W_2, b_2 in the block functions' signatures (the layers' attributes).
FC_NAMES = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")


def _excitation(z, w1, b1, w2, b2, gate: str) -> torch.Tensor:
    return GATES[gate](_mlp(z, w1, b1, w2, b2))


def _squeeze_excite(x, w1, b1, w2, b2, squeeze: str, gate: str) -> torch.Tensor:
    return x * _excitation(_global_pool(x, squeeze), w1, b1, w2, b2, gate)


def check_squeeze_excite(x, w1, b1, w2, b2, squeeze: str, gate: str, names=None) -> None:
    """Validate SE's arguments once (x (N, C, H, W), the MLP's weights for C channels, the
    options); ``names`` renames w1, b1, w2, b2 in the messages (e.g. ``fc1_weight``)."""
    _check_x(x)
    _check_mlp(w1, b1, w2, b2, x.shape[1], f"x of shape {tuple(x.shape)}", names)
    check_choice(squeeze, "squeeze", POOLS)
    check_choice(gate, "gate", GATES)


def excitation(z: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None, *,
               gate: str = "sigmoid") -> Tensor:  # fmt: skip
    """SE's excitation s = sigma(W_2 ReLU(W_1 z + b_1) + b_2) (arXiv:1709.01507, eq. 3).

    Args:
        z: the squeezed descriptor, (N, C, 1, 1) or (N, C).
        w1, b1: W_1 (C/r, C[, 1, 1]) and b_1 (C/r,) or None (``fc1``).
        w2, b2: W_2 (C, C/r[, 1, 1]) and b_2 (C,) or None (``fc2``).
        gate: sigma, one of :data:`visattn.functional.GATES` (``"sigmoid"`` in the paper).

    Returns:
        s, in z's layout: (N, C, 1, 1) or (N, C).
    """
    _check_z_mlp(z, w1, b1, w2, b2)
    check_choice(gate, "gate", GATES)
    return _excitation(z, w1, b1, w2, b2, gate)


def squeeze_excite_reference(x: Tensor, fc1_weight: Tensor, fc1_bias: Tensor | None,
                             fc2_weight: Tensor, fc2_bias: Tensor | None, *, squeeze: str = "avg",
                             gate: str = "sigmoid", **deprecated) -> Tensor:  # fmt: skip
    """The plain SE block x~ = x * sigma(W_2 ReLU(W_1 pool(x) + b_1) + b_2) (eq. 2-4), op by op.

    Args:
        x: u, (N, C, H, W).
        fc1_weight, fc1_bias: W_1 (C/r, C[, 1, 1]) and b_1 (C/r,) or None.
        fc2_weight, fc2_bias: W_2 (C, C/r[, 1, 1]) and b_2 (C,) or None.
        squeeze: ``"avg"`` (eq. 2) or ``"max"`` global pooling.
        gate: sigma, one of :data:`visattn.functional.GATES` (``gate_fn=``: deprecated name).

    Returns:
        x~, (N, C, H, W). What every fast path of :func:`visattn.functional.squeeze_excite` is
        tested against.
    """
    gate = _renamed(deprecated, "gate_fn", "gate", gate, "sigmoid", "squeeze_excite_reference")
    check_squeeze_excite(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, squeeze, gate, FC_NAMES)
    return _squeeze_excite(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, squeeze, gate)
