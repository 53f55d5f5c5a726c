"""Gather-Excite (Hu, Shen, Albanie, Sun, Vedaldi, NeurIPS 2018, arXiv:1810.12348) as pure
tensor functions.

    gather  x^ = xi_G(x)                  (N, C, H', W'),  H' = ceil(H / e),  W' = ceil(W / e)
    excite  y  = x * f(interp(x^))        (N, C, H, W),    f = sigmoid, interp = nearest neighbour

(§3: the gather operator xi_G of extent ratio e and the excite operator xi_E). A global extent
(``extent=0`` or ``"global"``) gathers each channel into one value (H' = W' = 1): the map is
then a channel gate (N, C, 1, 1). The paper's three pairings (§4), in the arguments below:

- GE-theta^- (parameter-free, no ``conv_weights``): xi_G is average pooling, output unit u
  averaging the (2e - 1) x (2e - 1) window of input units centred at e u that lie inside the
  map (``avg_pool2d`` of kernel 2e - 1, stride e, padding e - 1, padding not counted); global:
  the mean over H x W, and the gate is :func:`_ge_excitation` of it.
- GE-theta (``conv_weights``, ``norms``): xi_G is log2(e) depthwise 3 x 3 convolutions of stride
  2 (padding 1), each followed by its BatchNorm, a ReLU between two of them (timm's layout);
  global: one depthwise convolution whose kernel covers the H x W map, then its BatchNorm.
- GE-theta^+ (also ``fc1_*``, ``fc2_*``): the excite first applies the SE-style subnetwork
  W_2 ReLU(W_1 x^ + b_1) + b_2 (1 x 1 convolutions, C -> C/r -> C, symbols of
  :mod:`visattn.functional`) to x^, then f and interp.

interp resizes to H x W as ``F.interpolate(mode="nearest")`` (timm's choice): output row i reads
gathered row floor(i H' / H), which for H = e H' is the unit whose window is centred at e
floor(i / e). PyTorch computes H' / H in float32, so for maps of a few hundred rows a row can
read its neighbour's value; at the sizes of CNN stages (<= 112) it is the exact floor.

``global_padding="timm"`` reproduces timm 1.0.31's global GE-theta gather, whose depthwise
convolution is padded by (k - 1) // 2: its output is about H x W, not 1 x 1 (so not a global
gather), and is interpolated back like a finite extent's.

Tests: ``tests/functional/test_functional_ge.py``, ``tests/layers/test_layers_ge.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _modes
from .._checks import check_choice, check_tensor, describe
from .attention import _check_mlp, _check_x, _mlp
from .fused import _fused_channel_gate, register_excitation

__all__ = ["gather_excite", "gather_excite_map", "ge_extent", "ge_gather"]

#: The names of the subnetwork's W_1, b_1, W_2, b_2 in the functions' signatures.
MLP_NAMES = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")

Norm = Callable[[Tensor], Tensor] | None


# ------------------------------------------------------------------------------- validation


def ge_extent(extent: int | str) -> int:
    """The extent ratio e as an int: 0 for a global extent (``0`` or ``"global"``), else e >= 2."""
    if extent == "global":
        return 0
    if isinstance(extent, bool) or not isinstance(extent, int) or extent < 0 or extent == 1:
        raise ValueError(
            f"extent: expected 0 or 'global' (a global extent) or an int >= 2, got {extent!r}"
        )
    return extent


def _check_conv_gather(x, extent: int, conv_weights, norms, global_padding: str) -> None:
    """GE-theta's depthwise convolutions (and their norms) for x and the extent ratio."""
    _n, c, h, w = x.shape
    if extent == 0:
        count = 1
    elif extent & (extent - 1):
        raise ValueError(
            f"extent: expected a power of 2 for the strided-convolution gather, got {extent}"
        )
    else:
        count = int(math.log2(extent))
    if len(conv_weights) != count:
        what = "1 convolution for the global extent" if extent == 0 else (
            f"log2({extent}) = {count} convolutions for extent {extent}"
        )  # fmt: skip
        raise ValueError(f"conv_weights: expected {what}, got {len(conv_weights)}")
    for i, weight in enumerate(conv_weights):
        name = f"conv_weights[{i}]"
        check_tensor(weight, name)
        if weight.dim() != 4 or weight.shape[:2] != (c, 1):
            raise ValueError(
                f"{name}: expected a depthwise weight of shape ({c}, 1, k_h, k_w) for x of shape "
                f"{tuple(x.shape)}, got shape {tuple(weight.shape)}"
            )
        if extent and not all(k % 2 for k in weight.shape[2:]):
            raise ValueError(f"{name}: expected odd kernel sizes, got shape {tuple(weight.shape)}")
    if extent == 0 and global_padding == "none" and conv_weights[0].shape[2:] != (h, w):
        raise ValueError(
            f"x: expected the spatial size {tuple(conv_weights[0].shape[2:])} of the global "
            f"gather's kernel (conv_weights[0]), got shape {tuple(x.shape)}"
        )
    if len(norms) not in (0, count):
        raise ValueError(f"norms: expected none or one per convolution ({count}), got {len(norms)}")
    for i, norm in enumerate(norms):
        if norm is not None and not callable(norm):
            raise TypeError(
                f"norms[{i}]: expected a module, a function or None, got {describe(norm)}"
            )


