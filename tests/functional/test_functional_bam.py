"""Tests of BAM's formula functions (src/visattn/functional/bam_block.py) against a NumPy formula
written here from the paper (Park et al., BMVC 2018, arXiv:1807.06514, eq. 1-4) and from the
official code's layout (BatchNorm on the MLP's hidden layer, none after f_3, sigma(M_c * M_s)).
New random inputs each run (the seed is printed by tests/conftest.py), odd sizes and N = 1;
float64 gradcheck at points away from the ReLU corners; every validation error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from visattn.functional import (
    bam,
    bam_attention,
    bam_channel_attention,
    bam_spatial_attention,
)

#: Smallest distance of a ReLU's input from 0 accepted for a gradcheck point (finite differences
#: of 1e-6 move it by a few 1e-6 at most), as in tests/layers/layer_tester.py.
KINK_MARGIN = 1e-4

SHAPES = [(1, 8, 3, 7), (3, 12, 5, 1), (2, 16, 9, 11)]  # (N, C, H, W): N = 1, odd, non-square


# ------------------------------------------------------------------------------ NumPy formulas


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def np_norm(v, bn):
    """Evaluation-mode BatchNorm over axis 1: bn = (mean, var, gamma, beta, eps)."""
    if bn is None:
        return v
    mean, var, gamma, beta, eps = bn
    shape = (1, -1) + (1,) * (v.ndim - 2)
    return (v - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * gamma.reshape(
        shape
    ) + beta.reshape(shape)


def np_conv(x, w, b, dilation):
    """Zero-padded cross-correlation (as nn.Conv2d), k x k with dilation d, padding d (k // 2)."""
    n, _, h, wd = x.shape
    k = w.shape[-1]
    r = dilation * (k // 2)
    padded = np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)))
    out = np.zeros((n, w.shape[0], h, wd)) + (0 if b is None else b[None, :, None, None])
    for i in range(k):
        for j in range(k):
            a, c = i * dilation, j * dilation
            out += np.einsum("nihw,oi->nohw", padded[:, :, a : a + h, c : c + wd], w[:, :, i, j])
    return out


def np_channel_hidden(x, w1, b1, hidden_bn=None):
    """W_1 AvgPool(F) + b_1 (the paper's W_0, b_0), then the official code's hidden BN."""
    z = x.mean((2, 3))
    return np_norm(z @ w1.reshape(w1.shape[0], -1).T + (0 if b1 is None else b1), hidden_bn)


def np_channel(x, w1, b1, w2, b2, hidden_bn=None, bn=None):
    """M_c(F) = BN(W_2 ReLU(W_1 AvgPool(F) + b_1) + b_2) (eq. 3), (N, C, 1, 1)."""
    h = np.maximum(np_channel_hidden(x, w1, b1, hidden_bn), 0)
    out = h @ w2.reshape(w2.shape[0], -1).T + (0 if b2 is None else b2)
    return np_norm(out, bn)[:, :, None, None]


def np_spatial_pre_relu(x, weights, biases, bns, dilation):
    """The inputs of the spatial branch's ReLUs, then M_s(F) (eq. 4), as a list."""
    values, y = [], x
    last = len(weights) - 1
    for i, (w, b, bn) in enumerate(zip(weights, biases, bns, strict=True)):
        y = np_norm(np_conv(y, w, b, dilation if 0 < i < last else 1), bn)
        values.append(y)
        if i < last:
            y = np.maximum(y, 0)
    return values


def np_spatial(x, weights, biases, bns, dilation):
    return np_spatial_pre_relu(x, weights, biases, bns, dilation)[-1]


def np_bam_factor(x, p, combine="sum"):
    """1 + sigma(M_c + M_s) (eq. 1-2), or 1 + sigma(M_c * M_s) (the official code)."""
    m_c = np_channel(x, *p["mlp"], p["hidden_bn"], p["channel_bn"])
    m_s = np_spatial(x, p["weights"], p["biases"], p["spatial_bns"], p["dilation"])
    return 1 + sigmoid(m_c + m_s if combine == "sum" else m_c * m_s)


def np_bam(x, p, combine="sum"):
    """F' = F + F * M(F) (eq. 1)."""
    return x + x * (np_bam_factor(x, p, combine) - 1)


# ------------------------------------------------------------------------------ inputs


def _np(t):
    return None if t is None else t.detach().double().numpy()


def _batchnorm(cls, size):
    """An evaluation-mode BatchNorm with statistics and affine values away from the identity, and
    its NumPy (mean, var, gamma, beta, eps)."""
    bn = cls(size, dtype=torch.float64).eval()
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.3)
    return bn, (_np(bn.running_mean), _np(bn.running_var), _np(bn.weight), _np(bn.bias), bn.eps)


