"""Tests of Triplet Attention's formula functions (src/visattn/functional/triplet_block.py)
against a NumPy formula written here from the paper (Misra et al., WACV 2021, arXiv:2010.03045,
eq. 1-3): each branch rotates x (np.transpose) so that its plane comes last, Z-pools the first
axis, convolves, normalises, gates, multiplies and rotates back, as the paper describes (the
formula under test never rotates x). New random inputs each run (the seed is printed by
tests/conftest.py), odd sizes and N = 1; float64 gradcheck away from max-pool ties; every
validation error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from visattn.functional import triplet_attention, triplet_attention_map, triplet_attention_maps

#: Smallest gap between the two largest values of a max pool accepted for a gradcheck point, as
#: KINK_MARGIN of tests/layers/layer_tester.py.
KINK_MARGIN = 1e-4

SHAPES = [(1, 5, 3, 7), (3, 7, 5, 1), (2, 9, 7, 5), (1, 1, 4, 4)]  # N = 1, odd, C = 1

# ------------------------------------------------------------------------------ NumPy formulas


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def np_psi(z, w, bn):
    """sigma(BN(conv_k(z))): zero-padded cross-correlation of z (N, 2, A, B) with w (1, 2, k_a,
    k_b), padding k // 2, then an evaluation-mode BatchNorm (mean, var, gamma, beta, eps)."""
    n, _, a, b = z.shape
    ka, kb = w.shape[2:]
    padded = np.pad(z, ((0, 0), (0, 0), (ka // 2, ka // 2), (kb // 2, kb // 2)))
    out = np.zeros((n, 1, a, b))
    for i in range(ka):
        for j in range(kb):
            out[:, 0] += np.einsum("nkab,k->nab", padded[:, :, i : i + a, j : j + b], w[0, :, i, j])
    if bn is not None:
        mean, var, gamma, beta, eps = bn
        out = (out - mean) / np.sqrt(var + eps) * gamma + beta
    return sigmoid(out)


def np_branch(x, axes, w, bn):
    """Rotate x to ``axes`` (N first), Z-pool = [max; mean] over the first axis after N (eq. 1),
    psi, multiply, rotate back. Returns (the branch's output, its map in the rotated axes)."""
    chi = np.transpose(x, axes)
    z = np.stack([chi.max(1), chi.mean(1)], axis=1)
    a = np_psi(z, w, bn)
    return np.transpose(chi * a, np.argsort(axes)), a


# the paper's code's rotations: cw: (N, H, C, W); hc: (N, W, H, C); hw: x itself
ROTATIONS = {"cw": (0, 2, 1, 3), "hc": (0, 3, 2, 1), "hw": (0, 1, 2, 3)}


def np_triplet(x, p, no_spatial=False):
    """y = 1/3 sum of the three branches (eq. 2), or 1/2 of two without the (H, W) branch."""
    names = ("cw", "hc") if no_spatial else ("cw", "hc", "hw")
    outs = [np_branch(x, ROTATIONS[b], p[b], p[b + "_bn"])[0] for b in names]
    return sum(outs) / len(outs)


# ------------------------------------------------------------------------------ inputs


def _np(t):
    return None if t is None else t.detach().double().numpy()


def make_bn():
    bn = nn.BatchNorm2d(1, dtype=torch.float64).eval()
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.3)
    return bn, (_np(bn.running_mean), _np(bn.running_var), _np(bn.weight), _np(bn.bias), bn.eps)


def make_params(kernel=(7, 7), norms=True, kernels=None):
    """Weights (one per branch, (1, 2, k_a, k_b)) and BatchNorms, as torch and as NumPy."""
    kernels = kernels or {b: kernel for b in ROTATIONS}
    weights, t_norms, p = {}, {}, {}
    for b, k in kernels.items():
        weights[b] = torch.randn(1, 2, *k, dtype=torch.float64) / (2 * k[0] * k[1]) ** 0.5
        bn, np_bn = make_bn() if norms else (None, None)
        t_norms[b + "_norm"] = bn
        p[b], p[b + "_bn"] = _np(weights[b]), np_bn
    return (weights["cw"], weights["hc"], weights["hw"]), t_norms, p


def _close(got, want, tol=1e-10):
    np.testing.assert_allclose(_np(got), want, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------ formulas


@pytest.mark.parametrize("shape", SHAPES)
def test_triplet_attention_is_eq_1_to_3(shape):
    weights, norms, p = make_params()
    x = torch.randn(shape, dtype=torch.float64)
    _close(triplet_attention(x, *weights, **norms), np_triplet(_np(x), p))
    m = triplet_attention_map(x, *weights, **norms)
    assert m.shape == shape
    _close(x * m, np_triplet(_np(x), p))


@pytest.mark.parametrize("shape", SHAPES)
def test_maps_in_x_axes(shape):
    """Each branch's map, rotated back to x's axes: (N, C, 1, W), (N, C, H, 1), (N, 1, H, W)."""
    weights, norms, p = make_params()
    x = torch.randn(shape, dtype=torch.float64)
    a_cw, a_hc, a_hw = triplet_attention_maps(x, *weights, **norms)
    n, c, h, w = shape
    assert (a_cw.shape, a_hc.shape, a_hw.shape) == ((n, c, 1, w), (n, c, h, 1), (n, 1, h, w))
    for name, got in (("cw", a_cw), ("hc", a_hc), ("hw", a_hw)):
        axes = ROTATIONS[name]
        _, a = np_branch(_np(x), axes, p[name], p[name + "_bn"])  # (N, 1, plane) rotated
        _close(got, np.transpose(a, np.argsort(axes)))


def test_non_square_kernels_keep_the_paper_code_layout():
    """Kernels of different sizes per axis: the hc kernel is (k_H, k_C), as in the paper's code
    (a transposition bug would convolve C with k_H)."""
    kernels = {"cw": (3, 5), "hc": (5, 3), "hw": (1, 7)}
    weights, norms, p = make_params(kernels=kernels)
    x = torch.randn(2, 6, 9, 8, dtype=torch.float64)
    _close(triplet_attention(x, *weights, **norms), np_triplet(_np(x), p))


def test_no_spatial_and_no_norms():
    weights, _, p = make_params(kernel=(3, 3), norms=False)
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    got = triplet_attention(x, weights[0], weights[1], None)
    _close(got, np_triplet(_np(x), p, no_spatial=True))
    assert triplet_attention_maps(x, weights[0], weights[1], None)[2] is None


# ------------------------------------------------------------------------------ gradients


def _gap(x):
    return min(
        float((v[0] - v[1]).min()) for v in (x.topk(2, d).values.unbind(d) for d in (1, 2, 3))
    )


def test_triplet_gradcheck():
    weights, norms, _ = make_params(kernel=(3, 3))
    for _ in range(20):
        x = torch.randn(2, 4, 4, 5, dtype=torch.float64)
        if _gap(x) > KINK_MARGIN:
            break
    else:
        pytest.fail("no random input away from max-pool ties in 20 draws")
    inputs = [v.requires_grad_() for v in (x, *weights)]
    assert torch.autograd.gradcheck(lambda *a: triplet_attention(*a, **norms), inputs)


# ------------------------------------------------------------------------------ errors

X = torch.randn(2, 4, 5, 5, dtype=torch.float64)
W = torch.randn(1, 2, 7, 7, dtype=torch.float64)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: triplet_attention(X[0], W, W, W),
            ValueError,
            r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor",
        ),
        (lambda: triplet_attention(X.int(), W, W, W), TypeError, r"x: expected a floating"),
        (
            lambda: triplet_attention(X, torch.randn(1, 2, 4, 7), W, W),
            ValueError,
            r"cw_weight: expected shape \(1, 2, k, k\) with k odd, got \(1, 2, 4, 7\)",
        ),
        (
            lambda: triplet_attention(X, W, torch.randn(1, 3, 7, 7), W),
            ValueError,
            r"hc_weight: expected shape \(1, 2, k, k\) with k odd, got \(1, 3, 7, 7\)",
        ),
        (
            lambda: triplet_attention_map(X, W, W, torch.randn(2, 7, 7)),
            ValueError,
            r"hw_weight: expected shape \(1, 2, k, k\) with k odd, got \(2, 7, 7\)",
        ),
        (
            lambda: triplet_attention(X, W, None, W),
            TypeError,
            r"hc_weight: expected a torch.Tensor, got None",
        ),
        (
            lambda: triplet_attention_maps(X, W, W, W, hw_norm="bn"),
            TypeError,
            r"hw_norm: expected None or a callable .*got 'bn' \(str\)",
        ),
    ],
)
def test_errors_name_the_argument_the_expectation_and_the_value(call, error, message):
    with pytest.raises(error, match=message):
        call()
