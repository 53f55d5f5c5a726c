"""CBAM, the Convolutional Block Attention Module (Woo et al., ECCV 2018, arXiv:1807.06521),
as pure tensor functions.

    channel attention  M_c(F) = sigma(MLP(AvgPool(F)) + MLP(MaxPool(F)))          (eq. 2)
                       MLP(z) = W_1 ReLU(W_0 z + b_0) + b_1  (the paper's W_0, W_1)
    spatial attention  M_s(F) = sigma(f^{k x k}([AvgPool_c(F); MaxPool_c(F)]))     (eq. 3)
    CBAM               F' = M_c(F) * F,   F'' = M_s(F') * F'                        (eq. 1)

In this package's symbols (:mod:`visattn.functional`) the MLP is W_2 ReLU(W_1 z + b_1) + b_2:
the paper's W_0 is ``fc1`` (w1 here) and its W_1 is ``fc2`` (w2). F is (N, C, H, W), M_c
(N, C, 1, 1), M_s (N, 1, H, W); f^{k x k} is a convolution with 2 input channels (one per pool,
in the order of ``pool``), 1 output, odd k and padding k // 2; an optional BatchNorm follows it
(the official code's layout).

:func:`cbam_arrange` puts the two maps together in the three arrangements of the paper's
Table 3: ``"channel_first"`` (eq. 1), ``"spatial_first"`` (M_s, then M_c on M_s(F) * F) and
``"parallel"`` (F'' = M_c(F) * M_s(F) * F). The layers (:mod:`visattn.layers.cbam`), the fused
block's reference branch (:func:`visattn.functional.cbam`) and the visualisation
(:mod:`visattn.viz.capture`) all use these functions.

``merge_pools=True`` gives timm's light CBAM (its ``LightCbamModule``, a variant of timm's own
with no paper): the pools are averaged before the MLP and before the convolution, so each
map takes one pass instead of one per pool:

    light channel attention  M_c'(F) = sigma(MLP(mean_p pool_p(F)))    (0.5 AvgPool + 0.5 MaxPool)
    light spatial attention  M_s'(F) = sigma(f^{k x k}(mean_p pool_c,p(F)))    (1 input channel)
    light CBAM               eq. 1 with M_c', M_s': :func:`light_cbam`

Tests: ``tests/functional/test_functional_blocks.py``, ``tests/kernels/test_kernels_se_cbam.py``,
``tests/functional/test_functional_lcbam.py`` (``merge_pools``, :func:`light_cbam`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_choice, check_tensor, describe
from .attention import (
    _channel_pool,
    _check_mlp,
    _check_pool,
    _check_x,
    _global_pool,
    _mean_of,
    _mlp,
)

__all__ = ["ORDERS", "cbam_arrange", "cbam_reference", "channel_attention_map", "light_cbam",
           "spatial_attention_map"]  # fmt: skip

#: CBAM's arrangements of its two maps (the paper's Table 3); the first is eq. 1.
ORDERS: tuple[str, ...] = ("channel_first", "spatial_first", "parallel")

Map = Callable[[torch.Tensor], torch.Tensor]


# ------------------------------------------------------------------------------- validation


def check_spatial_conv(weight, bias, n_pools: int, names=("weight", "bias")) -> None:
    """f^{k x k}'s weight (1, n_pools, k_h, k_w) with odd k_h, k_w and its bias (1,) or None."""
    check_tensor(weight, names[0])
    if (
        weight.dim() != 4
        or weight.shape[:2] != (1, n_pools)
        or not all(k % 2 for k in weight.shape[2:])
    ):
        raise ValueError(
            f"{names[0]}: expected shape (1, {n_pools}, k, k) with k odd, got {tuple(weight.shape)}"
        )
    if bias is not None and check_tensor(bias, names[1]).shape != (1,):
        raise ValueError(
            f"{names[1]}: expected None or a tensor of shape (1,), got {tuple(bias.shape)}"
        )


def _check_merge(merge_pools) -> None:
    if not isinstance(merge_pools, bool):
        raise TypeError(f"merge_pools: expected a bool, got {describe(merge_pools)}")


def check_cbam(x, w1, b1, w2, b2, conv_weight, conv_bias, pool, names,
               merge_pools: bool = False) -> tuple[str, ...]:  # fmt: skip
    """Validate CBAM's arguments once; ``names``: those of w1 ... conv_bias in the caller;
    ``merge_pools``: the light variant, whose f^{k x k} takes one input channel."""
    _check_x(x)
    _check_mlp(w1, b1, w2, b2, x.shape[1], f"x of shape {tuple(x.shape)}", names[:4])
    pool = _check_pool(pool)
    _check_merge(merge_pools)
    check_spatial_conv(conv_weight, conv_bias, 1 if merge_pools else len(pool), names[4:])
    return pool


