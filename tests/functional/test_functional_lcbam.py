"""Tests of timm's light CBAM formulas (functional/cbam_block.py: ``merge_pools=True`` of
channel_attention_map and spatial_attention_map, light_cbam; no paper: timm's
LightCbamModule) against NumPy formulas written here: new random inputs each run (the seed is
printed by tests/conftest.py), odd sizes, N = 1, one row; float64 gradcheck away from the
ReLU's corner and max ties; the validation errors of the new option.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from visattn.functional import channel_attention_map, light_cbam, spatial_attention_map

SHAPES = [(1, 5, 3, 7), (3, 7, 5, 1), (2, 9, 7, 5), (2, 6, 1, 4)]  # N = 1, odd, one row
BN_EPS = 1e-5


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def np_pool(x, mode, axis):
    return x.mean(axis=axis) if mode == "avg" else x.max(axis=axis)


def np_light_channel(x, w1, b1, w2, b2, pool=("avg", "max")):
    """sigma(W_2 ReLU(W_1 z + b_1) + b_2), z = the mean of the global pools (0.5 avg + 0.5 max)."""
    z = sum(np_pool(x, p, (2, 3)) for p in pool) / len(pool)  # (N, C)
    h = np.maximum(z @ w1.reshape(w1.shape[0], -1).T + (0 if b1 is None else b1), 0)
    return sigmoid(h @ w2.reshape(w2.shape[0], -1).T + (0 if b2 is None else b2))[:, :, None, None]


def np_light_spatial(x, weight, bias, pool=("avg", "max"), bn=None):
    """sigma(BN(f^{k x k}(m))), m = the mean of the channel pools, one channel: a zero-padded
    cross-correlation written as loops over the kernel."""
    m = sum(np_pool(x, p, 1) for p in pool) / len(pool)  # (N, H, W)
    n, h, w = m.shape
    kh, kw = weight.shape[2:]
    padded = np.pad(m, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2)))
    out = np.zeros((n, h, w)) + (0 if bias is None else bias[0])
    for i in range(kh):
        for j in range(kw):
            out += weight[0, 0, i, j] * padded[:, i : i + h, j : j + w]
    if bn is not None:
        mean, var, gamma, beta = bn
        out = gamma * (out - mean) / np.sqrt(var + BN_EPS) + beta
    return sigmoid(out)[:, None]


def np_light_cbam(x, w1, w2, conv, bn, pool=("avg", "max")):
    """Channel first (CBAM's eq. 1) with the two light maps; no MLP biases (timm's default)."""
    f1 = np_light_channel(x, w1, None, w2, None, pool) * x
    return np_light_spatial(f1, conv, None, pool, bn) * f1


def _np(t):
    return None if t is None else t.detach().double().numpy()


def mlp_weights(c, hidden, bias, dtype=torch.float64):
    w1 = torch.randn(hidden, c, 1, 1, dtype=dtype)
    w2 = torch.randn(c, hidden, 1, 1, dtype=dtype)
    b1 = torch.randn(hidden, dtype=dtype) if bias else None
    b2 = torch.randn(c, dtype=dtype) if bias else None
    return w1, b1, w2, b2


def random_bn(dtype=torch.float64):
    bn = nn.BatchNorm2d(1).to(dtype).eval()
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.3)
    return bn, tuple(_np(v)[0] for v in (bn.running_mean, bn.running_var, bn.weight, bn.bias))


@pytest.mark.parametrize("pool", [("avg", "max"), ("max", "avg"), ("avg",), ("max",)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_light_channel_map(pool, bias, shape):
    x = torch.randn(shape, dtype=torch.float64)
    ws = mlp_weights(shape[1], 3, bias)
    got = channel_attention_map(x, *ws, pool=pool, merge_pools=True)
    want = np_light_channel(x.numpy(), *map(_np, ws), pool)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("pool", [("avg", "max"), ("max", "avg"), ("avg",)])
@pytest.mark.parametrize("kernel", [(7, 7), (3, 5), (1, 1)])
@pytest.mark.parametrize("shape", SHAPES)
def test_light_spatial_map(pool, kernel, shape):
    x = torch.randn(shape, dtype=torch.float64)
    weight = torch.randn(1, 1, *kernel, dtype=torch.float64)
    bias = torch.randn(1, dtype=torch.float64)
    got = spatial_attention_map(x, weight, bias, pool=pool, merge_pools=True)
    want = np_light_spatial(x.numpy(), _np(weight), _np(bias), pool)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-14)
    bn, bn_np = random_bn()
    got = spatial_attention_map(x, weight, None, pool=pool, norm=bn, merge_pools=True)
    want = np_light_spatial(x.numpy(), _np(weight), None, pool, bn_np)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", SHAPES)
def test_light_cbam(shape):
    x = torch.randn(shape, dtype=torch.float64)
    w1, _, w2, _ = mlp_weights(shape[1], 2, False)
    conv = torch.randn(1, 1, 7, 7, dtype=torch.float64) * 0.3
    bn, bn_np = random_bn()
    with torch.no_grad():
        got = light_cbam(x, w1, None, w2, None, conv, None, norm=bn)
    want = np_light_cbam(x.numpy(), _np(w1), _np(w2), _np(conv), bn_np)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-14)


def test_light_cbam_float32():
    """float32 against the float64 formula. Measured over 300 seeds x SHAPES: max |error|
    4.9e-7 on outputs up to ~3.6; atol 1.5e-6, rtol 1e-6 (5x margin)."""
    for shape in SHAPES:
        x = torch.randn(shape)
        w1, _, w2, _ = mlp_weights(shape[1], 2, False, torch.float32)
        conv = torch.randn(1, 1, 7, 7) * 0.3
        bn, bn_np = random_bn(torch.float32)
        with torch.no_grad():
            got = light_cbam(x, w1, None, w2, None, conv, None, norm=bn).double().numpy()
        want = np_light_cbam(x.double().numpy(), _np(w1), _np(w2), _np(conv), bn_np)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1.5e-6)


def test_one_pool_merged_is_the_plain_map():
    """With a single pool the mean is that pool: the light maps are CBAM's eq. 2 and 3."""
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    ws = mlp_weights(6, 3, True)
    conv, bias = torch.randn(1, 1, 3, 3, dtype=torch.float64), torch.randn(1, dtype=torch.float64)
    for pool in (("avg",), ("max",)):
        torch.testing.assert_close(
            channel_attention_map(x, *ws, pool=pool, merge_pools=True),
            channel_attention_map(x, *ws, pool=pool),
        )
        torch.testing.assert_close(
            spatial_attention_map(x, conv, bias, pool=pool, merge_pools=True),
            spatial_attention_map(x, conv, bias, pool=pool),
        )