def make_params(c, r, *, dilated=2, dilation=4, variant="paper", bias=True, conv_mlp=False):
    """Random float64 weights of the two branches, as torch tensors / modules (``t``) and as
    NumPy arrays (``p``)."""
    hidden = c // r

    def rand(*shape):  # a weight (out, in, ...) scaled by 1 / sqrt(in), so values stay O(1)
        return torch.randn(*shape, dtype=torch.float64) / shape[1] ** 0.5

    shape_1 = (1, 1) if conv_mlp else ()
    w1, w2 = rand(hidden, c, *shape_1), rand(c, hidden, *shape_1)
    b1 = torch.randn(hidden, dtype=torch.float64) * 0.3 if bias else None
    b2 = torch.randn(c, dtype=torch.float64) * 0.3 if bias else None
    shapes = [(hidden, c, 1, 1), *[(hidden, hidden, 3, 3)] * dilated, (1, hidden, 1, 1)]
    weights = tuple(rand(*s) for s in shapes)
    biases = tuple(torch.randn(s[0], dtype=torch.float64) * 0.3 if bias else None for s in shapes)
    hidden_bn = _batchnorm(nn.BatchNorm1d, hidden) if variant == "official" else (None, None)
    channel_bn = _batchnorm(nn.BatchNorm1d, c) if variant == "paper" else (None, None)
    spatial = [_batchnorm(nn.BatchNorm2d, s[0]) for s in shapes[:-1]]
    spatial.append(_batchnorm(nn.BatchNorm2d, 1) if variant == "paper" else (None, None))
    t = {
        "args": (w1, b1, w2, b2, weights, biases),
        "kwargs": {
            "dilation": dilation,
            "hidden_norm": hidden_bn[0],
            "channel_norm": channel_bn[0],
            "spatial_norms": tuple(m for m, _ in spatial),
            "combine": "sum" if variant == "paper" else "product",
        },
    }
    p = {
        "mlp": tuple(map(_np, (w1, b1, w2, b2))),
        "hidden_bn": hidden_bn[1],
        "channel_bn": channel_bn[1],
        "weights": [_np(w) for w in weights],
        "biases": [_np(b) for b in biases],
        "spatial_bns": [bn for _, bn in spatial],
        "dilation": dilation,
    }
    return t, p


