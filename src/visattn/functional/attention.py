"""Building blocks shared by the attention formulas: pools, gates, the bottleneck MLP, reweighting.

- SE (Hu et al., 2018, arXiv:1709.01507): the squeeze z_c = 1/(H W) sum_ij u_c(i, j) (eq. 2)
  is :func:`global_pool` with ``"avg"``; the gate sigma of s = sigma(W_2 ReLU(W_1 z)) (eq. 3)
  is :func:`apply_gate`, its argument :func:`bottleneck_mlp`; the reweight x~_c = s_c u_c
  (eq. 4) is :func:`channel_scale`.
- CBAM (Woo et al., 2018, arXiv:1807.06521): AvgPool(F) and MaxPool(F) of the channel attention
  (eq. 2) are :func:`global_pool`, its shared MLP is :func:`bottleneck_mlp`; AvgPool_c and
  MaxPool_c of the spatial attention (eq. 3) are :func:`channel_pool`.

Symbols as stated in :mod:`visattn.functional`. Max-pool ties: the value is unique; the gradient
is shared equally among tied elements (``torch.amax``'s rule).

Each public function validates its arguments; the formula modules call the unvalidated private
twins (``_global_pool``, ``_channel_pool``, ``_mlp``) after validating once at their own entry.

Tests: ``tests/functional/test_functional_attention.py``, ``tests/functional/test_functional_blocks.py``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _modes
from .._checks import check_choice, check_tensor

__all__ = ["GATES", "POOLS", "apply_gate", "bottleneck_mlp", "channel_pool", "channel_scale",
           "gate", "global_pool"]  # fmt: skip

#: Pool names of SE's squeeze and CBAM's maps (:data:`visattn._modes.POOLS`).
POOLS: tuple[str, ...] = _modes.POOLS

#: Gate name -> function (:data:`visattn._modes.GATE_FUNCTIONS`, the same mapping).
GATES: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] = _modes.GATE_FUNCTIONS


# ------------------------------------------------------------------------------- validation


def _check_x(x: torch.Tensor, name: str = "x") -> None:
    check_tensor(x, name, ndim=4, layout="(N, C, H, W)")


def _check_linear(w: torch.Tensor, name: str, c_in: int, c_out: int | None, ref: str) -> None:
    """A 1 x 1 convolution's / linear layer's weight (c_out, c_in[, 1, 1]) for an input ``ref``."""
    check_tensor(w, name)
    ok = w.dim() == 2 or (w.dim() == 4 and w.shape[2:] == (1, 1))
    if not ok or w.shape[1] != c_in or (c_out is not None and w.shape[0] != c_out):
        rows = "hidden" if c_out is None else str(c_out)
        raise ValueError(
            f"{name}: expected a weight of shape ({rows}, {c_in}[, 1, 1]) for {ref}, "
            f"got shape {tuple(w.shape)}"
        )


def _check_bias(b: torch.Tensor | None, name: str, size: int) -> None:
    if b is not None and (check_tensor(b, name).shape != (size,)):
        raise ValueError(
            f"{name}: expected None or a tensor of shape ({size},), got {tuple(b.shape)}"
        )


def _check_mlp(w1, b1, w2, b2, channels: int, ref: str, names=("w1", "b1", "w2", "b2")) -> None:
    """W_1 (C/r, C[, 1, 1]), b_1 (C/r,), W_2 (C, C/r[, 1, 1]), b_2 (C,) for an input ``ref``
    with C = ``channels``; ``names``: the four arguments' names in the caller's signature."""
    _check_linear(w1, names[0], channels, None, ref)
    _check_bias(b1, names[1], w1.shape[0])
    _check_linear(w2, names[2], w1.shape[0], channels, ref)
    _check_bias(b2, names[3], channels)


def _check_z_mlp(z, w1, b1, w2, b2) -> None:
    """A pooled descriptor z (N, C, 1, 1) or (N, C) and the bottleneck MLP's weights for it."""
    check_tensor(z, "z")
    if z.dim() not in (2, 4) or (z.dim() == 4 and z.shape[2:] != (1, 1)):
        raise ValueError(
            f"z: expected a tensor of shape (N, C, 1, 1) or (N, C), got shape {tuple(z.shape)}"
        )
    _check_mlp(w1, b1, w2, b2, z.shape[1], f"z of shape {tuple(z.shape)}")


def _check_pool(pool: Sequence[str], name: str = "pool", *, distinct: bool = False) -> tuple:
    """A non-empty tuple of pool names (a single name is a tuple of one); the layers, which
    build one input channel per pool, also want them ``distinct``."""
    if isinstance(pool, str):
        pool = (pool,)
    pool = tuple(pool)
    if not pool or (distinct and len(set(pool)) != len(pool)):
        what = "distinct names" if distinct else "names"
        raise ValueError(f"{name}: expected a non-empty tuple of {what}, got {pool!r}")
    for p in pool:
        check_choice(p, name, POOLS)
    return pool


