"""Tests of Selective Kernel's fuse / select formulas (src/visattn/functional/sk_block.py)
against a NumPy formula written here from the paper (Li et al., CVPR 2019, arXiv:1903.06586,
eq. 1-6): random branch outputs U_m each run (the seed is printed by tests/conftest.py), M = 1, 2,
3, odd sizes and N = 1, with and without the BatchNorm of eq. 3; float64 gradcheck at points
away from the ReLU's corner; eq. 4's d; every validation error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from visattn.functional import selective_kernel, sk_attention, sk_attention_channels

SHAPES = [(1, 5, 3, 7), (3, 7, 5, 1), (2, 9, 7, 5)]  # (N, C, H, W): N = 1, odd, non-square
BN_EPS = 1e-5


def np_sk(us, w, a, bn=None):
    """Eq. 1-6 for U_m (N, C, H, W): U = sum U_m, s = GAP(U), z = ReLU(BN(W s)), a_m = softmax
    over m of A_m z, V = sum a_m U_m. w: W (d, C); a: A_1 ... A_M stacked (M C, d); bn: (mean,
    var, gamma, beta) of the BatchNorm on W s (eval mode) or None. Returns (a (N, M, C), V)."""
    u = sum(us)  # eq. 1
    s = u.mean(axis=(2, 3))  # eq. 2, (N, C)
    ws = s @ w.T  # (N, d)
    if bn is not None:
        mean, var, gamma, beta = bn
        ws = gamma * (ws - mean) / np.sqrt(var + BN_EPS) + beta
    z = np.maximum(ws, 0)  # eq. 3
    m, c = len(us), us[0].shape[1]
    logits = np.stack([z @ a[i * c : (i + 1) * c].T for i in range(m)], axis=1)  # (N, M, C)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    weights = e / e.sum(axis=1, keepdims=True)  # eq. 5
    v = sum(weights[:, i, :, None, None] * us[i] for i in range(m))  # eq. 6
    return weights, v


def _random_bn(d: int, dtype=torch.float64) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(d).to(dtype).eval()
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.3)
    return bn


def _inputs(shape, m, d, dtype=torch.float64, conv_layout=True):
    c = shape[1]
    us = [torch.randn(shape, dtype=dtype).relu() for _ in range(m)]  # ReLU outputs, as in Split
    wr = torch.randn(d, c, dtype=dtype) / c**0.5
    ws = torch.randn(m * c, d, dtype=dtype) / d**0.5
    if conv_layout:  # the layers' 1 x 1 convolution weights
        wr, ws = wr[:, :, None, None], ws[:, :, None, None]
    return us, wr, ws


def _np(t):
    return t.detach().double().numpy().reshape(t.shape[0], -1)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("m", [1, 2, 3])
@pytest.mark.parametrize("norm", [False, True])
def test_sk_attention_and_selective_kernel_are_eq_1_to_6(shape, m, norm):
    d = 4
    us, wr, ws = _inputs(shape, m, d, conv_layout=m != 3)  # 2-D weights for M = 3
    bn = _random_bn(d) if norm else None
    np_bn = None
    if norm:
        np_bn = tuple(t.detach().numpy() for t in (bn.running_mean, bn.running_var, bn.weight,
                                                   bn.bias))  # fmt: skip
    want_a, want_v = np_sk([u.numpy() for u in us], _np(wr), _np(ws), np_bn)
    with torch.no_grad():
        a = sk_attention(us, wr, ws, norm=bn)
        v = selective_kernel(tuple(us), wr, ws, norm=bn)
    assert a.shape == (shape[0], m, shape[1]) and v.shape == shape
    np.testing.assert_allclose(a.numpy(), want_a, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(v.numpy(), want_v, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.sum(1).numpy(), 1.0, rtol=1e-12)


def test_float32_against_float64_formula():
    # measured over 200 seeds: max |error| of V 4.8e-7 (values up to 3.9), of a 1.4e-7; atol ~4x
    us, wr, ws = _inputs((2, 32, 9, 7), 2, 8, dtype=torch.float32)
    want_a, want_v = np_sk([u.double().numpy() for u in us], _np(wr), _np(ws))
    with torch.no_grad():
        a, v = sk_attention(us, wr, ws), selective_kernel(us, wr, ws)
    np.testing.assert_allclose(a.double().numpy(), want_a, rtol=1e-6, atol=5e-7)
    np.testing.assert_allclose(v.double().numpy(), want_v, rtol=1e-6, atol=2e-6)


def test_keeps_memory_format_and_dtype_of_the_branches():
    us, wr, ws = _inputs((2, 8, 5, 6), 2, 4, dtype=torch.float32)
    cl = [u.to(memory_format=torch.channels_last) for u in us]
    v = selective_kernel(cl, wr, ws)
    assert v.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(v, selective_kernel(us, wr, ws))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        vb = selective_kernel([u.bfloat16() for u in us], wr, ws)
    assert vb.dtype == torch.bfloat16


def test_gradcheck():
    """Float64 gradients w.r.t. the branches and both weights, at a point where no W s (the
    ReLU's input) is within 1e-3 of 0 (the finite differences move it by ~1e-6)."""
    for _ in range(20):
        us, wr, ws = _inputs((2, 5, 3, 4), 2, 3)
        s = sum(u.mean((2, 3)) for u in us)
        bn = _random_bn(3)
        with torch.no_grad():
            pre = bn((s @ wr[:, :, 0, 0].T)[:, :, None, None])
        if pre.abs().min() > 1e-3:
            break
    else:
        pytest.fail("no point away from the ReLU corner in 20 draws")
    args = (*us, wr, ws)
    for t in args:
        t.requires_grad_()
    assert torch.autograd.gradcheck(lambda u0, u1, a, b: selective_kernel([u0, u1], a, b, norm=bn),
                                    args)  # fmt: skip
    assert torch.autograd.gradcheck(lambda u0, u1, a, b: sk_attention([u0, u1], a, b, norm=bn),
                                    args)  # fmt: skip


@pytest.mark.parametrize(
    ("c", "r", "L", "divisor", "d"),
    [
        (64, 16, 32, 1, 32),  # C/r = 4 < L
        (128, 16, 32, 1, 32),  # SKNet-50's stage widths 128 ... 1024: 32, 32, 32, 64
        (512, 16, 32, 1, 32),
        (1024, 16, 32, 1, 64),
        (2048, 16, 32, 1, 128),
        (100, 16, 1, 1, 6),  # 6.25 -> 6 (nearest), no L
        (36, 16, 1, 1, 3),  # 2.25 -> 3: rounding down would lose more than 10%
        (40, 16, 1, 1, 3),  # 2.5 -> 3 (halves up)
        (64, 16, 1, 8, 8),  # timm's SelectiveKernel: make_divisible(4, 8) = 8
        (256, 8, 1, 16, 32),  # timm's skresnet18: rd_ratio 1/8, rd_divisor 16
        (200, 16, 1, 8, 16),  # 12.5 -> 16 (nearest multiple of 8)
        (3, 16, 1, 1, 1),  # at least one channel
    ],
)
def test_sk_attention_channels_is_eq_4(c, r, L, divisor, d):
    assert sk_attention_channels(c, r, L, divisor) == d


def _args(shape=(2, 4, 3, 3), m=2, d=2):
    us, wr, ws = _inputs(shape, m, d)
    return us, wr, ws


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda us, wr, ws: sk_attention(us[0], wr, ws), TypeError,
         r"branches: expected a list or tuple of tensors \(N, C, H, W\), got a 4-D tensor of "
         r"shape \(2, 4, 3, 3\)"),
        (lambda us, wr, ws: selective_kernel([], wr, ws), ValueError,
         r"branches: expected at least one tensor \(N, C, H, W\), got \[\]"),
        (lambda us, wr, ws: sk_attention([us[0], 3.0], wr, ws), TypeError,
         r"branches\[1\]: expected a torch.Tensor, got 3.0 \(float\)"),
        (lambda us, wr, ws: sk_attention([us[0], us[1][0]], wr, ws), ValueError,
         r"branches\[1\]: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor"),
        (lambda us, wr, ws: sk_attention([us[0], us[1][:, :, :2]], wr, ws), ValueError,
         r"branches\[1\]: expected the shape and dtype of branches\[0\] \(\(2, 4, 3, 3\), "
         r"torch.float64\), got \(2, 4, 2, 3\), torch.float64"),
        (lambda us, wr, ws: sk_attention([us[0], us[1].float()], wr, ws), ValueError,
         r"branches\[1\]: expected the shape and dtype .* got \(2, 4, 3, 3\), torch.float32"),
        (lambda us, wr, ws: sk_attention(us, wr[:, :3], ws), ValueError,
         r"fc_reduce_weight: expected a weight of shape \(hidden, 4\[, 1, 1\]\) for 2 branches "
         r"of shape \(2, 4, 3, 3\), got shape \(2, 3, 1, 1\)"),
        (lambda us, wr, ws: selective_kernel(us, wr, ws[:4]), ValueError,
         r"fc_select_weight: expected a weight of shape \(8, 2\[, 1, 1\]\) .*got shape "
         r"\(4, 2, 1, 1\)"),
        (lambda us, wr, ws: sk_attention(us, wr, ws, norm=3), TypeError,
         r"norm: expected None or a module / function, got int"),
        (lambda *_: sk_attention_channels(0), ValueError, r"channels: expected an int >= 1, got 0"),
        (lambda *_: sk_attention_channels(64, 0), ValueError,
         r"reduction: expected a positive number, got 0"),
        (lambda *_: sk_attention_channels(64, 16, 0), ValueError,
         r"min_channels: expected an int >= 1, got 0"),
        (lambda *_: sk_attention_channels(64, 16, 32, 2.0), TypeError,
         r"divisor: expected an int, got 2.0 \(float\)"),
    ],
)  # fmt: skip
def test_errors_name_the_argument_the_expectation_and_the_value(call, error, message):
    with pytest.raises(error, match=message):
        call(*_args())
