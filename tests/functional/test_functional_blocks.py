"""Tests of the SE / CBAM formula functions (functional/attention.py, se_block.py, cbam_block.py)
against NumPy formulas written here: SE eq. 2-4 (arXiv:1709.01507), CBAM eq. 1-3 and the
arrangements of its Table 3 (arXiv:1807.06521). New random inputs each run (the seed is printed
by tests/conftest.py), odd sizes and N = 1; float64 gradcheck where the formula is smooth.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import visattn.functional as vf
from visattn import _modes
from visattn.functional import (
    GATES,
    ORDERS,
    apply_gate,
    bottleneck_mlp,
    cbam_arrange,
    cbam_reference,
    channel_attention_map,
    excitation,
    spatial_attention_map,
    squeeze_excite,
    squeeze_excite_reference,
)
from visattn.layers import CBAM

SHAPES = [(1, 5, 3, 7), (3, 7, 5, 1), (2, 9, 7, 5)]  # (N, C, H, W): N = 1, odd, non-square

# ------------------------------------------------------------------------------ NumPy formulas

NP_GATES = {
    "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    "hard_sigmoid": lambda v: np.clip((v + 3) / 6, 0, 1),
    "tanh": np.tanh,
    "relu": lambda v: np.maximum(v, 0),
}


def _np(t):
    return None if t is None else t.detach().double().numpy()


def np_mlp(z, w1, b1, w2, b2):
    """W_2 ReLU(W_1 z + b_1) + b_2 for z (N, C), weights (out, in) and biases or None."""
    h = z @ w1.reshape(w1.shape[0], -1).T + (0 if b1 is None else b1)
    return np.maximum(h, 0) @ w2.reshape(w2.shape[0], -1).T + (0 if b2 is None else b2)


def np_pool(x, mode, axis):
    return x.mean(axis=axis) if mode == "avg" else x.max(axis=axis)


def np_channel_map(x, w1, b1, w2, b2, pool):
    """M_c(F) = sigma(sum_k MLP(pool_k(F))), (N, C, 1, 1)."""
    logits = sum(np_mlp(np_pool(x, p, (2, 3)), w1, b1, w2, b2) for p in pool)
    return NP_GATES["sigmoid"](logits)[:, :, None, None]


def np_spatial_map(x, weight, bias, pool, bn=None):
    """M_s(F) = sigma(f([pool_c(F) ...])): zero-padded cross-correlation, then BN, (N, 1, H, W)."""
    p = np.stack([np_pool(x, m, 1) for m in pool], axis=1)
    n, _, h, w = p.shape
    kh, kw = weight.shape[2:]
    padded = np.pad(p, ((0, 0), (0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)))
    out = np.zeros((n, 1, h, w)) + (0 if bias is None else bias[0])
    for i in range(kh):
        for j in range(kw):
            out[:, 0] += np.einsum(
                "nkhw,k->nhw", padded[:, :, i : i + h, j : j + w], weight[0, :, i, j]
            )
    if bn is not None:
        mean, var, gamma, beta, eps = bn
        out = gamma * (out - mean) / np.sqrt(var + eps) + beta
    return NP_GATES["sigmoid"](out)


def np_arrange(x, channel_map, spatial_map, order):
    if order == "parallel":
        return x * channel_map(x) * spatial_map(x)
    first, second = (
        (channel_map, spatial_map) if order == "channel_first" else (spatial_map, channel_map)
    )
    f1 = x * first(x)
    return f1 * second(f1)


def _mlp_params(c, hidden, *, bias=True, conv=True, dtype=torch.float32):
    shape = (1, 1) if conv else ()
    w1 = torch.randn(hidden, c, *shape, dtype=dtype)
    w2 = torch.randn(c, hidden, *shape, dtype=dtype)
    b1 = torch.randn(hidden, dtype=dtype) if bias else None
    b2 = torch.randn(c, dtype=dtype) if bias else None
    return w1, b1, w2, b2


def _close(got, want, tol=1e-5):
    np.testing.assert_allclose(_np(got), want, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------ gates and MLP


@pytest.mark.parametrize("name", list(GATES))
def test_apply_gate_every_gate(name):
    v = torch.randn(4, 7, dtype=torch.float64) * 4
    _close(apply_gate(name, v), NP_GATES[name](_np(v)), 1e-12)
    assert tuple(GATES) == _modes.GATES and GATES is _modes.GATE_FUNCTIONS


@pytest.mark.parametrize("conv", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_bottleneck_mlp(conv, bias):
    params = _mlp_params(7, 3, bias=bias, conv=conv, dtype=torch.float64)
    z = torch.randn(3, 7, dtype=torch.float64)
    want = np_mlp(_np(z), *map(_np, params))
    _close(bottleneck_mlp(z, *params), want, 1e-12)
    _close(bottleneck_mlp(z[:, :, None, None], *params)[:, :, 0, 0], want, 1e-12)


# ------------------------------------------------------------------------------ SE


@pytest.mark.parametrize("gate", list(GATES))
@pytest.mark.parametrize("shape", SHAPES)
def test_excitation(gate, shape):
    n, c = shape[:2]
    params = _mlp_params(c, max(c // 3, 1))
    z = torch.randn(n, c, 1, 1)
    want = NP_GATES[gate](np_mlp(_np(z)[:, :, 0, 0], *map(_np, params)))
    got = excitation(z, *params, gate=gate)
    assert got.shape == (n, c, 1, 1)
    _close(got[:, :, 0, 0], want)
    _close(excitation(z.flatten(1), *params, gate=gate), want)


@pytest.mark.parametrize("squeeze", ["avg", "max"])
@pytest.mark.parametrize("shape", SHAPES)
def test_squeeze_excite_reference_is_eq_2_to_4(squeeze, shape):
    x = torch.randn(shape)
    params = _mlp_params(shape[1], 2)
    s = NP_GATES["tanh"](np_mlp(np_pool(_np(x), squeeze, (2, 3)), *map(_np, params)))
    got = squeeze_excite_reference(x, *params, squeeze=squeeze, gate="tanh")
    _close(got, _np(x) * s[:, :, None, None])


def test_excitation_gradcheck():
    params = [p.requires_grad_() for p in _mlp_params(5, 3, dtype=torch.float64)]
    z = torch.randn(2, 5, 1, 1, dtype=torch.float64, requires_grad=True)
    for gate in ("sigmoid", "tanh"):
        assert torch.autograd.gradcheck(lambda *a, g=gate: excitation(*a, gate=g), (z, *params))


# ------------------------------------------------------------------------------ CBAM


@pytest.mark.parametrize("pool", [("avg",), ("max",), ("avg", "max"), ("max", "avg")])
@pytest.mark.parametrize("shape", SHAPES)
def test_channel_attention_map_is_eq_2(pool, shape):
    x = torch.randn(shape)
    params = _mlp_params(shape[1], 2, bias=len(pool) > 1)
    got = channel_attention_map(x, *params, pool=pool)
    assert got.shape == (shape[0], shape[1], 1, 1)
    _close(got, np_channel_map(_np(x), *map(_np, params), pool))


@pytest.mark.parametrize("kernel", [(1, 1), (3, 3), (7, 7), (3, 5)])
@pytest.mark.parametrize("pool", [("avg", "max"), ("max", "avg"), ("max",)])
@pytest.mark.parametrize("shape", SHAPES)
def test_spatial_attention_map_is_eq_3(kernel, pool, shape):
    x = torch.randn(shape)
    weight, bias = torch.randn(1, len(pool), *kernel), torch.randn(1)
    got = spatial_attention_map(x, weight, bias, pool=pool)
    assert got.shape == (shape[0], 1, *shape[2:])
    _close(got, np_spatial_map(_np(x), _np(weight), _np(bias), pool))


def test_spatial_attention_map_with_batchnorm():
    x = torch.randn(2, 6, 5, 7)
    weight = torch.randn(1, 2, 3, 3)
    bn = nn.BatchNorm2d(1).eval()
    with torch.no_grad():
        (
            bn.running_mean.fill_(0.3),
            bn.running_var.fill_(2.0),
            bn.weight.fill_(1.5),
            bn.bias.fill_(-0.2),
        )
    got = spatial_attention_map(x, weight, None, norm=bn)
    _close(
        got,
        np_spatial_map(_np(x), _np(weight), None, ("avg", "max"), (0.3, 2.0, 1.5, -0.2, bn.eps)),
    )


def _np_maps(x, params, weight, bias, pool=("avg", "max")):
    def channel(f):
        return np_channel_map(f, *map(_np, params), pool)

    def spatial(f):
        return np_spatial_map(f, _np(weight), _np(bias), pool)

    return channel, spatial


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("shape", SHAPES)
def test_cbam_arrange_every_order(order, shape):
    x = torch.randn(shape)
    params, weight, bias = _mlp_params(shape[1], 2), torch.randn(1, 2, 3, 3), torch.randn(1)

    def channel(f):
        return channel_attention_map(f, *params)

    def spatial(f):
        return spatial_attention_map(f, weight, bias)

    y, m_c, m_s = cbam_arrange(x, channel, spatial, order, return_maps=True)
    np_c, np_s = _np_maps(x, params, weight, bias)
    _close(y, np_arrange(_np(x), np_c, np_s, order))
    torch.testing.assert_close(cbam_arrange(x, channel, spatial, order), y)
    applied_to = _np(x) if order != "spatial_first" else _np(x) * _np(m_s)
    _close(m_c, np_c(applied_to))
    applied_to = _np(x) if order != "channel_first" else _np(x) * _np(m_c)
    _close(m_s, np_s(applied_to))
    if order == "channel_first":
        _close(cbam_reference(x, *params, weight, bias), np_arrange(_np(x), np_c, np_s, order))


@pytest.mark.parametrize("order", ORDERS)
def test_cbam_layer_orders_are_cbam_arrange(order):
    layer = CBAM(9, reduction=3, kernel_size=3, order=order)
    x = torch.randn(1, 9, 5, 3)
    want = cbam_arrange(x, layer.channel.attention, layer.spatial.attention, order)
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)


def test_cbam_maps_gradcheck():
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    params = [p.requires_grad_() for p in _mlp_params(4, 2, dtype=torch.float64)]
    weight = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)

    def block(x, w1, b1, w2, b2, weight):
        def channel(f):
            return channel_attention_map(f, w1, b1, w2, b2)

        def spatial(f):
            return spatial_attention_map(f, weight, None)

        return cbam_arrange(x, channel, spatial, "parallel")

    assert torch.autograd.gradcheck(block, (x, *params, weight))
    assert torch.autograd.gradcheck(lambda *a: cbam_reference(*a, weight, None), (x, *params))


# ------------------------------------------------------------------------------ deprecations


def test_deprecated_gate_alias_warns_and_works():
    v = torch.randn(5)
    with pytest.warns(DeprecationWarning, match="apply_gate"):
        got = vf.gate("tanh", v)
    torch.testing.assert_close(got, torch.tanh(v))


def test_deprecated_gate_fn_keyword_warns_and_works():
    x, params = torch.randn(1, 5, 3, 3), _mlp_params(5, 2)
    with pytest.warns(DeprecationWarning, match="gate_fn= is deprecated, use gate="):
        got = squeeze_excite_reference(x, *params, gate_fn="relu")
    torch.testing.assert_close(got, squeeze_excite_reference(x, *params, gate="relu"))
    with pytest.raises(TypeError, match="both gate_fn= and gate="):
        squeeze_excite_reference(x, *params, gate="tanh", gate_fn="relu")
    with pytest.raises(TypeError, match="unexpected keyword argument 'gates'"):
        squeeze_excite_reference(x, *params, gates="relu")


def test_fused_module_keeps_its_names():
    from visattn.functional import fused

    assert fused.squeeze_excite is squeeze_excite
    assert fused.squeeze_excite_reference is squeeze_excite_reference
    assert fused.cbam_reference is cbam_reference
    assert callable(fused.update_running_stats) and callable(fused.float_batch_stats)


# ------------------------------------------------------------------------------ validation

_W = _mlp_params(6, 3)
_X = torch.randn(2, 6, 5, 5)
_Z = torch.randn(2, 6, 1, 1)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: excitation(torch.randn(2, 6, 3), *_W), ValueError,
         r"z: expected a tensor of shape \(N, C, 1, 1\) or \(N, C\), got shape \(2, 6, 3\)"),
        (lambda: excitation(_Z, torch.randn(3, 5), *_W[1:]), ValueError,
         r"w1: expected a weight of shape \(hidden, 6\[, 1, 1\]\) for z of shape \(2, 6, 1, 1\), "
         r"got shape \(3, 5\)"),
        (lambda: excitation(_Z, _W[0], torch.randn(4), *_W[2:]), ValueError,
         r"b1: expected None or a tensor of shape \(3,\), got \(4,\)"),
        (lambda: excitation(_Z, *_W[:2], torch.randn(6, 2), _W[3]), ValueError,
         r"w2: expected a weight of shape \(6, 3\[, 1, 1\]\) .*got shape \(6, 2\)"),
        (lambda: excitation(_Z, *_W, gate="softmax"), ValueError,
         r"gate: expected one of 'sigmoid', 'hard_sigmoid', 'tanh', 'relu', got 'softmax'"),
        (lambda: excitation(_Z.long(), *_W), TypeError,
         r"z: expected a floating point tensor, got dtype torch.int64"),
        (lambda: channel_attention_map(_X[0], *_W), ValueError,
         r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor of shape \(6, 5, 5\)"),
        (lambda: channel_attention_map(_X, *_W, pool=("avg", "min")), ValueError,
         r"pool: expected one of 'avg', 'max', got 'min'"),
        (lambda: channel_attention_map(_X, *_W, pool=()), ValueError,
         r"pool: expected a non-empty tuple of names, got \(\)"),
        (lambda: spatial_attention_map(_X, torch.randn(1, 2, 4, 4), None), ValueError,
         r"weight: expected shape \(1, 2, k, k\) with k odd, got \(1, 2, 4, 4\)"),
        (lambda: spatial_attention_map(_X, torch.randn(1, 1, 3, 3), None), ValueError,
         r"weight: expected shape \(1, 2, k, k\) with k odd, got \(1, 1, 3, 3\)"),
        (lambda: spatial_attention_map(_X, torch.randn(1, 2, 3, 3), torch.randn(2)), ValueError,
         r"bias: expected None or a tensor of shape \(1,\), got \(2,\)"),
        (lambda: cbam_arrange(_X, torch.sigmoid, torch.sigmoid, "series"), ValueError,
         r"order: expected one of 'channel_first', 'spatial_first', 'parallel', got 'series'"),
        (lambda: cbam_arrange(_X, 3, torch.sigmoid), TypeError,
         r"channel_map: expected a function of F, got int"),
        (lambda: apply_gate("swish", _Z), ValueError, r"gate: expected one of .*got 'swish'"),
        (lambda: squeeze_excite_reference(_X, torch.randn(3, 5, 1, 1), *_W[1:]), ValueError,
         r"fc1_weight: expected a weight of shape \(hidden, 6\[, 1, 1\]\) for x of shape "
         r"\(2, 6, 5, 5\), got shape \(3, 5, 1, 1\)"),
        (lambda: squeeze_excite(_X, *_W, squeeze="mean"), ValueError,
         r"squeeze: expected one of 'avg', 'max', got 'mean'"),
        (lambda: cbam_reference(_X, *_W, torch.randn(1, 2, 3, 3), torch.randn(1, 1)), ValueError,
         r"conv_bias: expected None or a tensor of shape \(1,\), got \(1, 1\)"),
    ],
)  # fmt: skip
def test_errors_name_the_argument_the_expectation_and_the_value(call, error, message):
    with pytest.raises(error, match=message):
        call()
