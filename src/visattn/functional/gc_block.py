"""The Global Context block of GCNet (Cao, Xu, Lin, Wei, Hu, arXiv:1904.11492) as pure tensor
functions.

    context modelling  alpha_j = exp(W_k x_j) / sum_m exp(W_k x_m)     (N, 1, H, W)
                       c = sum_j alpha_j x_j                           (N, C, 1, 1)
    transform          t = W_v2 ReLU(LN(W_v1 c))                       (N, C, 1, 1)
    fusion             z_i = x_i + t          (the GC block, eq. 5; ``fusion="add"``)
                       z_i = x_i * sigma(t)   (the paper's "scale" fusion; ``fusion="scale"``)

j runs over the H W positions. Symbols and arguments: W_k, with its bias, is ``conv_attn``
(a 1 x 1 convolution C -> 1; the bias, which the softmax cancels, is the official code's);
W_v1, b_v1 is ``fc1`` (C -> C/r), W_v2, b_v2 ``fc2`` (C/r -> C), r the bottleneck ratio (16
in the paper); LN normalises the C/r values of W_v1 c (the paper's LayerNorm over
(C/r, 1, 1)) with ``norm_weight``, ``norm_bias`` and ``eps`` (1e-5 in the official code's
``nn.LayerNorm``, 1e-6 in timm's ``LayerNorm2d``). Without W_k (``conv_attn_weight=None``)
the context is the average GAP(x), the paper's ablation of the pooling.

:func:`gc_context_weights` gives alpha (for visualisation), :func:`global_context_map` what
the block adds (t) or multiplies by (sigma(t)), :func:`global_context` the block.

Tests: ``tests/functional/test_functional_gc.py``, ``tests/layers/test_layers_gc.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _modes
from .._checks import check_choice, check_positive, check_tensor
from .attention import _check_bias, _check_mlp, _check_x, _linear

__all__ = ["gc_context_weights", "global_context", "global_context_map"]

#: The names of W_v1, b_v1, W_v2, b_v2 in the functions' signatures.
MLP_NAMES = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")


# ------------------------------------------------------------------------------- validation


def _check_attn(x, weight, bias) -> None:
    """W_k (1, C[, 1, 1]) and its bias (1,) or None."""
    c = x.shape[1]
    check_tensor(weight, "conv_attn_weight")
    ok = weight.dim() in (2, 4) and weight.shape[:2] == (1, c) and weight.shape[2:] in ((), (1, 1))
    if not ok:
        raise ValueError(
            f"conv_attn_weight: expected a weight of shape (1, {c}[, 1, 1]) for x of shape "
            f"{tuple(x.shape)}, got shape {tuple(weight.shape)}"
        )
    _check_bias(bias, "conv_attn_bias", 1)


def _check_eps(eps) -> None:
    check_positive(eps, "eps")


def check_global_context(x, attn, mlp, norm, fusion, eps) -> None:
    """Validate the GC block's arguments once: x (N, C, H, W), W_k (or None), the transform's
    weights for C channels, the LayerNorm's affine (C/r,) or None, the fusion and eps."""
    _check_x(x)
    if attn[0] is not None:
        _check_attn(x, *attn)
    elif attn[1] is not None:
        raise ValueError("conv_attn_bias: expected None without conv_attn_weight")
    for value, name in ((mlp[0], "fc1_weight"), (mlp[2], "fc2_weight")):
        check_tensor(value, name)
    _check_mlp(*mlp, x.shape[1], f"x of shape {tuple(x.shape)}", MLP_NAMES)
    hidden = mlp[0].shape[0]
    _check_bias(norm[0], "norm_weight", hidden)
    _check_bias(norm[1], "norm_bias", hidden)
    check_choice(fusion, "fusion", _modes.GC_FUSIONS)
    _check_eps(eps)


# ------------------------------------------------------------------------------- formulas


