"""BAM, the Bottleneck Attention Module (Park, Woo, Lee, Kweon, BMVC 2018, arXiv:1807.06514),
as pure tensor functions.

    refinement       F' = F + F * M(F) = F * (1 + M(F))                              (eq. 1)
    attention map    M(F) = sigma(M_c(F) + M_s(F))                        (N, C, H, W)  (eq. 2)
    channel branch   M_c(F) = BN(MLP(AvgPool(F)))                         (N, C, 1, 1)  (eq. 3)
                     MLP(z) = W_2 ReLU(W_1 z + b_1) + b_2   (the paper's W_1(W_0 z + b_0) + b_1)
    spatial branch   M_s(F) = BN(f_3^{1x1}(f_2^{3x3}(f_1^{3x3}(f_0^{1x1}(F)))))  (N, 1, H, W)  (eq. 4)

Symbols -> arguments. The MLP uses the package's symbols (:mod:`visattn.functional`): ``w1``,
``b1`` are W_1, b_1 (C -> C/r; the paper's W_0, b_0), ``w2``, ``b2`` are W_2, b_2 (C/r -> C;
the paper's W_1, b_1); eq. 3 writes the MLP without its hidden activation, the official code
has a ReLU there, and so does this one. The spatial branch is ``spatial_weights`` /
``spatial_biases``: f_0 (C/r, C, 1, 1), then the dilated 3 x 3 convolutions f_1, f_2, ...
(C/r, C/r, 3, 3; dilation d = 4 and padding d in the paper, so H x W is kept), then f_3
(1, C/r, 1, 1); each f_i but the last is followed by its BatchNorm (when given) and a ReLU, the
last by the branch's BatchNorm (eq. 4's BN). The BatchNorms are callables (``nn.BatchNorm1d`` on
(N, C/r) and (N, C) in the channel branch, ``nn.BatchNorm2d`` in the spatial one), applied as
they are (training mode uses and updates the batch statistics).

The paper and its official code (the authors' PyTorch repository) differ:

- the combination: the official code computes 1 + sigma(M_c * M_s), a product, where eq. 2 has
  the sum (``combine="product"`` reproduces it);
- the channel branch's BatchNorm: the official code normalises the hidden layer (FC, BN, ReLU,
  FC) and has no BN after the MLP (``hidden_norm=``, ``channel_norm=None``);
- the spatial branch: the official code has no BN after f_3 (last entry of ``spatial_norms``
  None; f_3 keeps its bias);
- the official code pools with an H x H window, which is the global average only for square maps.

:class:`visattn.layers.BAM` builds either layout (``variant="paper"`` / ``"official"``).

Tests: ``tests/functional/test_functional_bam.py``, ``tests/layers/test_layers_bam.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _modes
from .._checks import check_choice, check_int, check_tensor, describe
from .attention import _check_mlp, _check_x, _global_pool

__all__ = ["BAM_COMBINES", "bam", "bam_attention", "bam_channel_attention",
           "bam_spatial_attention"]  # fmt: skip

#: How the two branches are put together (:data:`visattn._modes.BAM_COMBINES`): ``"sum"`` is
#: eq. 2, ``"product"`` the official code.
BAM_COMBINES: tuple[str, ...] = _modes.BAM_COMBINES

Norm = Callable[[Tensor], Tensor]

#: The names of W_1, b_1, W_2, b_2 in the functions' signatures.
MLP_NAMES = ("w1", "b1", "w2", "b2")


# ------------------------------------------------------------------------------- validation


def _check_norm(norm, name: str) -> None:
    if norm is not None and not callable(norm):
        raise TypeError(
            f"{name}: expected None or a callable (e.g. a BatchNorm), got {describe(norm)}"
        )


def _check_spatial(x, weights, biases, norms, dilation) -> None:
    """f_0 (R, C, 1, 1), f_1 ... (R, R, 3, 3), f_last (1, R, 1, 1); one bias (or None) and one
    norm (or None) per convolution; dilation an int >= 1."""
    if not isinstance(weights, (tuple, list)) or len(weights) < 2:
        raise ValueError(
            f"spatial_weights: expected a tuple of at least 2 convolution weights (f_0 ... f_3), "
            f"got {describe(weights)}"
        )
    n = len(weights)
    for value, name in ((biases, "spatial_biases"), (norms, "spatial_norms")):
        if not isinstance(value, (tuple, list)) or len(value) != n:
            raise ValueError(
                f"{name}: expected a tuple of {n} entries (one per convolution, None allowed), "
                f"got {describe(value)}"
            )
    c = x.shape[1]
    hidden = None
    for i, w in enumerate(weights):
        check_tensor(w, f"spatial_weights[{i}]")
        if i == 0 and w.dim() == 4:
            hidden = w.shape[0]  # R = C/r, set by f_0
        c_in = c if i == 0 else hidden
        c_out = "R" if i == 0 else 1 if i == n - 1 else hidden
        k = 1 if i in (0, n - 1) else 3
        if w.dim() != 4 or w.shape[1:] != (c_in, k, k) or (i and w.shape[0] != c_out):
            raise ValueError(
                f"spatial_weights[{i}]: expected shape ({c_out}, {c_in}, {k}, {k}) for x of shape "
                f"{tuple(x.shape)}, got {tuple(w.shape)}"
            )
        c_out = w.shape[0]
        b = biases[i]
        if b is not None and check_tensor(b, f"spatial_biases[{i}]").shape != (c_out,):
            raise ValueError(
                f"spatial_biases[{i}]: expected None or a tensor of shape ({c_out},), "
                f"got {tuple(b.shape)}"
            )
        _check_norm(norms[i], f"spatial_norms[{i}]")
    check_int(dilation, "dilation", minimum=1)


def check_bam(x, w1, b1, w2, b2, spatial_weights, spatial_biases, spatial_norms, dilation,
              hidden_norm, channel_norm, combine) -> tuple:  # fmt: skip
    """Validate BAM's arguments once; returns ``spatial_norms`` as a tuple (None: no norms)."""
    _check_x(x)
    _check_mlp(w1, b1, w2, b2, x.shape[1], f"x of shape {tuple(x.shape)}", MLP_NAMES)
    _check_norm(hidden_norm, "hidden_norm")
    _check_norm(channel_norm, "channel_norm")
    if spatial_norms is None and isinstance(spatial_weights, (tuple, list)):
        spatial_norms = (None,) * len(spatial_weights)
    _check_spatial(x, spatial_weights, spatial_biases, spatial_norms, dilation)
    check_choice(combine, "combine", BAM_COMBINES)
    return tuple(spatial_norms)


