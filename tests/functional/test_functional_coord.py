"""Tests of Coordinate Attention's formula functions (src/visattn/functional/coord_block.py)
against a NumPy formula written here from the paper (Hou et al., CVPR 2021, arXiv:2103.02907,
eq. 4-9). New random inputs each run (the seed is printed by tests/conftest.py), odd sizes and
N = 1; float64 gradcheck away from h-swish's corners at -3 and 3; every validation error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from visattn.functional import (
    ACTIVATIONS,
    GATES,
    coord_attention,
    coord_attention_gates,
    coord_attention_map,
)

#: Smallest distance of h-swish's input from its corners (-3, 3) accepted for a gradcheck point,
#: as KINK_MARGIN of tests/layers/layer_tester.py.
KINK_MARGIN = 1e-4

SHAPES = [(1, 8, 3, 7), (3, 12, 5, 1), (2, 16, 9, 11), (2, 6, 1, 1)]  # N = 1, odd, 1 x 1

# ------------------------------------------------------------------------------ NumPy formulas

NP_ACTS = {
    "hard_swish": lambda v: v * np.clip(v + 3, 0, 6) / 6,  # x * ReLU6(x + 3) / 6
    "relu": lambda v: np.maximum(v, 0),
    "silu": lambda v: v / (1 + np.exp(-v)),
}
NP_GATES = {
    "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    "hard_sigmoid": lambda v: np.clip((v + 3) / 6, 0, 1),
    "tanh": np.tanh,
    "relu": lambda v: np.maximum(v, 0),
}


def _lin(w, b, v):
    """A 1 x 1 convolution on (N, C_in, L): (N, C_out, L)."""
    return np.einsum("oi,nil->nol", w.reshape(w.shape[0], -1), v) + (
        0 if b is None else b[None, :, None]
    )


def np_pre_act(x, p, bn=None):
    """BN(F_1([z^h, z^w])) (eq. 4-6 before delta), (N, C/r, H + W)."""
    z_h, z_w = x.mean(3), x.mean(2)  # eq. 4: (N, C, H); eq. 5: (N, C, W)
    f = _lin(p["w1"], p["b1"], np.concatenate([z_h, z_w], axis=2))
    if bn is not None:
        mean, var, gamma, beta, eps = bn
        f = (f - mean[:, None]) / np.sqrt(var[:, None] + eps) * gamma[:, None] + beta[:, None]
    return f


def np_gates(x, p, bn=None, act="hard_swish", gate="sigmoid"):
    """g^h (N, C, H, 1) and g^w (N, C, 1, W) (eq. 6-8)."""
    h = x.shape[2]
    f = NP_ACTS[act](np_pre_act(x, p, bn))
    g_h = NP_GATES[gate](_lin(p["wh"], p["bh"], f[:, :, :h]))
    g_w = NP_GATES[gate](_lin(p["ww"], p["bw"], f[:, :, h:]))
    return g_h[:, :, :, None], g_w[:, :, None, :]


def np_coord(x, p, **kw):
    """y_c(i, j) = x_c(i, j) g^h_c(i) g^w_c(j) (eq. 9)."""
    g_h, g_w = np_gates(x, p, **kw)
    return x * g_h * g_w


# ------------------------------------------------------------------------------ inputs


def _np(t):
    return None if t is None else t.detach().double().numpy()


def make_params(c, hidden, *, bias=True, conv=True):
    shape = (1, 1) if conv else ()

    def rand(*s):  # (out, in): scaled by 1 / sqrt(in)
        return torch.randn(*s, *shape, dtype=torch.float64) / s[1] ** 0.5

    def vec(n):
        return torch.randn(n, dtype=torch.float64) * 0.3 if bias else None

    args = (rand(hidden, c), vec(hidden), rand(c, hidden), vec(c), rand(c, hidden), vec(c))
    p = dict(zip(("w1", "b1", "wh", "bh", "ww", "bw"), map(_np, args), strict=True))
    return args, p


def make_bn(hidden):
    bn = nn.BatchNorm2d(hidden, dtype=torch.float64).eval()
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.3)
    return bn, (_np(bn.running_mean), _np(bn.running_var), _np(bn.weight), _np(bn.bias), bn.eps)


def _close(got, want, tol=1e-10):
    np.testing.assert_allclose(_np(got), want, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------ formulas


@pytest.mark.parametrize("shape", SHAPES)
def test_coord_attention_is_eq_4_to_9(shape):
    c = shape[1]
    args, p = make_params(c, 4)
    bn, np_bn = make_bn(4)
    x = torch.randn(shape, dtype=torch.float64)
    _close(coord_attention(x, *args, norm=bn), np_coord(_np(x), p, bn=np_bn))
    g_h, g_w = coord_attention_gates(x, *args, norm=bn)
    want_h, want_w = np_gates(_np(x), p, bn=np_bn)
    assert g_h.shape == (shape[0], c, shape[2], 1) and g_w.shape == (shape[0], c, 1, shape[3])
    _close(g_h, want_h)
    _close(g_w, want_w)
    _close(coord_attention_map(x, *args, norm=bn), want_h * want_w)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("gate", list(GATES))
def test_every_activation_and_gate(act, gate):
    args, p = make_params(6, 3, bias=False, conv=False)  # (out, in) weights, no biases
    x = torch.randn(2, 6, 5, 3, dtype=torch.float64) * 3
    _close(coord_attention(x, *args, act=act, gate=gate), np_coord(_np(x), p, act=act, gate=gate))


def test_norm_in_training_mode_uses_the_concatenated_strips():
    """The BatchNorm sees F_1's output over the N (H + W) positions of both strips (the paper's
    code): batch statistics of the concatenation, not of each strip."""
    args, p = make_params(6, 3)
    bn = nn.BatchNorm2d(3, dtype=torch.float64).train()
    x = torch.randn(2, 6, 4, 7, dtype=torch.float64)
    f = np_pre_act(_np(x), p)  # (N, C/r, H + W)
    mean, var = f.mean((0, 2)), f.var((0, 2))
    stats = (mean, var, np.ones(3), np.zeros(3), bn.eps)
    _close(coord_attention(x, *args, norm=bn), np_coord(_np(x), p, bn=stats))


# ------------------------------------------------------------------------------ gradients


def test_coord_attention_gradcheck():
    args, p = make_params(8, 4)
    for _ in range(20):
        x = torch.randn(2, 8, 4, 5, dtype=torch.float64)
        if np.abs(np.abs(np_pre_act(_np(x), p)) - 3).min() > KINK_MARGIN:
            break
    else:
        pytest.fail("no random input away from h-swish's corners in 20 draws")
    inputs = [v.requires_grad_() for v in (x, *args)]
    assert torch.autograd.gradcheck(coord_attention, inputs)
    assert torch.autograd.gradcheck(lambda *a: coord_attention(*a, act="silu"), inputs)


# ------------------------------------------------------------------------------ errors

X = torch.randn(2, 8, 5, 5, dtype=torch.float64)


def _with(index, value):
    args = list(make_params(8, 4)[0])
    args[index] = value
    return args


ARGS = make_params(8, 4)[0]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: coord_attention(X[0], *ARGS),
            ValueError,
            r"x: expected a 4-D tensor \(N, C, H, W\)",
        ),
        (lambda: coord_attention(X.int(), *ARGS), TypeError, r"x: expected a floating point"),
        (
            lambda: coord_attention(X, *_with(0, torch.randn(4, 6, 1, 1))),
            ValueError,
            r"conv1_weight: expected a weight of shape \(hidden, 8\[, 1, 1\]\) .*got shape "
            r"\(4, 6, 1, 1\)",
        ),
        (
            lambda: coord_attention(X, *_with(1, torch.randn(3))),
            ValueError,
            r"conv1_bias: expected None or a tensor of shape \(4,\), got \(3,\)",
        ),
        (
            lambda: coord_attention(X, *_with(2, torch.randn(8, 3, 1, 1))),
            ValueError,
            r"conv_h_weight: expected a weight of shape \(8, 4\[, 1, 1\]\) .*got shape "
            r"\(8, 3, 1, 1\)",
        ),
        (
            lambda: coord_attention(X, *_with(4, torch.randn(8, 4, 3, 3))),
            ValueError,
            r"conv_w_weight: expected a weight of shape \(8, 4\[, 1, 1\]\)",
        ),
        (
            lambda: coord_attention(X, *_with(5, torch.randn(4))),
            ValueError,
            r"conv_w_bias: expected None or a tensor of shape \(8,\), got \(4,\)",
        ),
        (
            lambda: coord_attention(X, *_with(2, "w")),
            TypeError,
            r"conv_h_weight: expected a torch.Tensor, got 'w' \(str\)",
        ),
        (
            lambda: coord_attention(X, *ARGS, norm="bn"),
            TypeError,
            r"norm: expected None or a callable .*got 'bn' \(str\)",
        ),
        (
            lambda: coord_attention_map(X, *ARGS, act="gelu"),
            ValueError,
            r"act: expected one of 'hard_swish', 'relu', 'silu', got 'gelu'",
        ),
        (
            lambda: coord_attention_gates(X, *ARGS, gate="softmax"),
            ValueError,
            r"gate: expected one of 'sigmoid', .*got 'softmax'",
        ),
    ],
)
def test_errors_name_the_argument_the_expectation_and_the_value(call, error, message):
    with pytest.raises(error, match=message):
        call()