# ------------------------------------------------------------------------------- formulas


def _channel_map(x, w1, b1, w2, b2, pool: Sequence[str], merge: bool = False) -> torch.Tensor:
    if merge:  # the light variant: one MLP pass on the pools' mean
        return torch.sigmoid(_mlp(_mean_of([_global_pool(x, p) for p in pool]), w1, b1, w2, b2))
    logits = None
    for p in pool:
        out = _mlp(_global_pool(x, p), w1, b1, w2, b2)
        logits = out if logits is None else logits + out
    return torch.sigmoid(logits)


def _spatial_map(x, weight, bias, pool: Sequence[str], norm, merge: bool = False) -> torch.Tensor:
    padding = (weight.shape[2] // 2, weight.shape[3] // 2)
    logits = F.conv2d(_channel_pool(x, pool, merge), weight, bias, padding=padding)
    if norm is not None:
        logits = norm(logits)
    return torch.sigmoid(logits)


def _arrange(x: torch.Tensor, channel_map: Map, spatial_map: Map, order: str):
    """(F'', M_c, M_s) for one of :data:`ORDERS`."""
    if order == "parallel":
        m_c, m_s = channel_map(x), spatial_map(x)
        return x * m_c * m_s, m_c, m_s
    if order == "channel_first":
        m_c = channel_map(x)
        f1 = x * m_c
        m_s = spatial_map(f1)
        return f1 * m_s, m_c, m_s
    m_s = spatial_map(x)
    f1 = x * m_s
    m_c = channel_map(f1)
    return f1 * m_c, m_c, m_s


def channel_attention_map(x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
                          *, pool: Sequence[str] = ("avg", "max"),
                          merge_pools: bool = False) -> Tensor:  # fmt: skip
    """CBAM's channel attention M_c(F) = sigma(sum_k MLP(pool_k(F))) (arXiv:1807.06521, eq. 2).

    Args:
        x: F, (N, C, H, W).
        w1, b1: W_1 (C/r, C[, 1, 1]) and b_1 (C/r,) or None: ``fc1``, the paper's W_0.
        w2, b2: W_2 (C, C/r[, 1, 1]) and b_2 (C,) or None: ``fc2``, the paper's W_1.
        pool: the global pools whose MLP outputs are summed (AvgPool and MaxPool in the paper).
        merge_pools: timm's light variant instead, sigma(MLP(mean_k pool_k(F))): one MLP pass
            on the pools' mean (0.5 AvgPool + 0.5 MaxPool by default).

    Returns:
        M_c(F), (N, C, 1, 1).
    """
    _check_x(x)
    _check_mlp(w1, b1, w2, b2, x.shape[1], f"x of shape {tuple(x.shape)}")
    pool = _check_pool(pool)
    _check_merge(merge_pools)
    return _channel_map(x, w1, b1, w2, b2, pool, merge_pools)


def spatial_attention_map(x: Tensor, weight: Tensor, bias: Tensor | None, *,
                          pool: Sequence[str] = ("avg", "max"), norm: nn.Module | None = None,
                          merge_pools: bool = False) -> Tensor:  # fmt: skip
    """CBAM's spatial attention M_s(F) = sigma(f^{k x k}([AvgPool_c(F); MaxPool_c(F)]))
    (arXiv:1807.06521, eq. 3).

    Args:
        x: F, (N, C, H, W).
        weight, bias: f^{k x k}, (1, len(pool), k_h, k_w) with odd sizes (padding k // 2 keeps
            H x W), and (1,) or None.
        pool: the channel pools, concatenated in this order (AvgPool_c first in the paper).
        norm: a module applied to the convolution's output before sigma, e.g. the official
            code's ``nn.BatchNorm2d(1)``; called as is (training mode updates its statistics).
        merge_pools: timm's light variant instead, sigma(f^{k x k}(mean_k pool_c,k(F))): the
            pooled maps averaged into one channel (``weight`` then (1, 1, k_h, k_w)).

    Returns:
        M_s(F), (N, 1, H, W).
    """
    _check_x(x)
    pool = _check_pool(pool)
    _check_merge(merge_pools)
    check_spatial_conv(weight, bias, 1 if merge_pools else len(pool))
    return _spatial_map(x, weight, bias, pool, norm, merge_pools)


def cbam_arrange(
    x: torch.Tensor,
    channel_map: Map,
    spatial_map: Map,
    order: str = "channel_first",
    *,
    return_maps: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply CBAM's two attention maps to F in one of the paper's arrangements (Table 3).

    - ``"channel_first"`` (eq. 1): F' = M_c(F) * F, F'' = M_s(F') * F'.
    - ``"spatial_first"``: F' = M_s(F) * F, F'' = M_c(F') * F'.
    - ``"parallel"``: F'' = M_c(F) * M_s(F) * F.

    Args:
        x: F, (N, C, H, W).
        channel_map: F -> M_c(F), (N, C, 1, 1), e.g. a ``functools.partial`` of
            :func:`channel_attention_map` or ``ChannelAttention.attention``.
        spatial_map: F -> M_s(F), (N, 1, H, W), e.g. ``SpatialAttention.attention``.
        order: one of :data:`ORDERS`.
        return_maps: also return the two maps as applied.

    Returns:
        F'' (N, C, H, W), or (F'', M_c, M_s) with ``return_maps``.
    """
    _check_x(x)
    check_choice(order, "order", ORDERS)
    for fn, name in ((channel_map, "channel_map"), (spatial_map, "spatial_map")):
        if not callable(fn):
            raise TypeError(f"{name}: expected a function of F, got {type(fn).__name__}")
    out = _arrange(x, channel_map, spatial_map, order)
    return out if return_maps else out[0]


def _cbam(x, w1, b1, w2, b2, conv_weight, conv_bias, pool, norm, merge=False) -> torch.Tensor:
    def channel(f):
        return _channel_map(f, w1, b1, w2, b2, pool, merge)

    def spatial(f):
        return _spatial_map(f, conv_weight, conv_bias, pool, norm, merge)

    return _arrange(x, channel, spatial, "channel_first")[0]


#: The names of W_1 ... f^{k x k}'s bias in the block functions' signatures.
CBAM_NAMES = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias", "conv_weight", "conv_bias")


def cbam_reference(x: Tensor, fc1_weight: Tensor, fc1_bias: Tensor | None, fc2_weight: Tensor,
                   fc2_bias: Tensor | None, conv_weight: Tensor, conv_bias: Tensor | None, *,
                   pool: Sequence[str] = ("avg", "max"),
                   norm: nn.Module | None = None) -> Tensor:  # fmt: skip
    """The plain CBAM block, channel first (eq. 1-3), op by op: :func:`cbam_arrange` of
    :func:`channel_attention_map` and :func:`spatial_attention_map` (``norm`` after f^{k x k}).

    Arguments as :func:`visattn.functional.cbam`'s; what its fast paths are tested against.
    Returns F'', (N, C, H, W).
    """
    pool = check_cbam(
        x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias, pool, CBAM_NAMES
    )
    return _cbam(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias, pool, norm)


def light_cbam(x: Tensor, fc1_weight: Tensor, fc1_bias: Tensor | None, fc2_weight: Tensor,
               fc2_bias: Tensor | None, conv_weight: Tensor, conv_bias: Tensor | None, *,
               pool: Sequence[str] = ("avg", "max"),
               norm: nn.Module | None = None) -> Tensor:  # fmt: skip
    """timm's light CBAM (its ``LightCbamModule``; no paper): CBAM's eq. 1, channel first, with
    the pools averaged before the MLP and before the convolution (``merge_pools=True`` of
    :func:`channel_attention_map` and :func:`spatial_attention_map`):

        F' = sigma(MLP(mean_p pool_p(F))) * F,   F'' = sigma(BN(f^{k x k}(mean_p pool_c,p(F')))) * F'

    Args:
        x: F, (N, C, H, W).
        fc1_weight ... fc2_bias: the MLP's W_1, b_1, W_2, b_2 (timm: no biases).
        conv_weight, conv_bias: f^{k x k}, (1, 1, k_h, k_w) with odd sizes, and (1,) or None.
        pool: the pools averaged (timm: ``("avg", "max")``, 0.5 AvgPool + 0.5 MaxPool).
        norm: a module after f^{k x k} (timm: ``nn.BatchNorm2d(1)``), called as is.

    Returns:
        F'', (N, C, H, W).
    """
    pool = check_cbam(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias,
                      pool, CBAM_NAMES, merge_pools=True)  # fmt: skip
    return _cbam(x, fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias, pool, norm,
                 merge=True)  # fmt: skip