# ------------------------------------------------------------------------------- formulas


def _bam_channel(x, w1, b1, w2, b2, hidden_norm, norm) -> Tensor:
    z = _global_pool(x, "avg").flatten(1)  # AvgPool(F), (N, C)
    h = F.linear(z, w1.flatten(1), b1)
    if hidden_norm is not None:
        h = hidden_norm(h)
    out = F.linear(torch.relu(h), w2.flatten(1), b2)
    if norm is not None:
        out = norm(out)
    return out[:, :, None, None]


def _bam_spatial(x, weights, biases, norms, dilation: int) -> Tensor:
    y = x
    last = len(weights) - 1
    for i, (w, b, norm) in enumerate(zip(weights, biases, norms, strict=True)):
        d = dilation if 0 < i < last else 1  # f_0 and f_last are 1 x 1 (padding 0)
        y = F.conv2d(y, w, b, padding=d * (w.shape[-1] // 2), dilation=d)
        if norm is not None:
            y = norm(y)
        if i < last:
            y = torch.relu(y)
    return y


def _bam_gate(m_c: Tensor, m_s: Tensor, combine: str) -> Tensor:
    """sigma(M_c + M_s) (eq. 2) or sigma(M_c * M_s) (official code), (N, C, H, W)."""
    return torch.sigmoid(m_c + m_s if combine == "sum" else m_c * m_s)


def _bam_branches(x, w1, b1, w2, b2, weights, biases, norms, dilation, hidden_norm, channel_norm):
    m_c = _bam_channel(x, w1, b1, w2, b2, hidden_norm, channel_norm)
    return m_c, _bam_spatial(x, weights, biases, norms, dilation)


def bam_channel_attention(x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor,
                          b2: Tensor | None, *, hidden_norm: Norm | None = None,
                          norm: Norm | None = None) -> Tensor:  # fmt: skip
    """BAM's channel branch M_c(F) = BN(W_2 ReLU(W_1 AvgPool(F) + b_1) + b_2) (arXiv:1807.06514,
    eq. 3), before the sigmoid.

    Args:
        x: F, (N, C, H, W).
        w1, b1: W_1 (C/r, C[, 1, 1]) and b_1 (C/r,) or None: the paper's W_0, b_0.
        w2, b2: W_2 (C, C/r[, 1, 1]) and b_2 (C,) or None: the paper's W_1, b_1.
        hidden_norm: applied to the hidden layer (N, C/r) before the ReLU (the official code's
            BatchNorm1d); None in the paper.
        norm: eq. 3's BN, applied to the MLP's output (N, C) (a BatchNorm1d); None: no BN.

    Returns:
        M_c(F), (N, C, 1, 1).
    """
    _check_x(x)
    _check_mlp(w1, b1, w2, b2, x.shape[1], f"x of shape {tuple(x.shape)}", MLP_NAMES)
    _check_norm(hidden_norm, "hidden_norm")
    _check_norm(norm, "norm")
    return _bam_channel(x, w1, b1, w2, b2, hidden_norm, norm)


def bam_spatial_attention(x: Tensor, spatial_weights: Sequence[Tensor],
                          spatial_biases: Sequence[Tensor | None], *, dilation: int = 4,
                          spatial_norms: Sequence[Norm | None] | None = None) -> Tensor:  # fmt: skip
    """BAM's spatial branch M_s(F) = BN(f_3(f_2(f_1(f_0(F))))) (arXiv:1807.06514, eq. 4),
    before the sigmoid.

    Args:
        x: F, (N, C, H, W).
        spatial_weights: f_0 (C/r, C, 1, 1), the dilated f_1, ... (C/r, C/r, 3, 3), f_last
            (1, C/r, 1, 1) (the paper: two dilated convolutions, four in all).
        spatial_biases: one bias per convolution, (out,) or None.
        dilation: d of the 3 x 3 convolutions (4 in the paper); their padding is d.
        spatial_norms: one per convolution, None allowed: those of f_0 ... are applied before
            each ReLU, the last after f_last (eq. 4's BN; the official code has none). None: no
            norms.

    Returns:
        M_s(F), (N, 1, H, W).
    """
    _check_x(x)
    if spatial_norms is None and isinstance(spatial_weights, (tuple, list)):
        spatial_norms = (None,) * len(spatial_weights)
    _check_spatial(x, spatial_weights, spatial_biases, spatial_norms, dilation)
    return _bam_spatial(x, spatial_weights, spatial_biases, spatial_norms, dilation)


def bam_attention(x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
                  spatial_weights: Sequence[Tensor], spatial_biases: Sequence[Tensor | None], *,
                  dilation: int = 4, hidden_norm: Norm | None = None,
                  channel_norm: Norm | None = None,
                  spatial_norms: Sequence[Norm | None] | None = None,
                  combine: str = "sum") -> Tensor:  # fmt: skip
    """The factor BAM multiplies F by: 1 + M(F) = 1 + sigma(M_c(F) + M_s(F)) (eq. 1-2).

    Arguments as :func:`bam_channel_attention` (``channel_norm`` is its ``norm``) and
    :func:`bam_spatial_attention`; ``combine``: ``"sum"`` (eq. 2) or ``"product"`` (the official
    code's sigma(M_c * M_s)).

    Returns:
        1 + M(F), (N, C, H, W), values in (1, 2).
    """
    norms = check_bam(x, w1, b1, w2, b2, spatial_weights, spatial_biases, spatial_norms,
                      dilation, hidden_norm, channel_norm, combine)  # fmt: skip
    m_c, m_s = _bam_branches(x, w1, b1, w2, b2, spatial_weights, spatial_biases, norms, dilation,
                             hidden_norm, channel_norm)  # fmt: skip
    return 1 + _bam_gate(m_c, m_s, combine)


def bam(x: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None,
        spatial_weights: Sequence[Tensor], spatial_biases: Sequence[Tensor | None], *,
        dilation: int = 4, hidden_norm: Norm | None = None, channel_norm: Norm | None = None,
        spatial_norms: Sequence[Norm | None] | None = None, combine: str = "sum") -> Tensor:  # fmt: skip
    """The BAM block F' = F + F * M(F) (arXiv:1807.06514, eq. 1-4): what the layer's forward calls.

    Arguments as :func:`bam_attention`. Returns F', (N, C, H, W).
    """
    norms = check_bam(x, w1, b1, w2, b2, spatial_weights, spatial_biases, spatial_norms,
                      dilation, hidden_norm, channel_norm, combine)  # fmt: skip
    m_c, m_s = _bam_branches(x, w1, b1, w2, b2, spatial_weights, spatial_biases, norms, dilation,
                             hidden_norm, channel_norm)  # fmt: skip
    return x + x * _bam_gate(m_c, m_s, combine)
