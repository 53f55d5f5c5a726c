"""The non-local block (Wang, Girshick, Gupta, He, CVPR 2018, arXiv:1711.07971) as pure tensor
functions.

    non-local operation  y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j)                      (eq. 1)
    embedded Gaussian    f = exp(theta(x_i)^T phi(x_j)),  C(x) = sum_j f: a softmax over j  (eq. 3)
    dot product          f = theta(x_i)^T phi(x_j),  C(x) = N_j                             (eq. 4)
    concatenation        f = ReLU(w_f^T [theta(x_i); phi(x_j)]),  C(x) = N_j                (eq. 5)
    non-local block      z_i = W_z y_i + x_i                                                (eq. 6)

with theta(x) = W_theta x + b, phi(x) = W_phi x + b, g(x) = W_g x + b 1 x 1 convolutions C -> C'
(C' = C/2 in the paper, Sec. 3.3), W_z a 1 x 1 convolution C' -> C followed by a BatchNorm
(``norm``; the paper initialises its scale to zero, Sec. 4.1, so the block starts as the
identity), i over the H W positions of x and j over those of phi and g: the same H W positions,
or fewer with ``subsample`` (Sec. 3.3's trick: a 2 x 2 max pool, stride 2, after phi and g;
``ceil_mode`` here, so odd sizes and one-row maps keep every position). N_j is the number of
positions j runs over.

Symbols -> arguments: W_theta, b_theta = ``theta_weight``, ``theta_bias`` (timm's ``t``),
W_phi = ``phi_weight`` (``p``), W_g = ``g_weight`` (``g``), W_z = ``z_weight`` (``z``), w_f =
``concat_weight`` (2 C', as a (1, 2 C'[, 1, 1]) weight: the first C' entries multiply theta,
the last C' phi), the BatchNorm ``norm``. ``scale`` multiplies theta^T phi (eq. 3 and 4): None
(1) in the paper; the official code's ``USE_SCALE`` option uses C'^(-1/2), timm's
``NonLocalAttn`` C^(-1/2) (C the input's channels).

:func:`non_local_affinity` returns the normalised pairwise matrix f(x_i, x_j) / C(x), (N, H W,
N_j), for visualisation; :func:`non_local_response` the residual term BN(W_z y) (what the
layer's ``attention(x)`` returns), :func:`non_local` the block z.

Tests: ``tests/functional/test_functional_nonlocal.py``, ``tests/layers/test_layers_nonlocal.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_choice, describe
from .._modes import NONLOCAL_PAIRWISE
from .attention import _check_bias, _check_linear, _check_x, _linear

__all__ = ["NONLOCAL_PAIRWISE", "non_local", "non_local_affinity", "non_local_response"]

#: The names of W_theta ... b_z in the block functions' signatures.
NONLOCAL_NAMES = ("theta_weight", "theta_bias", "phi_weight", "phi_bias", "g_weight", "g_bias",
                  "z_weight", "z_bias")  # fmt: skip


# ------------------------------------------------------------------------------- validation


def check_non_local_options(pairwise: str, scale: float | None, subsample: bool) -> None:
    """The options: the pairwise function f (:data:`NONLOCAL_PAIRWISE`), scale a finite real
    number or None (None for ``"concatenation"``, which has no theta^T phi), subsample a bool."""
    check_choice(pairwise, "pairwise", NONLOCAL_PAIRWISE)
    if scale is not None and (
        isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale)
    ):
        raise ValueError(f"scale: expected None or a finite real number, got {scale!r}")
    if pairwise == "concatenation" and scale is not None:
        raise ValueError(
            f"scale: expected None for pairwise='concatenation' (it has no theta^T phi), "
            f"got {scale!r}"
        )
    if not isinstance(subsample, bool):
        raise TypeError(f"subsample: expected a bool, got {describe(subsample)}")


def check_non_local_affinity(x, theta_weight, theta_bias, phi_weight, phi_bias, pairwise,
                             concat_weight, scale, subsample) -> None:  # fmt: skip
    """x (N, C, H, W); W_theta, W_phi (C', C[, 1, 1]) with their biases (C',) or None; w_f
    (1, 2 C'[, 1, 1]) for ``"concatenation"``, None otherwise; the options
    (:func:`check_non_local_options`)."""
    _check_x(x)
    check_non_local_options(pairwise, scale, subsample)
    ref = f"x of shape {tuple(x.shape)}"
    _check_linear(theta_weight, "theta_weight", x.shape[1], None, ref)
    inter = theta_weight.shape[0]
    _check_bias(theta_bias, "theta_bias", inter)
    _check_linear(phi_weight, "phi_weight", x.shape[1], inter, ref)
    _check_bias(phi_bias, "phi_bias", inter)
    if pairwise == "concatenation":
        if concat_weight is None:
            raise ValueError(
                f"concat_weight: expected w_f of shape (1, {2 * inter}[, 1, 1]) for "
                "pairwise='concatenation', got None"
            )
        _check_linear(concat_weight, "concat_weight", 2 * inter, 1, f"{inter} inter channels")
    elif concat_weight is not None:
        raise ValueError(
            f"concat_weight: expected None for pairwise={pairwise!r} (only 'concatenation' "
            f"has w_f), got {describe(concat_weight)}"
        )


def check_non_local(x, theta_weight, theta_bias, phi_weight, phi_bias, g_weight, g_bias,
                    z_weight, z_bias, pairwise, concat_weight, scale,
                    subsample) -> None:  # fmt: skip
    """All of the block's arguments: those of :func:`check_non_local_affinity`, W_g (C', C[, 1,
    1]), W_z (C, C'[, 1, 1]) and their biases (C',), (C,) or None."""
    check_non_local_affinity(x, theta_weight, theta_bias, phi_weight, phi_bias, pairwise,
                             concat_weight, scale, subsample)  # fmt: skip
    ref = f"x of shape {tuple(x.shape)}"
    inter = theta_weight.shape[0]
    _check_linear(g_weight, "g_weight", x.shape[1], inter, ref)
    _check_bias(g_bias, "g_bias", inter)
    _check_linear(z_weight, "z_weight", inter, x.shape[1], ref)
    _check_bias(z_bias, "z_bias", x.shape[1])


# ------------------------------------------------------------------------------- formulas


def _subsample(u: Tensor) -> Tensor:
    """Sec. 3.3's subsampling: a 2 x 2 max pool of stride 2 (partial windows kept at odd edges)."""
    return F.max_pool2d(u, 2, 2, ceil_mode=True)


