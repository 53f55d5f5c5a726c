"""Selective Kernel (Li, Wang, Hu, Yang, CVPR 2019, arXiv:1903.06586): the fuse and select
steps of the SK convolution as pure tensor functions.

The split step (Sec. 3.1) makes M branch outputs U_m = ReLU(BN(conv_m(X))) (M = 2 in the paper:
a 3 x 3 and a 5 x 5 kernel, the 5 x 5 as a 3 x 3 with dilation 2, grouped convolutions); those
are ordinary convolution / BatchNorm layers (:class:`visattn.layers.SelectiveKernel` owns them).
Given the U_m, the functions here are:

    fuse    U = sum_m U_m                                                     (eq. 1)
            s_c = 1 / (H W) sum_i sum_j U_c(i, j)                             (eq. 2)
            z = ReLU(BN(W s)),   W in R^{d x C}                               (eq. 3)
            d = max(C / r, L)                                                 (eq. 4)
    select  a_m = exp(A_m z) / sum_k exp(A_k z)   (softmax over the M paths) (eq. 5)
            V = sum_m a_m * U_m                                               (eq. 6)

Symbols -> arguments: U_m are ``branches[m]`` (N, C, H, W); W is ``fc_reduce_weight``
(d, C[, 1, 1]); A_m (the paper's A, B for M = 2) are the rows m C ... (m + 1) C - 1 of
``fc_select_weight`` (M C, d[, 1, 1]); BN is ``norm`` (a module or function applied to W s as
(N, d, 1, 1); None leaves it out); r, L are ``reduction``, ``min_channels`` of
:func:`sk_attention_channels`. The selection weights a are returned as (N, M, C); the output V
is (N, C, H, W). Neither linear map has a bias (eq. 3, 5), the layout of timm's
``SelectiveKernelAttn`` (``fc_reduce``, ``bn``, ``fc_select``).

s is computed as sum_m GAP(U_m) (equal to GAP(U), without writing U), and V in the branches'
dtype (under autocast the small vectors run as autocast chooses, the full-size sum in the
branches' dtype).

Tests: ``tests/functional/test_functional_sk.py``, ``tests/layers/test_layers_sk.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._checks import check_int, check_positive, check_tensor, describe
from .attention import _check_linear, _global_pool, _linear

__all__ = ["selective_kernel", "sk_attention", "sk_attention_channels"]

#: The names of W and A in the public functions' signatures (the layers' attributes).
SK_NAMES = ("fc_reduce_weight", "fc_select_weight")

Norm = Callable[[Tensor], Tensor]


def sk_attention_channels(
    channels: int, reduction: float = 16, min_channels: int = 32, divisor: int = 1
) -> int:
    """d = max(C / r, L) (arXiv:1903.06586, eq. 4), the width of z.

    C / r is rounded to a multiple of ``divisor`` as timm's ``make_divisible`` does (to the
    nearest multiple, at least ``divisor``, and up by one multiple when rounding lost more than
    10%); ``divisor=1`` rounds to the nearest integer (at least 1). The paper's r = 16, L = 32;
    timm's ``SelectiveKernel`` has no L (``min_channels=1``) and ``divisor=8``.
    """
    check_int(channels, "channels", minimum=1)
    check_positive(reduction, "reduction")
    check_int(min_channels, "min_channels", minimum=1)
    check_int(divisor, "divisor", minimum=1)
    value = channels / reduction
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return max(rounded, min_channels)


# ------------------------------------------------------------------------------- validation


def check_selective_kernel(
    branches: Sequence[Tensor], fc_reduce_weight: Tensor, fc_select_weight: Tensor, norm
) -> tuple[Tensor, ...]:
    """Validate the fuse / select arguments once; returns the branches as a tuple.

    ``branches``: a non-empty list or tuple of M tensors (N, C, H, W) of one shape and dtype;
    ``fc_reduce_weight`` (d, C[, 1, 1]); ``fc_select_weight`` (M C, d[, 1, 1]); ``norm`` None or
    callable.
    """
    if not isinstance(branches, (list, tuple)):
        raise TypeError(
            f"branches: expected a list or tuple of tensors (N, C, H, W), got {describe(branches)}"
        )
    if not branches:
        raise ValueError(f"branches: expected at least one tensor (N, C, H, W), got {branches!r}")
    branches = tuple(branches)
    for m, u in enumerate(branches):
        check_tensor(u, f"branches[{m}]", ndim=4, layout="(N, C, H, W)")
        if u.shape != branches[0].shape or u.dtype != branches[0].dtype:
            raise ValueError(
                f"branches[{m}]: expected the shape and dtype of branches[0] "
                f"({tuple(branches[0].shape)}, {branches[0].dtype}), got {tuple(u.shape)}, "
                f"{u.dtype}"
            )
    c, m = branches[0].shape[1], len(branches)
    ref = f"{m} branches of shape {tuple(branches[0].shape)}"
    _check_linear(fc_reduce_weight, SK_NAMES[0], c, None, ref)
    _check_linear(fc_select_weight, SK_NAMES[1], fc_reduce_weight.shape[0], m * c, ref)
    if norm is not None and not callable(norm):
        raise TypeError(f"norm: expected None or a module / function, got {type(norm).__name__}")
    return branches


# ------------------------------------------------------------------------------- formulas


def _sk_attention(branches: tuple[Tensor, ...], w_reduce, w_select, norm) -> Tensor:
    """a (N, M, C), eq. 1-5, arguments unchecked."""
    s = _global_pool(branches[0], "avg")  # (N, C, 1, 1), eq. 1-2 as sum_m GAP(U_m)
    for u in branches[1:]:
        s = s + _global_pool(u, "avg")
    z = _linear(s, w_reduce, None)  # W s, (N, d, 1, 1)
    if norm is not None:
        z = norm(z)
    z = torch.relu(z)  # eq. 3
    logits = _linear(z, w_select, None)  # A_m z for every m, (N, M C, 1, 1)
    n, c = s.shape[:2]
    return torch.softmax(logits.reshape(n, len(branches), c), dim=1)  # eq. 5


def _sk_select(branches: tuple[Tensor, ...], a: Tensor) -> Tensor:
    """V = sum_m a_m U_m (eq. 6), in the branches' dtype and memory format."""
    a = a.to(branches[0].dtype)[..., None, None]  # (N, M, C, 1, 1)
    v = branches[0] * a[:, 0]
    for m in range(1, len(branches)):
        v = torch.addcmul(v, branches[m], a[:, m])
    return v


