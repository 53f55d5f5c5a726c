"""Tests of the Gather-Excite formulas (src/visattn/functional/ge_block.py) against NumPy formulas
written here from the paper (Hu et al., NeurIPS 2018, arXiv:1810.12348, §3-4): the gather xi_G of
extent ratio e (GE-theta^-: average pooling over the (2e - 1)-wide window centred at e u;
GE-theta: log2(e) depthwise stride-2 convolutions, BatchNorm, ReLU between; global extents), the
excite x * sigmoid(interp(x^)) with nearest-neighbour interp, and GE-theta^+'s subnetwork. New
random inputs each run (the seed is printed by tests/conftest.py), odd sizes and N = 1; float64
gradcheck at points away from the ReLU corners; every validation error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import visattn.functional as vf
from visattn.functional import gather_excite, gather_excite_map, ge_gather
from visattn.functional.ge_block import _ge_excitation
from visattn.kernels import use_backend

SHAPES = [(1, 5, 3, 7), (3, 7, 5, 1), (2, 9, 7, 5), (2, 4, 8, 8)]  # N = 1, odd, a 1-wide map
KINK_MARGIN = 1e-4


# ------------------------------------------------------------------------------ NumPy formulas


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def np_avg_gather(x, e):
    """GE-theta^-: output unit (u, v) averages the input units (i, j) with |i - e u| <= e - 1 and
    |j - e v| <= e - 1 inside the map; (N, C, ceil(H / e), ceil(W / e))."""
    n, c, h, w = x.shape
    ho, wo = -(-h // e), -(-w // e)
    out = np.empty((n, c, ho, wo))
    for u in range(ho):
        rows = slice(max(e * u - (e - 1), 0), min(e * u + e, h))
        for v in range(wo):
            cols = slice(max(e * v - (e - 1), 0), min(e * v + e, w))
            out[:, :, u, v] = x[:, :, rows, cols].mean((2, 3))
    return out


def np_depthwise(x, w, stride, pad):
    """Cross-correlation of each channel with its own kernel w (C, 1, k_h, k_w), zero padding."""
    kh, kw = w.shape[2:]
    ph, pw = pad
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (padded.shape[2] - kh) // stride + 1
    wo = (padded.shape[3] - kw) // stride + 1
    out = np.zeros((*x.shape[:2], ho, wo))
    for a in range(kh):
        for b in range(kw):
            window = padded[
                :, :, a : a + stride * (ho - 1) + 1 : stride, b : b + stride * (wo - 1) + 1 : stride
            ]
            out += window * w[None, :, 0, a, b, None, None]
    return out


def np_bn(y, bn):
    """BatchNorm with running statistics, bn = (mean, var, gamma, beta, eps), per channel."""
    mean, var, gamma, beta, eps = (v if np.isscalar(v) else v[None, :, None, None] for v in bn)
    return (y - mean) / np.sqrt(var + eps) * gamma + beta


def np_conv_gather(x, weights, bns, extent, timm_padding=False):
    """GE-theta: stride-2 3 x 3 depthwise convolutions (padding 1), BN after each, ReLU between;
    global: one depthwise convolution with the map-sized kernel, padding 0 (timm: (k - 1) // 2)."""
    y = x
    for i, w in enumerate(weights):
        kh, kw = w.shape[2:]
        if extent == 0:
            pad = ((kh - 1) // 2, (kw - 1) // 2) if timm_padding else (0, 0)
            y = np_depthwise(y, w, 1, pad)
        else:
            y = np_depthwise(y, w, 2, (kh // 2, kw // 2))
        if bns is not None:
            y = np_bn(y, bns[i])
        if i != len(weights) - 1:
            y = np.maximum(y, 0)
    return y


def np_mlp(g, w1, b1, w2, b2):
    """W_2 ReLU(W_1 g + b_1) + b_2 at every position of g (N, C, H', W'): 1 x 1 convolutions."""
    h = np.einsum("nchw,dc->ndhw", g, w1[:, :, 0, 0]) + b1[None, :, None, None]
    return np.einsum("nchw,dc->ndhw", np.maximum(h, 0), w2[:, :, 0, 0]) + b2[None, :, None, None]


def np_nearest(g, h, w):
    """Nearest-neighbour resize to h x w: output row i reads row floor(i H' / h)."""
    rows = (np.arange(h) * g.shape[2]) // h
    cols = (np.arange(w) * g.shape[3]) // w
    return g[:, :, rows][:, :, :, cols]


def np_map(g, h, w, mlp=None):
    if mlp is not None:
        g = np_mlp(g, *mlp)
    s = sigmoid(g)
    return s if s.shape[2:] == (1, 1) else np_nearest(s, h, w)


# ------------------------------------------------------------------------------ helpers


def _np(t):
    return t.detach().double().numpy()


def _close(got, want, tol=1e-10):
    np.testing.assert_allclose(_np(got), want, rtol=tol, atol=tol)


def _bns(count, c, dtype=torch.float64):
    """BatchNorms in eval mode with random statistics and affine values."""
    norms = []
    for _ in range(count):
        bn = nn.BatchNorm2d(c).to(dtype).eval()
        with torch.no_grad():
            bn.running_mean.normal_(0, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.3)
        norms.append(bn)
    return norms


def _bn_arrays(norms):
    return [
        (_np(b.running_mean), _np(b.running_var), _np(b.weight), _np(b.bias), b.eps) for b in norms
    ]


def _mlp(c, hidden, dtype=torch.float64):
    return (
        torch.randn(hidden, c, 1, 1, dtype=dtype),
        torch.randn(hidden, dtype=dtype),
        torch.randn(c, hidden, 1, 1, dtype=dtype),
        torch.randn(c, dtype=dtype),
    )


def _mlp_kw(mlp):
    return dict(zip(("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"), mlp, strict=True))


# ------------------------------------------------------------------------------ GE-theta^-


@pytest.mark.parametrize("shape", SHAPES)
def test_global_theta_minus_is_x_times_sigmoid_of_the_mean(shape):
    """The defaults: GE-theta^- with a global extent, y = x * sigmoid(GAP(x)), a channel gate."""
    x = torch.randn(shape, dtype=torch.float64)
    s = sigmoid(_np(x).mean((2, 3), keepdims=True))
    for extent in (0, "global"):
        assert gather_excite_map(x, extent=extent).shape == (*shape[:2], 1, 1)
        _close(gather_excite_map(x, extent=extent), s)
        _close(ge_gather(x, extent=extent), _np(x).mean((2, 3), keepdims=True))
    _close(gather_excite(x), _np(x) * s)


def test_ge_excitation_is_the_sigmoid_of_the_pooled_descriptor():
    """The private excite that the fused blocks plug in: (N, C) -> (N, C), f = sigmoid."""
    z = torch.randn(3, 11, dtype=torch.float64) * 4
    got = _ge_excitation(z)
    assert got.shape == z.shape
    _close(got, sigmoid(_np(z)), 1e-14)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_global_theta_minus_on_the_fused_channel_gate(memory_format):
    """The default pairing runs on the fused channel gate (excitation "ge_global") under backend
    "auto": the same values and input gradients as the formula op by op (backend "reference").
    Measured over 100 seeds, both layouts: max |difference| 3.6e-7 (values and gradients);
    atol ~3x that."""
    x = torch.randn(2, 13, 9, 7).to(memory_format=memory_format)
    go = torch.randn(2, 13, 9, 7)
    outs = {}
    for backend in ("auto", "reference"):
        xx = x.clone().requires_grad_()
        with use_backend(backend):
            y = gather_excite(xx)
        outs[backend] = (y, torch.autograd.grad(y, xx, go)[0])
    torch.testing.assert_close(outs["auto"][0], outs["reference"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs["auto"][1], outs["reference"][1], rtol=1e-5, atol=1e-6)
    assert outs["auto"][0].is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("extent", [2, 3, 4, 8])
@pytest.mark.parametrize("shape", SHAPES)
def test_theta_minus_gathers_the_window_centred_at_e_u(extent, shape):
    x = torch.randn(shape, dtype=torch.float64)
    g = np_avg_gather(_np(x), extent)
    got = ge_gather(x, extent=extent)
    assert got.shape == (*shape[:2], math.ceil(shape[2] / extent), math.ceil(shape[3] / extent))
    _close(got, g)
    m = np_map(g, *shape[2:])
    _close(gather_excite_map(x, extent=extent), m)
    _close(gather_excite(x, extent=extent), _np(x) * m)


def test_nearest_interp_reads_the_unit_whose_window_holds_the_position():
    """For H = e H', output row i reads gathered row floor(i / e): its window holds row i."""
    x = torch.arange(8.0, dtype=torch.float64).repeat(1, 1, 8, 1).transpose(2, 3)  # x[i, j] = i
    m = gather_excite_map(x, extent=4)  # rows 0..3 read unit 0 (rows 0..3), 4..7 unit 1 (1..7)
    want = sigmoid(np.repeat([np.mean([0, 1, 2, 3]), np.mean(range(1, 8))], 4))
    _close(m[0, 0, :, 0], want)


# ------------------------------------------------------------------------------ GE-theta, GE-theta^+


@pytest.mark.parametrize("with_mlp", [False, True])
@pytest.mark.parametrize("extent", [2, 4, 8])
@pytest.mark.parametrize("shape", SHAPES)
def test_theta_strided_depthwise_gather(extent, with_mlp, shape):
    n, c, h, w = shape
    count = int(math.log2(extent))
    weights = [torch.randn(c, 1, 3, 3, dtype=torch.float64) for _ in range(count)]
    norms = _bns(count, c)
    mlp = _mlp(c, 3) if with_mlp else None
    x = torch.randn(shape, dtype=torch.float64)
    g = np_conv_gather(_np(x), [_np(v) for v in weights], _bn_arrays(norms), extent)
    got = ge_gather(x, extent=extent, conv_weights=weights, norms=norms)
    assert got.shape == (n, c, math.ceil(h / extent), math.ceil(w / extent))
    _close(got, g)
    kw = {"extent": extent, "conv_weights": weights, "norms": norms}
    kw.update(_mlp_kw(mlp) if with_mlp else {})
    m = np_map(g, h, w, None if mlp is None else [_np(v) for v in mlp])
    _close(gather_excite_map(x, **kw), m)
    _close(gather_excite(x, **kw), _np(x) * m)


def test_theta_without_norms_and_with_none_norms():
    x = torch.randn(2, 3, 9, 6, dtype=torch.float64)
    weights = [torch.randn(3, 1, 3, 3, dtype=torch.float64) for _ in range(2)]
    g = np_conv_gather(_np(x), [_np(v) for v in weights], None, 4)
    _close(ge_gather(x, extent=4, conv_weights=weights), g)
    _close(ge_gather(x, extent=4, conv_weights=weights, norms=[None, None]), g)


def test_theta_kernel_sizes_other_than_3():
    """Odd k_h x k_w kernels: stride 2, padding k // 2 (3 x 3 in the paper and timm)."""
    x = torch.randn(2, 3, 9, 6, dtype=torch.float64)
    weights = [torch.randn(3, 1, 5, 3, dtype=torch.float64)]
    _close(
        ge_gather(x, extent=2, conv_weights=weights),
        np_conv_gather(_np(x), [_np(weights[0])], None, 2),
    )


@pytest.mark.parametrize("with_mlp", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_theta_global_gather_covers_the_map(shape, with_mlp):
    """Global GE-theta: one depthwise convolution with an H x W kernel (x^ is (N, C, 1, 1)),
    its BatchNorm, then (GE-theta^+) the subnetwork; the map is a channel gate."""
    n, c, h, w = shape
    weights, norms = [torch.randn(c, 1, h, w, dtype=torch.float64)], _bns(1, c)
    mlp = _mlp(c, 2) if with_mlp else None
    x = torch.randn(shape, dtype=torch.float64)
    g = np_conv_gather(_np(x), [_np(weights[0])], _bn_arrays(norms), 0)
    assert g.shape == (n, c, 1, 1)
    kw = {"conv_weights": weights, "norms": norms, **(_mlp_kw(mlp) if with_mlp else {})}
    _close(ge_gather(x, conv_weights=weights, norms=norms), g)
    m = np_map(g, h, w, None if mlp is None else [_np(v) for v in mlp])
    got = gather_excite_map(x, extent="global", **kw)
    assert got.shape == (n, c, 1, 1)
    _close(got, m)
    _close(gather_excite(x, **kw), _np(x) * m)


@pytest.mark.parametrize("shape", [(2, 3, 7, 7), (1, 4, 6, 8), (2, 2, 5, 4)])
def test_theta_global_gather_with_timms_padding(shape):
    """``global_padding="timm"``: padding (k - 1) // 2, so x^ is about H x W (H - 1 for even
    k) and is interpolated back: what timm 1.0.31's module computes."""
    _n, c, h, w = shape
    weights, norms = [torch.randn(c, 1, h, w, dtype=torch.float64)], _bns(1, c)
    x = torch.randn(shape, dtype=torch.float64)
    g = np_conv_gather(_np(x), [_np(weights[0])], _bn_arrays(norms), 0, timm_padding=True)
    assert g.shape[2:] == (h - 1 + h % 2, w - 1 + w % 2)
    got = gather_excite_map(x, conv_weights=weights, norms=norms, global_padding="timm")
    assert got.shape == shape
    _close(got, np_map(g, h, w))


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_theta_minus_with_the_subnetwork(shape):
    """use_mlp without extra parameters (timm's default; global: SE with a sigmoid gate)."""
    x = torch.randn(shape, dtype=torch.float64)
    mlp = _mlp(shape[1], 2)
    for extent in (0, 2):
        g = _np(x).mean((2, 3), keepdims=True) if extent == 0 else np_avg_gather(_np(x), extent)
        m = np_map(g, *shape[2:], [_np(v) for v in mlp])
        _close(gather_excite(x, extent=extent, **_mlp_kw(mlp)), _np(x) * m)


def test_channels_last_input_gives_the_same_values():
    x = torch.randn(2, 6, 9, 7, dtype=torch.float64)
    weights = [torch.randn(6, 1, 3, 3, dtype=torch.float64) for _ in range(2)]
    kw = {"extent": 4, "conv_weights": weights, "norms": _bns(2, 6), **_mlp_kw(_mlp(6, 3))}
    xc = x.to(memory_format=torch.channels_last)
    got = gather_excite(xc, **kw)
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, gather_excite(x, **kw))


# ------------------------------------------------------------------------------ gradients


@torch.no_grad()
def _theta_plus_margin(x, weights, norms, mlp) -> float:
    """Distance of the ReLU inputs (between the convolutions and in the subnetwork) from 0."""
    margins, y = [], x
    for i, (w, bn) in enumerate(zip(weights, norms, strict=True)):
        y = bn(torch.nn.functional.conv2d(y, w, None, 2, 1, 1, y.shape[1]))
        if i != len(weights) - 1:
            margins.append(float(y.abs().min()))
            y = torch.relu(y)
    h = torch.nn.functional.conv2d(y, mlp[0], mlp[1])
    return min([*margins, float(h.abs().min())])


def test_gradcheck_theta_minus():
    for extent in (0, 2):
        x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda v, e=extent: gather_excite(v, extent=e), (x,))


def test_gradcheck_theta_plus():
    """Input, depthwise weights and subnetwork, at a point away from the ReLU corners."""
    c = 3
    for _ in range(20):
        x = torch.randn(2, c, 5, 4, dtype=torch.float64)
        weights = [torch.randn(c, 1, 3, 3, dtype=torch.float64) for _ in range(2)]
        norms, mlp = _bns(2, c), _mlp(c, 2)
        if _theta_plus_margin(x, weights, norms, mlp) > KINK_MARGIN:
            break
    else:
        pytest.fail("no random input away from the kinks in 20 draws")
    tensors = [t.requires_grad_() for t in (x, *weights, *mlp)]

    def block(v, w1, w2, *m):
        return gather_excite(v, extent=4, conv_weights=[w1, w2], norms=norms, **_mlp_kw(m))

    assert torch.autograd.gradcheck(block, tuple(tensors))


# ------------------------------------------------------------------------------ errors


def _w(*shape):
    return torch.randn(*shape)


ERRORS = {
    "x_3d": (
        ValueError,
        r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor of shape \(4, 5, 5\)",
        lambda: gather_excite(torch.randn(4, 5, 5)),
    ),
    "x_int": (
        TypeError,
        r"x: expected a floating point tensor, got dtype torch.int64",
        lambda: gather_excite(torch.ones(1, 2, 3, 3, dtype=torch.long)),
    ),
    "extent_1": (
        ValueError,
        r"extent: expected 0 or 'global' \(a global extent\) or an int >= 2, got 1",
        lambda: gather_excite(_w(1, 2, 4, 4), extent=1),
    ),
    "extent_name": (
        ValueError,
        r"extent: expected 0 or 'global' .* or an int >= 2, got 'local'",
        lambda: gather_excite_map(_w(1, 2, 4, 4), extent="local"),
    ),
    "extent_bool": (
        ValueError,
        r"extent: expected .*, got True",
        lambda: ge_gather(_w(1, 2, 4, 4), extent=True),
    ),
    "extent_not_power_of_2": (
        ValueError,
        r"extent: expected a power of 2 for the strided-convolution gather, got 6",
        lambda: gather_excite(_w(1, 2, 4, 4), extent=6, conv_weights=[_w(2, 1, 3, 3)] * 2),
    ),
    "conv_count": (
        ValueError,
        r"conv_weights: expected log2\(4\) = 2 convolutions for extent 4, got 1",
        lambda: gather_excite(_w(1, 2, 4, 4), extent=4, conv_weights=[_w(2, 1, 3, 3)]),
    ),
    "conv_count_global": (
        ValueError,
        r"conv_weights: expected 1 convolution for the global extent, got 2",
        lambda: gather_excite(_w(1, 2, 4, 4), conv_weights=[_w(2, 1, 4, 4)] * 2),
    ),
    "conv_shape": (
        ValueError,
        r"conv_weights\[0\]: expected a depthwise weight of shape \(2, 1, k_h, k_w\) for x of "
        r"shape \(1, 2, 4, 4\), got shape \(2, 2, 3, 3\)",
        lambda: gather_excite(_w(1, 2, 4, 4), extent=2, conv_weights=[_w(2, 2, 3, 3)]),
    ),
    "conv_even": (
        ValueError,
        r"conv_weights\[0\]: expected odd kernel sizes, got shape \(2, 1, 4, 3\)",
        lambda: gather_excite(_w(1, 2, 4, 4), extent=2, conv_weights=[_w(2, 1, 4, 3)]),
    ),
    "conv_not_tensor": (
        TypeError,
        r"conv_weights\[0\]: expected a torch.Tensor, got None",
        lambda: gather_excite(_w(1, 2, 4, 4), extent=2, conv_weights=[None]),
    ),
    "conv_weights_tensor": (
        TypeError,
        r"conv_weights: expected a sequence of tensors, got a 4-D tensor",
        lambda: gather_excite(_w(1, 2, 4, 4), extent=2, conv_weights=_w(2, 1, 3, 3)),
    ),
    "global_size": (
        ValueError,
        r"x: expected the spatial size \(5, 5\) of the global gather's kernel \(conv_weights\[0\]\), "
        r"got shape \(1, 2, 4, 4\)",
        lambda: gather_excite(_w(1, 2, 4, 4), conv_weights=[_w(2, 1, 5, 5)]),
    ),
    "norm_count": (
        ValueError,
        r"norms: expected none or one per convolution \(2\), got 1",
        lambda: gather_excite(
            _w(1, 2, 4, 4), extent=4, conv_weights=[_w(2, 1, 3, 3)] * 2, norms=[None]
        ),
    ),
    "norm_not_callable": (
        TypeError,
        r"norms\[0\]: expected a module, a function or None, got 3 \(int\)",
        lambda: gather_excite(_w(1, 2, 4, 4), extent=2, conv_weights=[_w(2, 1, 3, 3)], norms=[3]),
    ),
    "norms_without_convs": (
        ValueError,
        r"norms: expected none without conv_weights, got 1",
        lambda: gather_excite(_w(1, 2, 4, 4), extent=2, norms=[nn.Identity()]),
    ),
    "fc1_without_fc2": (
        TypeError,
        r"fc2_weight: expected a torch.Tensor, got None",
        lambda: gather_excite(_w(1, 2, 4, 4), fc1_weight=_w(1, 2, 1, 1)),
    ),
    "fc1_shape": (
        ValueError,
        r"fc1_weight: expected a weight of shape \(hidden, 6\[, 1, 1\]\) for x of shape "
        r"\(1, 6, 4, 4\), got shape \(2, 5, 1, 1\)",
        lambda: gather_excite(_w(1, 6, 4, 4), fc1_weight=_w(2, 5, 1, 1), fc2_weight=_w(6, 2)),
    ),
    "bias_without_weights": (
        ValueError,
        r"fc1_bias, fc2_bias: expected None without fc1_weight and fc2_weight",
        lambda: gather_excite(_w(1, 2, 4, 4), fc2_bias=_w(2)),
    ),
    "global_padding": (
        ValueError,
        r"global_padding: expected one of 'none', 'timm', got 'same'",
        lambda: gather_excite(_w(1, 2, 4, 4), global_padding="same"),
    ),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_errors(name):
    exception, match, call = ERRORS[name]
    with pytest.raises(exception, match=match):
        call()


def test_exported():
    for name in ("gather_excite", "gather_excite_map", "ge_gather"):
        assert name in vf.__all__ and getattr(vf, name) is globals()[name]