def _close(got, want, tol=1e-10):
    np.testing.assert_allclose(_np(got), want, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------ formulas


@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("shape", SHAPES)
def test_bam_is_eq_1_to_4(variant, shape):
    c = shape[1]
    t, p = make_params(c, 4, variant=variant)
    x = torch.randn(shape, dtype=torch.float64)
    combine = t["kwargs"]["combine"]
    _close(bam(x, *t["args"], **t["kwargs"]), np_bam(_np(x), p, combine))
    _close(bam_attention(x, *t["args"], **t["kwargs"]), np_bam_factor(_np(x), p, combine))
    assert bam_attention(x, *t["args"], **t["kwargs"]).shape == shape


@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("shape", SHAPES)
def test_branches_are_eq_3_and_4(variant, shape):
    c = shape[1]
    t, p = make_params(c, 4, variant=variant)
    x = torch.randn(shape, dtype=torch.float64)
    w1, b1, w2, b2, weights, biases = t["args"]
    kw = t["kwargs"]
    m_c = bam_channel_attention(
        x, w1, b1, w2, b2, hidden_norm=kw["hidden_norm"], norm=kw["channel_norm"]
    )
    assert m_c.shape == (shape[0], c, 1, 1)
    _close(m_c, np_channel(_np(x), *p["mlp"], p["hidden_bn"], p["channel_bn"]))
    m_s = bam_spatial_attention(
        x, weights, biases, dilation=kw["dilation"], spatial_norms=kw["spatial_norms"]
    )
    assert m_s.shape == (shape[0], 1, *shape[2:])
    _close(m_s, np_spatial(_np(x), p["weights"], p["biases"], p["spatial_bns"], p["dilation"]))


@pytest.mark.parametrize(
    ("dilated", "dilation"), [(0, 4), (1, 1), (3, 2)]
)  # any number of dilated convolutions, any d
def test_spatial_branch_depth_and_dilation(dilated, dilation):
    t, p = make_params(12, 3, dilated=dilated, dilation=dilation, bias=False)
    x = torch.randn(2, 12, 6, 9, dtype=torch.float64)
    _, _, _, _, weights, biases = t["args"]
    got = bam_spatial_attention(x, weights, biases, dilation=dilation)  # no norms
    _close(got, np_spatial(_np(x), p["weights"], p["biases"], [None] * len(weights), dilation))


def test_mlp_weights_as_1x1_convolutions():
    t, p = make_params(8, 2, conv_mlp=True)
    x = torch.randn(2, 8, 5, 3, dtype=torch.float64)
    _close(bam(x, *t["args"], **t["kwargs"]), np_bam(_np(x), p))


def test_norms_run_as_given_training_mode_uses_the_batch():
    """The BatchNorms are applied as they are: in training mode, with the batch's statistics."""
    t, _ = make_params(8, 2)
    kw = t["kwargs"]
    x = torch.randn(4, 8, 5, 5, dtype=torch.float64)
    w1, b1, w2, b2, _, _ = t["args"]
    bn = kw["channel_norm"].train()
    got = bam_channel_attention(x, w1, b1, w2, b2, norm=bn)[:, :, 0, 0]
    mlp = bam_channel_attention(x, w1, b1, w2, b2)[:, :, 0, 0]
    mean, var = mlp.mean(0), mlp.var(0, unbiased=False)
    want = (mlp - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------ gradients


def _margin(x, p):
    """Distance of the ReLUs' inputs from 0 (channel hidden layer, spatial f_0 ... f_{last-1})."""
    xs = _np(x)
    hidden = np_channel_hidden(xs, p["mlp"][0], p["mlp"][1], p["hidden_bn"])
    pre = np_spatial_pre_relu(xs, p["weights"], p["biases"], p["spatial_bns"], p["dilation"])
    return min(np.abs(v).min() for v in [hidden, *pre[:-1]])


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_bam_gradcheck(variant):
    t, p = make_params(8, 2, dilation=2, variant=variant)
    for _ in range(20):
        x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
        if _margin(x, p) > KINK_MARGIN:
            break
    else:
        pytest.fail("no random input away from the ReLU corners in 20 draws")
    w1, b1, w2, b2, weights, biases = t["args"]
    kw = t["kwargs"]

    def block(x, w1, b1, w2, b2, *spatial):
        ws, bs = spatial[: len(weights)], spatial[len(weights) :]
        return bam(x, w1, b1, w2, b2, ws, bs, **kw)

    inputs = [v.requires_grad_() for v in (x, w1, b1, w2, b2, *weights, *biases)]
    assert torch.autograd.gradcheck(block, inputs)


# ------------------------------------------------------------------------------ errors


def _args(c=8):
    t, _ = make_params(c, 2)
    return t["args"]


def _with(index, value, c=8):
    args = list(_args(c))
    args[index] = value
    return args


def _spatial_with(position, value):
    args = list(_args())
    weights = list(args[4])
    weights[position] = value
    args[4] = tuple(weights)
    return args


X = torch.randn(2, 8, 5, 5, dtype=torch.float64)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: bam(X[0], *_args()), ValueError, r"x: expected a 4-D tensor \(N, C, H, W\)"),
        (lambda: bam(X.long(), *_args()), TypeError, r"x: expected a floating point tensor"),
        (
            lambda: bam(X, *_with(0, torch.randn(4, 6, dtype=torch.float64))),
            ValueError,
            r"w1: expected a weight of shape \(hidden, 8\[, 1, 1\]\) .*got shape \(4, 6\)",
        ),
        (
            lambda: bam(X, *_with(3, torch.randn(5, dtype=torch.float64))),
            ValueError,
            r"b2: expected None or a tensor of shape \(8,\), got \(5,\)",
        ),
        (
            lambda: bam(X, *_with(4, torch.randn(4, 8, 1, 1))),
            ValueError,
            r"spatial_weights: expected a tuple of at least 2 convolution weights",
        ),
        (
            lambda: bam(X, *_spatial_with(1, torch.randn(4, 4, 5, 5, dtype=torch.float64))),
            ValueError,
            r"spatial_weights\[1\]: expected shape \(4, 4, 3, 3\) .*got \(4, 4, 5, 5\)",
        ),
        (
            lambda: bam(X, *_spatial_with(0, torch.randn(4, 6, 1, 1, dtype=torch.float64))),
            ValueError,
            r"spatial_weights\[0\]: expected shape \(R, 8, 1, 1\) .*got \(4, 6, 1, 1\)",
        ),
        (
            lambda: bam(X, *_spatial_with(3, torch.randn(2, 4, 1, 1, dtype=torch.float64))),
            ValueError,
            r"spatial_weights\[3\]: expected shape \(1, 4, 1, 1\) .*got \(2, 4, 1, 1\)",
        ),
        (
            lambda: bam(X, *_with(5, (None, None))),
            ValueError,
            r"spatial_biases: expected a tuple of 4 entries .*got \(None, None\)",
        ),
        (
            lambda: bam(X, *_args(), spatial_norms=(None,)),
            ValueError,
            r"spatial_norms: expected a tuple of 4 entries",
        ),
        (
            lambda: bam(X, *_args(), spatial_norms=(None, None, None, "bn")),
            TypeError,
            r"spatial_norms\[3\]: expected None or a callable .*got 'bn' \(str\)",
        ),
        (
            lambda: bam(X, *_args(), hidden_norm=3),
            TypeError,
            r"hidden_norm: expected None or a callable .*got 3 \(int\)",
        ),
        (
            lambda: bam(X, *_args(), dilation=0),
            ValueError,
            r"dilation: expected an int >= 1, got 0",
        ),
        (
            lambda: bam_attention(X, *_args(), combine="mean"),
            ValueError,
            r"combine: expected one of 'sum', 'product', got 'mean'",
        ),
        (
            lambda: bam_channel_attention(X, *_args()[:4], norm="bn"),
            TypeError,
            r"norm: expected None or a callable",
        ),
        (
            lambda: bam_spatial_attention(X, *_args()[4:], dilation=1.5),
            TypeError,
            r"dilation: expected an int, got 1.5 \(float\)",
        ),
    ],
)
def test_errors_name_the_argument_the_expectation_and_the_value(call, error, message):
    with pytest.raises(error, match=message):
        call()