def check_gather_excite(x, extent, conv_weights, norms, mlp, global_padding) -> int:
    """Validate Gather-Excite's arguments once; returns the extent ratio as an int (0: global)."""
    _check_x(x)
    extent = ge_extent(extent)
    check_choice(global_padding, "global_padding", _modes.GE_GLOBAL_PADDINGS)
    if isinstance(conv_weights, Tensor) or not isinstance(conv_weights, Sequence):
        raise TypeError(
            f"conv_weights: expected a sequence of tensors, got {describe(conv_weights)}"
        )
    if isinstance(norms, Tensor) or not isinstance(norms, Sequence):
        raise TypeError(f"norms: expected a sequence of modules, got {describe(norms)}")
    if conv_weights:
        _check_conv_gather(x, extent, conv_weights, norms, global_padding)
    elif norms:
        raise ValueError(f"norms: expected none without conv_weights, got {len(norms)}")
    w1, b1, w2, b2 = mlp
    if w1 is not None or w2 is not None:
        for value, name in ((w1, "fc1_weight"), (w2, "fc2_weight")):
            check_tensor(value, name)
        _check_mlp(w1, b1, w2, b2, x.shape[1], f"x of shape {tuple(x.shape)}", MLP_NAMES)
    elif b1 is not None or b2 is not None:
        raise ValueError("fc1_bias, fc2_bias: expected None without fc1_weight and fc2_weight")
    return extent


# ------------------------------------------------------------------------------- formulas


def _ge_excitation(z: Tensor) -> Tensor:
    """The parameter-free excite of a global GE-theta^-: the gate f(z) = sigmoid(z) of the pooled
    descriptor z (N, C) -> (N, C) (elementwise: any shape). The fused blocks plug it in."""
    return torch.sigmoid(z)