def _gc_context_weights(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    n, _, h, w = x.shape
    logits = F.conv2d(x, weight if weight.dim() == 4 else weight[:, :, None, None], bias)
    return torch.softmax(logits.reshape(n, 1, h * w), dim=-1).reshape(n, 1, h, w)


def _gc_context(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """c = sum_j alpha_j x_j (N, C, 1, 1), or GAP(x) without W_k."""
    if weight is None:
        return x.mean(dim=(2, 3), keepdim=True)
    n, c, h, w = x.shape
    alpha = _gc_context_weights(x, weight, bias).reshape(n, h * w, 1)
    # (N, C, HW) @ (N, HW, 1): a view of x in either memory format, one batched product
    return torch.matmul(x.reshape(n, c, h * w), alpha).reshape(n, c, 1, 1)


def _gc_transform(c: Tensor, w1, b1, w2, b2, norm_weight, norm_bias, eps: float) -> Tensor:
    """t = W_v2 ReLU(LN(W_v1 c + b_v1)) + b_v2 for c (N, C, 1, 1)."""
    h = _linear(c, w1, b1)  # (N, C/r, 1, 1)
    n, hidden = h.shape[:2]
    h = F.layer_norm(h.reshape(n, hidden), (hidden,), norm_weight, norm_bias, eps)
    return _linear(torch.relu(h).reshape(n, hidden, 1, 1), w2, b2)


def _gc_map(x, attn, mlp, norm, fusion: str, eps: float) -> Tensor:
    t = _gc_transform(_gc_context(x, *attn), *mlp, *norm, eps)
    return t if fusion == "add" else torch.sigmoid(t)


def gc_context_weights(x: Tensor, conv_attn_weight: Tensor,
                       conv_attn_bias: Tensor | None = None) -> Tensor:  # fmt: skip
    """The context modelling's attention weights alpha_j = softmax_j(W_k x_j)
    (arXiv:1904.11492, eq. 5), one per position.

    Args:
        x: (N, C, H, W).
        conv_attn_weight, conv_attn_bias: W_k (1, C[, 1, 1]) and its bias (1,) or None.

    Returns:
        alpha, (N, 1, H, W), summing to 1 over H x W: where the block gathers its context from.
    """
    _check_x(x)
    _check_attn(x, conv_attn_weight, conv_attn_bias)
    return _gc_context_weights(x, conv_attn_weight, conv_attn_bias)


def global_context_map(x: Tensor, conv_attn_weight: Tensor | None, conv_attn_bias: Tensor | None,
                       fc1_weight: Tensor, fc1_bias: Tensor | None, norm_weight: Tensor | None,
                       norm_bias: Tensor | None, fc2_weight: Tensor, fc2_bias: Tensor | None, *,
                       fusion: str = "add", eps: float = 1e-5) -> Tensor:  # fmt: skip
    """What the GC block fuses with x (arXiv:1904.11492, eq. 5): the transform
    t = W_v2 ReLU(LN(W_v1 sum_j alpha_j x_j)) (``fusion="add"``) or the gate sigma(t)
    (``fusion="scale"``).

    Args:
        x: (N, C, H, W).
        conv_attn_weight, conv_attn_bias: W_k (1, C[, 1, 1]) and its bias (1,) or None; both
            None: the context is GAP(x).
        fc1_weight, fc1_bias: W_v1 (C/r, C[, 1, 1]) and b_v1 (C/r,) or None.
        norm_weight, norm_bias: the LayerNorm's scale and shift (C/r,), or None.
        fc2_weight, fc2_bias: W_v2 (C, C/r[, 1, 1]) and b_v2 (C,) or None.
        fusion: ``"add"`` (the paper's GC block) or ``"scale"``.
        eps: the LayerNorm's epsilon (1e-5: the official code; timm uses 1e-6).

    Returns:
        t or sigma(t), (N, C, 1, 1).
    """
    attn, norm = (conv_attn_weight, conv_attn_bias), (norm_weight, norm_bias)
    mlp = (fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    check_global_context(x, attn, mlp, norm, fusion, eps)
    return _gc_map(x, attn, mlp, norm, fusion, eps)


def global_context(x: Tensor, conv_attn_weight: Tensor | None, conv_attn_bias: Tensor | None,
                   fc1_weight: Tensor, fc1_bias: Tensor | None, norm_weight: Tensor | None,
                   norm_bias: Tensor | None, fc2_weight: Tensor, fc2_bias: Tensor | None, *,
                   fusion: str = "add", eps: float = 1e-5) -> Tensor:  # fmt: skip
    """The GC block z = x + t (eq. 5) or, with ``fusion="scale"``, z = x * sigma(t),
    (N, C, H, W). Arguments as :func:`global_context_map`'s; what ``GlobalContext.forward``
    runs."""
    attn, norm = (conv_attn_weight, conv_attn_bias), (norm_weight, norm_bias)
    mlp = (fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    check_global_context(x, attn, mlp, norm, fusion, eps)
    m = _gc_map(x, attn, mlp, norm, fusion, eps)
    return x + m if fusion == "add" else x * m