def sk_attention(branches: Sequence[Tensor], fc_reduce_weight: Tensor, fc_select_weight: Tensor,
                 *, norm: Norm | None = None) -> Tensor:  # fmt: skip
    """The selection weights a_m = softmax_m(A_m ReLU(BN(W GAP(sum_k U_k)))) (eq. 1-5).

    Args:
        branches: U_1 ... U_M, each (N, C, H, W), one shape and dtype.
        fc_reduce_weight: W, (d, C[, 1, 1]) (eq. 3; ``attn.fc_reduce.weight``).
        fc_select_weight: A_1 ... A_M stacked, (M C, d[, 1, 1]) (eq. 5;
            ``attn.fc_select.weight``, rows m C ... (m + 1) C - 1 are A_m).
        norm: BN of eq. 3, applied to W s of shape (N, d, 1, 1) (e.g. ``nn.BatchNorm2d(d)``,
            called as is: training mode uses and updates its statistics), or None.

    Returns:
        a, (N, M, C): softmax over the M paths, so sum_m a_m = 1 for every sample and channel.
    """
    branches = check_selective_kernel(branches, fc_reduce_weight, fc_select_weight, norm)
    return _sk_attention(branches, fc_reduce_weight, fc_select_weight, norm)


def selective_kernel(branches: Sequence[Tensor], fc_reduce_weight: Tensor,
                     fc_select_weight: Tensor, *, norm: Norm | None = None) -> Tensor:  # fmt: skip
    """The fused and selected output V = sum_m a_m U_m (eq. 1-6), what the layer's forward calls.

    Arguments as :func:`sk_attention`'s. Returns V, (N, C, H, W), in the branches' dtype.
    """
    branches = check_selective_kernel(branches, fc_reduce_weight, fc_select_weight, norm)
    a = _sk_attention(branches, fc_reduce_weight, fc_select_weight, norm)
    return _sk_select(branches, a)
