"""Tests of the Global Context formulas (src/visattn/functional/gc_block.py) against a NumPy
formula written here from the paper (Cao et al., arXiv:1904.11492, eq. 5): alpha = softmax over
positions of W_k x, c = sum_j alpha_j x_j, t = W_v2 ReLU(LN(W_v1 c)), z = x + t, and the scale
fusion z = x * sigmoid(t); the average-pooling ablation (no W_k). New random inputs each run (the
seed is printed by tests/conftest.py), odd sizes and N = 1; float64 gradcheck at points away from
the ReLU corner; every validation error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import visattn.functional as vf
from visattn.functional import gc_context_weights, global_context, global_context_map

SHAPES = [(1, 5, 3, 7), (3, 7, 5, 1), (2, 9, 7, 5), (2, 16, 1, 1)]  # N = 1, odd, 1 x 1 maps
KINK_MARGIN = 1e-4


# ------------------------------------------------------------------------------ NumPy formula


def np_alpha(x, wk, bk):
    """alpha_j = exp(W_k x_j + b) / sum_m exp(W_k x_m + b), (N, H W)."""
    n, c, h, w = x.shape
    logits = np.einsum("ncj,c->nj", x.reshape(n, c, h * w), wk.reshape(c)) + (
        0 if bk is None else bk[0]
    )
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_transform(x, p, eps):
    """t = W_v2 ReLU(LN(W_v1 c + b_v1)) + b_v2, (N, C); LN over the C/r values (biased
    variance), with the affine (scale, shift) when given."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    if p["wk"] is None:
        context = flat.mean(2)
    else:
        context = np.einsum("ncj,nj->nc", flat, np_alpha(x, p["wk"], p["bk"]))
    w1, w2 = p["w1"].reshape(p["w1"].shape[0], c), p["w2"].reshape(c, -1)
    hid = context @ w1.T + (0 if p["b1"] is None else p["b1"])
    mu, var = hid.mean(1, keepdims=True), hid.var(1, keepdims=True)
    hid = (hid - mu) / np.sqrt(var + eps)
    if p["g"] is not None:
        hid = hid * p["g"]
    if p["beta"] is not None:
        hid = hid + p["beta"]
    return np.maximum(hid, 0) @ w2.T + (0 if p["b2"] is None else p["b2"])


def np_global_context(x, p, fusion="add", eps=1e-5):
    t = np_transform(x, p, eps)[:, :, None, None]
    return x + t if fusion == "add" else x * (1 / (1 + np.exp(-t)))


# ------------------------------------------------------------------------------ helpers

ORDER = ("wk", "bk", "w1", "b1", "g", "beta", "w2", "b2")


def _params(c, hidden, *, attn=True, bias=True, affine=True, conv=True, dtype=torch.float64):
    shape = (1, 1) if conv else ()
    p = {
        "wk": torch.randn(1, c, *shape, dtype=dtype) if attn else None,
        "bk": torch.randn(1, dtype=dtype) if attn and bias else None,
        "w1": torch.randn(hidden, c, *shape, dtype=dtype),
        "b1": torch.randn(hidden, dtype=dtype) if bias else None,
        "g": torch.rand(hidden, dtype=dtype) + 0.5 if affine else None,
        "beta": torch.randn(hidden, dtype=dtype) * 0.3 if affine else None,
        "w2": torch.randn(c, hidden, *shape, dtype=dtype),
        "b2": torch.randn(c, dtype=dtype) if bias else None,
    }
    return p


def _args(p):
    return tuple(p[k] for k in ORDER)


def _arrays(p):
    return {k: None if v is None else v.detach().double().numpy() for k, v in p.items()}


