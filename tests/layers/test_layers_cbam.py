"""Tests of ChannelAttention, SpatialAttention and CBAM (CBAM paper eq. 1-3; src/visattn/layers/cbam.py).

Groups: smoke, exception, cardinality, feature (NumPy formulas with an explicit k x k
convolution loop written here), gradcheck, autocast, compile.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visattn import CBAM, ChannelAttention, SpatialAttention


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def numpy_channel(x, m: ChannelAttention):
    w1 = m.fc1.weight.detach()[:, :, 0, 0].numpy()
    b1 = m.fc1.bias.detach().numpy()
    w2 = m.fc2.weight.detach()[:, :, 0, 0].numpy()
    b2 = m.fc2.bias.detach().numpy()
    flat = x.reshape(*x.shape[:2], -1)
    pooled = {"avg": flat.mean(-1), "max": flat.max(-1)}
    logits = sum(np.maximum(0, pooled[p] @ w1.T + b1) @ w2.T + b2 for p in m.pool)
    return sigmoid(logits)[:, :, None, None]  # M_c(F)


def numpy_spatial(x, m: SpatialAttention):
    maps = {"avg": x.mean(1), "max": x.max(1)}
    stacked = np.stack([maps[p] for p in m.pool], 1)  # (N, P, H, W), order of `pool`
    w = m.conv.weight.detach().numpy()  # (1, P, k, k)
    b = m.conv.bias.detach().numpy() if m.conv.bias is not None else np.zeros(1)
    k = w.shape[-1]
    r = k // 2
    n, p, h, wd = stacked.shape
    padded = np.zeros((n, p, h + 2 * r, wd + 2 * r))
    padded[:, :, r : r + h, r : r + wd] = stacked
    out = np.zeros((n, h, wd))
    for i in range(h):
        for j in range(wd):
            out[:, i, j] = (padded[:, :, i : i + k, j : j + k] * w[0]).sum((1, 2, 3)) + b[0]
    return sigmoid(out)[:, None]  # M_s(F)


class TestSmoke:
    def test_forward(self):
        x = torch.randn(2, 32, 9, 7)
        for m in (CBAM(32), ChannelAttention(32), SpatialAttention()):
            assert m(x).shape == x.shape

    def test_options(self):
        m = CBAM(32, reduction=8, kernel_size=3, order="parallel", norm=True, pool=("max",))
        assert m(torch.randn(2, 32, 5, 5)).shape == (2, 32, 5, 5)
        assert m.spatial.conv.in_channels == 1 and m.spatial.conv.kernel_size == (3, 3)


class TestException:
    def test_even_kernel(self):
        with pytest.raises(ValueError, match=r"kernel_size: expected an odd size.*got 4"):
            SpatialAttention(kernel_size=4)

    def test_reduction(self):
        with pytest.raises(ValueError, match=r"reduction: expected a value <= channels \(4\)"):
            CBAM(4)

    def test_names(self):
        with pytest.raises(ValueError, match=r"order: expected one of .*got 'series'"):
            CBAM(32, order="series")
        with pytest.raises(ValueError, match=r"pool: expected one of .*got 'min'"):
            ChannelAttention(32, pool=("avg", "min"))
        with pytest.raises(ValueError, match=r"pool: expected a non-empty tuple"):
            SpatialAttention(pool=())

    def test_input(self):
        with pytest.raises(ValueError, match=r"x: expected 32 channels, got shape \(2, 8, 4, 4\)"):
            CBAM(32)(torch.randn(2, 8, 4, 4))
        with pytest.raises(ValueError, match=r"x: expected a 4-D tensor"):
            SpatialAttention()(torch.randn(8, 4, 4))


class TestFeature:
    @pytest.mark.parametrize("pool", [("avg", "max"), ("max", "avg"), ("avg",), ("max",)])
    def test_channel_attention(self, pool):
        m = ChannelAttention(16, reduction=4, pool=pool).double()
        x = torch.randn(2, 16, 5, 6, dtype=torch.float64)
        ref = numpy_channel(x.numpy(), m) * x.numpy()
        np.testing.assert_allclose(m(x).detach().numpy(), ref, rtol=1e-10)

    @pytest.mark.parametrize("kernel_size", [3, 7])
    @pytest.mark.parametrize("pool", [("avg", "max"), ("max", "avg")])
    def test_spatial_attention(self, kernel_size, pool):
        m = SpatialAttention(kernel_size=kernel_size, pool=pool).double()
        x = torch.randn(2, 5, 6, 8, dtype=torch.float64)
        ref = numpy_spatial(x.numpy(), m) * x.numpy()
        np.testing.assert_allclose(m(x).detach().numpy(), ref, rtol=1e-10)

    @pytest.mark.parametrize("order", ["channel_first", "spatial_first", "parallel"])
    def test_cbam_orders(self, order):
        m = CBAM(16, reduction=4, order=order).double()
        x = torch.randn(2, 16, 5, 5, dtype=torch.float64).numpy()
        if order == "channel_first":  # eq. 1: F' = M_c(F) F, F'' = M_s(F') F'
            f1 = numpy_channel(x, m.channel) * x
            ref = numpy_spatial(f1, m.spatial) * f1
        elif order == "spatial_first":
            f1 = numpy_spatial(x, m.spatial) * x
            ref = numpy_channel(f1, m.channel) * f1
        else:
            ref = numpy_channel(x, m.channel) * numpy_spatial(x, m.spatial) * x
        np.testing.assert_allclose(m(torch.from_numpy(x)).detach().numpy(), ref, rtol=1e-10)

    def test_norm_uses_batchnorm(self):
        m = SpatialAttention(norm=True).eval()
        assert isinstance(m.bn, torch.nn.BatchNorm2d) and m.conv.bias is None


class TestCardinality:
    @pytest.mark.parametrize("shape", [(1, 16, 1, 1), (1, 16, 7, 5), (3, 16, 4, 9)])
    def test_channels_last_equals_nchw(self, shape):
        m = CBAM(16, reduction=4)
        x = torch.randn(shape)
        torch.testing.assert_close(m(x.to(memory_format=torch.channels_last)), m(x))


class TestGradcheck:
    @pytest.mark.parametrize("order", ["channel_first", "parallel"])
    def test_gradcheck(self, order):
        m = CBAM(8, reduction=2, kernel_size=3, order=order).double()
        # distinct values: max pooling is differentiable away from ties
        x = torch.randn(2, 8, 4, 5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(m, (x,))
        names = [n for n, _ in m.named_parameters()]

        def f(*p):
            return torch.func.functional_call(m, dict(zip(names, p, strict=True)), (x,))

        assert torch.autograd.gradcheck(f, tuple(m.parameters()))


class TestAutocast:
    def test_bfloat16(self):
        m = CBAM(16, reduction=4)
        x = torch.randn(2, 16, 6, 6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
        torch.testing.assert_close(out.float(), m(x), atol=6e-2, rtol=5e-2)


class TestCompile:
    def test_compile(self):
        m = CBAM(16, reduction=4)
        x = torch.randn(2, 16, 7, 5, requires_grad=True)
        a, b = torch.compile(m)(x), m(x)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(
            torch.autograd.grad(a.sum(), x)[0], torch.autograd.grad(b.sum(), x)[0]
        )