def _renamed(kwargs: dict, old: str, new: str, value, default, where: str):
    """The value of keyword ``new``, or of its deprecated former name ``old`` found in ``kwargs``
    (the rest of a ``**kwargs``), with a ``DeprecationWarning``."""
    unknown = sorted(set(kwargs) - {old})
    if unknown:
        raise TypeError(f"{where}() got an unexpected keyword argument {unknown[0]!r}")
    if old not in kwargs:
        return value
    if value != default:
        raise TypeError(f"{where}() got both {old}= and {new}=")
    warnings.warn(
        f"{where}(): the keyword {old}= is deprecated, use {new}=", DeprecationWarning, stacklevel=3
    )
    return kwargs[old]


# ------------------------------------------------------------------------------- formulas


def _global_pool(x: torch.Tensor, mode: str) -> torch.Tensor:
    return x.mean(dim=(2, 3), keepdim=True) if mode == "avg" else x.amax(dim=(2, 3), keepdim=True)


def _channel_pool(x: torch.Tensor, modes: Sequence[str], merge: bool = False) -> torch.Tensor:
    """The channel pools stacked (N, len(modes), H, W), or with ``merge`` their mean (N, 1, H, W)."""
    maps = [
        x.mean(dim=1, keepdim=True) if m == "avg" else x.amax(dim=1, keepdim=True) for m in modes
    ]
    return _mean_of(maps) if merge else torch.cat(maps, dim=1)


def _mean_of(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The elementwise mean of equally shaped tensors (timm's light CBAM: 0.5 avg + 0.5 max,
    which (avg + max) * 0.5 equals exactly: halving is exact in binary floating point)."""
    if len(tensors) == 1:
        return tensors[0]
    total = tensors[0]
    for t in tensors[1:]:
        total = total + t
    return total * (1 / len(tensors))


def _linear(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """W z + b for z (N, C, 1, 1) (a 1 x 1 convolution, the layers' layout) or (N, C)."""
    if z.dim() == 2:
        return F.linear(z, w.flatten(1), b)
    return F.conv2d(z, w if w.dim() == 4 else w[:, :, None, None], b)


def _mlp(z, w1, b1, w2, b2) -> torch.Tensor:
    return _linear(torch.relu(_linear(z, w1, b1)), w2, b2)


def apply_gate(gate: str, x: torch.Tensor) -> torch.Tensor:
    """sigma(x) for the gate named ``gate``, one of :data:`GATES`.

    ``"sigmoid"`` (SE eq. 3 and CBAM eq. 2-3), ``"hard_sigmoid"`` (clamp((x + 3) / 6, 0, 1)),
    ``"tanh"`` and ``"relu"``: the alternatives of SE's Table 12 ablation (arXiv:1709.01507).
    Any shape; elementwise.
    """
    check_choice(gate, "gate", GATES)
    return GATES[gate](x)


def gate(name: str, x: torch.Tensor) -> torch.Tensor:
    """Deprecated alias of :func:`apply_gate` (the name clashed with the ``gate=`` keyword)."""
    warnings.warn(
        "visattn.functional.gate is deprecated, use visattn.functional.apply_gate",
        DeprecationWarning,
        stacklevel=2,
    )
    return apply_gate(name, x)


def global_pool(x: torch.Tensor, mode: str = "avg") -> torch.Tensor:
    """Pool each channel over all positions: x (N, C, H, W) -> z (N, C, 1, 1).

    ``"avg"``: z_c = 1/(H W) sum_ij x_c(i, j) (SE eq. 2, CBAM's AvgPool); ``"max"``:
    z_c = max_ij x_c(i, j) (CBAM's MaxPool).
    """
    _check_x(x)
    check_choice(mode, "mode", POOLS)
    return _global_pool(x, mode)


def channel_pool(x: torch.Tensor, modes: Sequence[str] = ("avg", "max")) -> torch.Tensor:
    """Pool across channels at every position, stacked in the order of ``modes``.

    x (N, C, H, W) -> (N, len(modes), H, W); ``"avg"`` is AvgPool_c = 1/C sum_c x_c, ``"max"``
    is MaxPool_c = max_c x_c (CBAM eq. 3).
    """
    _check_x(x)
    for mode in modes:
        check_choice(mode, "modes", POOLS)
    return _channel_pool(x, modes)


def bottleneck_mlp(z: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor,
                   b2: Tensor | None) -> Tensor:  # fmt: skip
    """The two-layer bottleneck W_2 ReLU(W_1 z + b_1) + b_2 of SE (eq. 3) and CBAM (eq. 2).

    Args:
        z: pooled descriptor, (N, C, 1, 1) or (N, C).
        w1, b1: W_1 (C/r, C[, 1, 1]) and b_1 (C/r,) or None (``fc1``; CBAM's W_0).
        w2, b2: W_2 (C, C/r[, 1, 1]) and b_2 (C,) or None (``fc2``; CBAM's W_1).

    Returns:
        The logits, in z's layout: (N, C, 1, 1) or (N, C).
    """
    _check_z_mlp(z, w1, b1, w2, b2)
    return _mlp(z, w1, b1, w2, b2)


def channel_scale(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Reweight: x~_c = s_c * x_c (SE eq. 4, CBAM's M_c(F) * F), ``scale`` (N, C, 1, 1) or (N, C)."""
    if scale.dim() == 2:
        scale = scale[:, :, None, None]
    return x * scale