def _ge_gather(x: Tensor, extent: int, conv_weights, norms, global_padding: str) -> Tensor:
    if not conv_weights:  # GE-theta^-: average pooling over the extent
        if extent == 0:
            return x.mean(dim=(2, 3), keepdim=True)
        k = 2 * extent - 1
        return F.avg_pool2d(x, k, stride=extent, padding=extent - 1, count_include_pad=False)
    c = x.shape[1]
    last = len(conv_weights) - 1
    for i, weight in enumerate(conv_weights):  # GE-theta: depthwise convolutions, BN, ReLU
        kh, kw = weight.shape[2:]
        if extent == 0:
            pad = ((kh - 1) // 2, (kw - 1) // 2) if global_padding == "timm" else (0, 0)
            x = F.conv2d(x, weight, None, 1, pad, 1, c)
        else:
            x = F.conv2d(x, weight, None, 2, (kh // 2, kw // 2), 1, c)
        if norms and norms[i] is not None:
            x = norms[i](x)
        if i != last:
            x = torch.relu(x)
    return x


def _ge_map(x: Tensor, extent: int, conv_weights, norms, mlp, global_padding: str) -> Tensor:
    g = _ge_gather(x, extent, conv_weights, norms, global_padding)
    if mlp[0] is not None:  # GE-theta^+: the SE-style subnetwork on the gathered map
        g = _mlp(g, *mlp)
    g = _ge_excitation(g)
    if g.shape[2:] != (1, 1) and g.shape[2:] != x.shape[2:]:
        g = F.interpolate(g, size=x.shape[2:], mode="nearest")
    return g


def ge_gather(x: Tensor, *, extent: int | str = 0, conv_weights: Sequence[Tensor] = (),
              norms: Sequence[Norm] = (), global_padding: str = "none") -> Tensor:  # fmt: skip
    """The gather x^ = xi_G(x) (arXiv:1810.12348, §3).

    Args:
        x: (N, C, H, W).
        extent: the extent ratio e, an int >= 2, or ``0`` / ``"global"``.
        conv_weights: GE-theta's depthwise weights: log2(e) of shape (C, 1, k, k) (odd k; 3 in
            the paper and timm), stride 2, padding k // 2; for the global extent one of shape
            (C, 1, H, W). Empty: GE-theta^-'s average pooling.
        norms: one module or function (or None) per convolution, applied after it: the
            BatchNorms (called as they are: training mode uses and updates batch statistics).
        global_padding: ``"none"`` (the paper's global gather, 1 x 1) or ``"timm"`` (padding
            (k - 1) // 2, timm 1.0.31's).

    Returns:
        x^, (N, C, ceil(H / e), ceil(W / e)); (N, C, 1, 1) for a global extent.
    """
    extent = check_gather_excite(x, extent, conv_weights, norms, (None,) * 4, global_padding)
    return _ge_gather(x, extent, conv_weights, norms, global_padding)


def gather_excite_map(x: Tensor, *, extent: int | str = 0, conv_weights: Sequence[Tensor] = (),
                      norms: Sequence[Norm] = (), fc1_weight: Tensor | None = None,
                      fc1_bias: Tensor | None = None, fc2_weight: Tensor | None = None,
                      fc2_bias: Tensor | None = None, global_padding: str = "none") -> Tensor:  # fmt: skip
    """The map the excite multiplies x by, f(interp(x^)) (GE-theta^+: f(interp(MLP(x^)))).

    Args:
        x, extent, conv_weights, norms, global_padding: as :func:`ge_gather`.
        fc1_weight, fc1_bias: GE-theta^+'s W_1 (C/r, C[, 1, 1]) and b_1 (C/r,) or None.
        fc2_weight, fc2_bias: W_2 (C, C/r[, 1, 1]) and b_2 (C,) or None. No weights: no
            subnetwork (GE-theta^-, GE-theta).

    Returns:
        (N, C, 1, 1) for a global gather (a channel gate), else (N, C, H, W).
    """
    mlp = (fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    extent = check_gather_excite(x, extent, conv_weights, norms, mlp, global_padding)
    return _ge_map(x, extent, conv_weights, norms, mlp, global_padding)


def gather_excite(x: Tensor, *, extent: int | str = 0, conv_weights: Sequence[Tensor] = (),
                  norms: Sequence[Norm] = (), fc1_weight: Tensor | None = None,
                  fc1_bias: Tensor | None = None, fc2_weight: Tensor | None = None,
                  fc2_bias: Tensor | None = None, global_padding: str = "none") -> Tensor:  # fmt: skip
    """The Gather-Excite block y = x * f(interp(x^)) (arXiv:1810.12348, §3-4), (N, C, H, W).

    Arguments as :func:`gather_excite_map`'s; what ``GatherExcite.forward`` runs. The defaults
    are GE-theta^- with a global extent: y = x * sigmoid(GAP(x)), which runs on the fused
    channel gate (:func:`visattn.functional.channel_gate` with the excitation ``"ge_global"``,
    :func:`_ge_excitation`); the other pairings are the formula op by op.
    """
    mlp = (fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    extent = check_gather_excite(x, extent, conv_weights, norms, mlp, global_padding)
    if extent == 0 and not conv_weights and mlp[0] is None:
        return _fused_channel_gate(x, "ge_global", [], "avg")
    return x * _ge_map(x, extent, conv_weights, norms, mlp, global_padding)


# The parameter-free global excitation, for the fused channel gate (functional.fused.channel_gate).
register_excitation("ge_global", _ge_excitation)