def _close(got, want, tol=1e-10):
    np.testing.assert_allclose(got.detach().double().numpy(), want, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------ the formula


@pytest.mark.parametrize("shape", SHAPES)
def test_context_weights_are_a_softmax_over_positions(shape):
    n, c, h, w = shape
    x = torch.randn(shape, dtype=torch.float64)
    wk, bk = torch.randn(1, c, 1, 1, dtype=torch.float64), torch.randn(1, dtype=torch.float64)
    got = gc_context_weights(x, wk, bk)
    assert got.shape == (n, 1, h, w)
    _close(got.reshape(n, h * w), np_alpha(x.numpy(), wk.numpy(), bk.numpy()))
    _close(got.sum((2, 3)), np.ones((n, 1)))
    _close(gc_context_weights(x, wk[:, :, 0, 0]), got.numpy())  # the bias cancels; 2-D W_k


@pytest.mark.parametrize("fusion", ["add", "scale"])
@pytest.mark.parametrize("shape", SHAPES)
def test_global_context_is_eq_5(shape, fusion):
    c = shape[1]
    p = _params(c, max(c // 3, 2))
    x = torch.randn(shape, dtype=torch.float64)
    want = np_global_context(x.numpy(), _arrays(p), fusion)
    _close(global_context(x, *_args(p), fusion=fusion), want)
    t = np_transform(x.numpy(), _arrays(p), 1e-5)[:, :, None, None]
    m = global_context_map(x, *_args(p), fusion=fusion)
    assert m.shape == (*shape[:2], 1, 1)
    _close(m, t if fusion == "add" else 1 / (1 + np.exp(-t)))


@pytest.mark.parametrize(
    "options",
    [
        {"attn": False},  # the average-pooling ablation: c = GAP(x)
        {"bias": False},
        {"affine": False},
        {"conv": False},  # weights as (out, in) matrices
        {"attn": False, "bias": False, "affine": False},
    ],
)
def test_global_context_options(options):
    p = _params(6, 3, **options)
    x = torch.randn(2, 6, 5, 3, dtype=torch.float64)
    for fusion in ("add", "scale"):
        want = np_global_context(x.numpy(), _arrays(p), fusion)
        _close(global_context(x, *_args(p), fusion=fusion), want)


def test_eps_is_the_layernorms():
    """eps enters LN's denominator: a large one shows in the output."""
    p = _params(8, 4)
    x = torch.randn(2, 8, 3, 5, dtype=torch.float64)
    for eps in (1e-6, 1e-5, 0.5):
        _close(
            global_context(x, *_args(p), eps=eps), np_global_context(x.numpy(), _arrays(p), eps=eps)
        )
    a, b = (global_context(x, *_args(p), eps=e) for e in (1e-5, 0.5))
    assert not torch.allclose(a, b)


def test_channels_last_input_gives_the_same_values():
    p = _params(6, 3)
    x = torch.randn(2, 6, 9, 7, dtype=torch.float64)
    xc = x.to(memory_format=torch.channels_last)
    for fusion in ("add", "scale"):
        got = global_context(xc, *_args(p), fusion=fusion)
        assert got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got, global_context(x, *_args(p), fusion=fusion))


# ------------------------------------------------------------------------------ gradients


@torch.no_grad()
def _relu_margin(x, p) -> float:
    """Distance of LN(W_v1 c) (the ReLU's input) from 0."""
    n, c, h, w = x.shape
    alpha = gc_context_weights(x, p["wk"], p["bk"]).reshape(n, h * w)
    context = torch.einsum("ncj,nj->nc", x.reshape(n, c, h * w), alpha)
    hid = torch.nn.functional.linear(context, p["w1"].reshape(-1, c), p["b1"])
    hid = torch.nn.functional.layer_norm(hid, hid.shape[1:], p["g"], p["beta"], 1e-5)
    return float(hid.abs().min())


@pytest.mark.parametrize("fusion", ["add", "scale"])
def test_gradcheck(fusion):
    for _ in range(20):
        p = _params(5, 3)
        x = torch.randn(2, 5, 4, 3, dtype=torch.float64)
        if _relu_margin(x, p) > KINK_MARGIN:
            break
    else:
        pytest.fail("no random input away from the kink in 20 draws")
    tensors = tuple(t.requires_grad_() for t in (x, *_args(p)))

    def block(*a):
        return global_context(*a, fusion=fusion)

    assert torch.autograd.gradcheck(block, tensors)
    assert torch.autograd.gradcheck(lambda v, wk: gc_context_weights(v, wk), tensors[:2])


# ------------------------------------------------------------------------------ errors


def _call(x=None, **changes):
    """global_context on valid arguments for C = 4, C/r = 2, with ``changes`` made."""
    x = torch.randn(1, 4, 3, 3) if x is None else x
    p = {k: (None if v is None else v.float()) for k, v in _params(4, 2).items()}
    p.update(changes)
    fusion, eps = p.pop("fusion", "add"), p.pop("eps", 1e-5)
    return global_context(x, *_args(p), fusion=fusion, eps=eps)


ERRORS = {
    "x_3d": (
        ValueError,
        r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor of shape \(4, 3, 3\)",
        lambda: _call(torch.randn(4, 3, 3)),
    ),
    "x_int": (
        TypeError,
        r"x: expected a floating point tensor, got dtype torch.int64",
        lambda: _call(torch.ones(1, 4, 3, 3, dtype=torch.long)),
    ),
    "wk_shape": (
        ValueError,
        r"conv_attn_weight: expected a weight of shape \(1, 4\[, 1, 1\]\) for x of shape "
        r"\(1, 4, 3, 3\), got shape \(2, 4, 1, 1\)",
        lambda: _call(wk=torch.randn(2, 4, 1, 1)),
    ),
    "wk_kernel": (
        ValueError,
        r"conv_attn_weight: expected a weight of shape \(1, 4\[, 1, 1\]\).*got shape \(1, 4, 3, 3\)",
        lambda: _call(wk=torch.randn(1, 4, 3, 3)),
    ),
    "bk_shape": (
        ValueError,
        r"conv_attn_bias: expected None or a tensor of shape \(1,\), got \(2,\)",
        lambda: _call(bk=torch.randn(2)),
    ),
    "bk_without_wk": (
        ValueError,
        r"conv_attn_bias: expected None without conv_attn_weight",
        lambda: _call(wk=None),
    ),
    "w1_missing": (
        TypeError,
        r"fc1_weight: expected a torch.Tensor, got None",
        lambda: _call(w1=None),
    ),
    "w1_shape": (
        ValueError,
        r"fc1_weight: expected a weight of shape \(hidden, 4\[, 1, 1\]\) for x of shape "
        r"\(1, 4, 3, 3\), got shape \(2, 3, 1, 1\)",
        lambda: _call(w1=torch.randn(2, 3, 1, 1)),
    ),
    "w2_shape": (
        ValueError,
        r"fc2_weight: expected a weight of shape \(4, 2\[, 1, 1\]\).*got shape \(4, 3, 1, 1\)",
        lambda: _call(w2=torch.randn(4, 3, 1, 1)),
    ),
    "norm_weight": (
        ValueError,
        r"norm_weight: expected None or a tensor of shape \(2,\), got \(2, 1, 1\)",
        lambda: _call(g=torch.randn(2, 1, 1)),
    ),
    "norm_bias": (
        ValueError,
        r"norm_bias: expected None or a tensor of shape \(2,\), got \(4,\)",
        lambda: _call(beta=torch.randn(4)),
    ),
    "fusion": (
        ValueError,
        r"fusion: expected one of 'add', 'scale', got 'mul'",
        lambda: _call(fusion="mul"),
    ),
    "eps": (
        ValueError,
        r"eps: expected a positive number, got 0",
        lambda: _call(eps=0),
    ),
    "weights_x_3d": (
        ValueError,
        r"x: expected a 4-D tensor \(N, C, H, W\), got a 2-D tensor",
        lambda: gc_context_weights(torch.randn(4, 3), torch.randn(1, 4, 1, 1)),
    ),
    "weights_wk": (
        ValueError,
        r"conv_attn_weight: expected a weight of shape \(1, 4\[, 1, 1\]\)",
        lambda: gc_context_weights(torch.randn(1, 4, 3, 3), torch.randn(1, 5)),
    ),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_errors(name):
    exception, match, call = ERRORS[name]
    with pytest.raises(exception, match=match):
        call()


def test_exported():
    for name in ("gc_context_weights", "global_context", "global_context_map"):
        assert name in vf.__all__ and getattr(vf, name) is globals()[name]
