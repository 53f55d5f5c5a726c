"""Tests of SqueezeExcite (SE paper eq. 2-4; src/visattn/layers/squeeze_excite.py).

Groups: smoke, exception, cardinality, feature (NumPy formula written here), gradcheck, compile.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visattn import SqueezeExcite
from visattn.layers import reduced_channels


def numpy_se(x, w1, b1, w2, b2, squeeze="avg"):
    """z = pool(u); s = sigmoid(W2 relu(W1 z + b1) + b2); x~ = s * u."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    z = flat.mean(-1) if squeeze == "avg" else flat.max(-1)
    hidden = np.maximum(0, z @ w1.T + b1)
    s = 1 / (1 + np.exp(-(hidden @ w2.T + b2)))
    return x * s[:, :, None, None]


def weights(m: SqueezeExcite):
    return (
        m.fc1.weight.detach()[:, :, 0, 0].numpy(),
        m.fc1.bias.detach().numpy(),
        m.fc2.weight.detach()[:, :, 0, 0].numpy(),
        m.fc2.bias.detach().numpy(),
    )


class TestSmoke:
    def test_forward(self):
        m = SqueezeExcite(32)
        assert m(torch.randn(2, 32, 5, 5)).shape == (2, 32, 5, 5)
        assert m.fc1.out_channels == 2

    def test_options(self):
        m = SqueezeExcite(64, reduction=4, squeeze="max", gate="hard_sigmoid", bias=False)
        assert m.fc1.bias is None and m.fc1.out_channels == 16
        assert m(torch.randn(1, 64, 3, 3)).shape == (1, 64, 3, 3)

    def test_divisor_rounds_like_timm(self):
        assert reduced_channels(64, 16, divisor=8) == 8
        assert reduced_channels(256, 16, divisor=8) == 16
        assert reduced_channels(100, 16, divisor=8) == 8


class TestException:
    def test_reduction_larger_than_channels(self):
        with pytest.raises(
            ValueError, match=r"reduction: expected a value <= channels \(8\).*got 16"
        ):
            SqueezeExcite(8)

    def test_wrong_channels(self):
        with pytest.raises(ValueError, match=r"x: expected 32 channels, got shape \(1, 16, 4, 4\)"):
            SqueezeExcite(32)(torch.randn(1, 16, 4, 4))

    def test_wrong_rank(self):
        with pytest.raises(ValueError, match=r"x: expected a 4-D tensor"):
            SqueezeExcite(32)(torch.randn(32, 4, 4))

    def test_unknown_names(self):
        with pytest.raises(ValueError, match=r"gate: expected one of .*got 'softmax'"):
            SqueezeExcite(32, gate="softmax")
        with pytest.raises(ValueError, match=r"squeeze: expected one of .*got 'mean'"):
            SqueezeExcite(32, squeeze="mean")
        with pytest.raises(TypeError, match=r"channels: expected an int"):
            SqueezeExcite(32.0)


class TestFeature:
    @pytest.mark.parametrize("squeeze", ["avg", "max"])
    def test_formula(self, squeeze):
        m = SqueezeExcite(24, reduction=4, squeeze=squeeze).double()
        x = torch.randn(3, 24, 5, 7, dtype=torch.float64)
        np.testing.assert_allclose(
            m(x).detach().numpy(), numpy_se(x.numpy(), *weights(m), squeeze), rtol=1e-10
        )


class TestCardinality:
    @pytest.mark.parametrize("shape", [(1, 16, 1, 1), (1, 16, 7, 5), (3, 16, 4, 9)])
    def test_channels_last_equals_nchw(self, shape):
        m = SqueezeExcite(16, reduction=4)
        x = torch.randn(shape)
        a = m(x)
        b = m(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(a, b)


class TestGradcheck:
    def test_gradcheck(self):
        m = SqueezeExcite(8, reduction=2).double()
        x = torch.randn(2, 8, 3, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(m, (x,))
        # and the parameters
        params = tuple(m.parameters())

        def f(*p):
            return torch.func.functional_call(
                m, dict(zip([n for n, _ in m.named_parameters()], p, strict=True)), (x,)
            )

        assert torch.autograd.gradcheck(f, params)


class TestAutocast:
    def test_bfloat16(self):
        m = SqueezeExcite(16, reduction=4)
        x = torch.randn(2, 16, 6, 6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x)
        torch.testing.assert_close(out.float(), m(x), atol=5e-2, rtol=5e-2)


class TestCompile:
    def test_compile(self):
        m = SqueezeExcite(16, reduction=4)
        x = torch.randn(2, 16, 5, 5)
        torch.testing.assert_close(torch.compile(m)(x), m(x))