def test_gradcheck():
    """float64, x and every weight, at a point away from the ReLU corner and max-pool ties."""
    for _ in range(20):
        x = torch.randn(2, 4, 3, 5, dtype=torch.float64)
        w1, _, w2, _ = mlp_weights(4, 2, False)
        z = 0.5 * (x.mean((2, 3)) + x.amax((2, 3)))
        pre = z @ w1.flatten(1).T
        flat = x.flatten(2).sort(-1).values
        chan = x.sort(1).values
        if (
            pre.abs().min() > 1e-3
            and (flat[..., -1] - flat[..., -2]).min() > 1e-3
            and (chan[:, -1] - chan[:, -2]).min() > 1e-3
        ):
            break
    conv = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    bias = torch.randn(1, dtype=torch.float64)
    # no BatchNorm here: its batch statistics make every sample depend on every other, still
    # smooth, but the layer tests check it (tests/layers/test_layers_cbam.py)
    inputs = tuple(t.requires_grad_() for t in (x, w1, w2, conv, bias))
    assert torch.autograd.gradcheck(
        lambda u, a, b, c, d: light_cbam(u, a, None, b, None, c, d), inputs
    )


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: channel_attention_map(torch.randn(1, 4, 3, 3), torch.randn(2, 4),
                                       None, torch.randn(4, 2), None, merge_pools=1),
         TypeError, r"merge_pools: expected a bool, got 1 \(int\)"),
        (lambda: spatial_attention_map(torch.randn(1, 4, 3, 3), torch.randn(1, 2, 3, 3), None,
                                       merge_pools=True),
         ValueError, r"weight: expected shape \(1, 1, k, k\) with k odd, got \(1, 2, 3, 3\)"),
        (lambda: light_cbam(torch.randn(1, 4, 3, 3), torch.randn(2, 4), None, torch.randn(4, 2),
                            None, torch.randn(1, 2, 7, 7), None),
         ValueError,
         r"conv_weight: expected shape \(1, 1, k, k\) with k odd, got \(1, 2, 7, 7\)"),
        (lambda: light_cbam(torch.randn(1, 4, 3, 3), torch.randn(2, 5), None, torch.randn(4, 2),
                            None, torch.randn(1, 1, 7, 7), None),
         ValueError, r"fc1_weight: expected a weight of shape \(hidden, 4\[, 1, 1\]\)"),
        (lambda: light_cbam(torch.randn(4, 3, 3), torch.randn(2, 4), None, torch.randn(4, 2),
                            None, torch.randn(1, 1, 7, 7), None),
         ValueError, r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor"),
    ],
)  # fmt: skip
def test_errors_name_the_argument_the_expectation_and_the_value(call, error, message):
    with pytest.raises(error, match=message):
        call()