def _affinity(theta: Tensor, phi: Tensor, pairwise: str, concat_weight, scale) -> Tensor:
    """f(x_i, x_j) / C(x), (N, H W, N_j), from theta (N, C', H, W) and phi (N, C', H_j, W_j)."""
    t = theta.flatten(2)  # (N, C', HW): a view in either memory format
    p = phi.flatten(2)  # (N, C', N_j)
    n_j = p.shape[2]
    if pairwise == "concatenation":
        w = concat_weight.reshape(-1)
        inter = t.shape[1]
        # w_f^T [theta_i; phi_j] = w_theta^T theta_i + w_phi^T phi_j: (N, HW, 1) + (N, 1, N_j)
        a = torch.matmul(w[:inter], t).unsqueeze(2)
        b = torch.matmul(w[inter:], p).unsqueeze(1)
        return torch.relu(a + b) / n_j
    logits = torch.bmm(t.transpose(1, 2), p)  # theta_i^T phi_j, (N, HW, N_j)
    if scale is not None:
        logits = logits * scale
    if pairwise == "embedded_gaussian":
        return torch.softmax(logits, dim=2)
    return logits / n_j  # dot product


def _non_local_affinity(x, theta_weight, theta_bias, phi_weight, phi_bias, pairwise,
                        concat_weight, scale, subsample) -> Tensor:  # fmt: skip
    phi = _linear(x, phi_weight, phi_bias)
    if subsample:
        phi = _subsample(phi)
    return _affinity(_linear(x, theta_weight, theta_bias), phi, pairwise, concat_weight, scale)


def _channels_last(x: Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _non_local_response(x, theta_weight, theta_bias, phi_weight, phi_bias, g_weight, g_bias,
                        z_weight, z_bias, pairwise, concat_weight, scale, subsample,
                        norm) -> Tensor:  # fmt: skip
    """BN(W_z y + b_z), (N, C, H, W), in x's memory format."""
    n, _, h, w = x.shape
    a = _non_local_affinity(x, theta_weight, theta_bias, phi_weight, phi_bias, pairwise,
                            concat_weight, scale, subsample)  # fmt: skip
    g = _linear(x, g_weight, g_bias)
    if subsample:
        g = _subsample(g)
    # y_i = sum_j a_ij g_j as (N, HW, C'): the transposed view (N, C', H, W) is channels_last
    # (no copy); for an NCHW x, one copy of the small y (the softmax's backward then gets a
    # contiguous gradient, which the other product order would not give it)
    y = torch.bmm(a, g.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, -1, h, w)
    if not _channels_last(x):
        y = y.contiguous()
    out = _linear(y, z_weight, z_bias)
    return out if norm is None else norm(out)


def non_local_affinity(x: Tensor, theta_weight: Tensor, theta_bias: Tensor | None,
                       phi_weight: Tensor, phi_bias: Tensor | None, *,
                       pairwise: str = "embedded_gaussian", concat_weight: Tensor | None = None,
                       scale: float | None = None, subsample: bool = False) -> Tensor:  # fmt: skip
    """The non-local operation's normalised pairwise matrix A_ij = f(x_i, x_j) / C(x)
    (arXiv:1711.07971, eq. 1 with eq. 3, 4 or 5), for visualisation: y_i = sum_j A_ij g(x_j).

    Args:
        x: (N, C, H, W).
        theta_weight, theta_bias: W_theta (C', C[, 1, 1]) and its bias (C',) or None.
        phi_weight, phi_bias: W_phi (C', C[, 1, 1]) and its bias (C',) or None.
        pairwise: f, one of :data:`NONLOCAL_PAIRWISE` (``"embedded_gaussian"`` in the paper).
        concat_weight: w_f, (1, 2 C'[, 1, 1]), for ``"concatenation"`` only.
        scale: multiplies theta^T phi (None: the paper's 1).
        subsample: 2 x 2 max pool (stride 2) of phi (Sec. 3.3).

    Returns:
        A, (N, H W, N_j), i and j in row-major (h, w) order; N_j = H W, or
        ceil(H / 2) ceil(W / 2) with ``subsample``. Rows sum to 1 for the embedded Gaussian.
    """
    check_non_local_affinity(x, theta_weight, theta_bias, phi_weight, phi_bias, pairwise,
                             concat_weight, scale, subsample)  # fmt: skip
    return _non_local_affinity(
        x, theta_weight, theta_bias, phi_weight, phi_bias, pairwise, concat_weight, scale,
        subsample,
    )  # fmt: skip


def non_local_response(x: Tensor, theta_weight: Tensor, theta_bias: Tensor | None,
                       phi_weight: Tensor, phi_bias: Tensor | None, g_weight: Tensor,
                       g_bias: Tensor | None, z_weight: Tensor, z_bias: Tensor | None, *,
                       pairwise: str = "embedded_gaussian", concat_weight: Tensor | None = None,
                       scale: float | None = None, subsample: bool = False,
                       norm: nn.Module | None = None) -> Tensor:  # fmt: skip
    """The non-local block's residual term BN(W_z y) (eq. 6 without + x; y of eq. 1), (N, C,
    H, W) in x's memory format: what ``NonLocal.attention(x)`` returns.

    Args:
        x, theta_weight ... scale, subsample: as :func:`non_local_affinity`'s (``subsample``
            pools both phi and g).
        g_weight, g_bias: W_g (C', C[, 1, 1]) and its bias (C',) or None.
        z_weight, z_bias: W_z (C, C'[, 1, 1]) and its bias (C,) or None.
        norm: a module applied to W_z y, e.g. the paper's ``nn.BatchNorm2d(C)`` (Sec. 4.1);
            called as is (training mode uses and updates the batch statistics).
    """
    check_non_local(x, theta_weight, theta_bias, phi_weight, phi_bias, g_weight, g_bias,
                    z_weight, z_bias, pairwise, concat_weight, scale, subsample)  # fmt: skip
    return _non_local_response(
        x, theta_weight, theta_bias, phi_weight, phi_bias, g_weight, g_bias, z_weight, z_bias,
        pairwise, concat_weight, scale, subsample, norm,
    )  # fmt: skip


def non_local(x: Tensor, theta_weight: Tensor, theta_bias: Tensor | None, phi_weight: Tensor,
              phi_bias: Tensor | None, g_weight: Tensor, g_bias: Tensor | None, z_weight: Tensor,
              z_bias: Tensor | None, *, pairwise: str = "embedded_gaussian",
              concat_weight: Tensor | None = None, scale: float | None = None,
              subsample: bool = False, norm: nn.Module | None = None) -> Tensor:  # fmt: skip
    """The non-local block z = BN(W_z y) + x (eq. 6), (N, C, H, W) in x's memory format: what
    the layer's forward runs. Arguments as :func:`non_local_response`'s."""
    check_non_local(x, theta_weight, theta_bias, phi_weight, phi_bias, g_weight, g_bias,
                    z_weight, z_bias, pairwise, concat_weight, scale, subsample)  # fmt: skip
    return x + _non_local_response(
        x, theta_weight, theta_bias, phi_weight, phi_bias, g_weight, g_bias, z_weight, z_bias,
        pairwise, concat_weight, scale, subsample, norm,
    )  # fmt: skip
