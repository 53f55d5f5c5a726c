"""Tests of the SE / CBAM pooling and gating functions (src/visattn/functional/attention.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visattn.functional import GATES, channel_pool, channel_scale, gate, global_pool


def test_global_pool_formulas():
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    z = x.numpy().reshape(2, 3, -1)
    np.testing.assert_allclose(global_pool(x, "avg").numpy()[..., 0, 0], z.sum(-1) / 20)
    np.testing.assert_allclose(global_pool(x, "max").numpy()[..., 0, 0], z.max(-1))


def test_channel_pool_order():
    x = torch.randn(1, 6, 3, 5, dtype=torch.float64)
    out = channel_pool(x, ("max", "avg"))
    np.testing.assert_allclose(out[0, 0].numpy(), x[0].numpy().max(0))
    np.testing.assert_allclose(out[0, 1].numpy(), x[0].numpy().mean(0))


def test_channel_scale_shapes():
    x = torch.randn(2, 3, 4, 4)
    s = torch.rand(2, 3)
    torch.testing.assert_close(channel_scale(x, s), channel_scale(x, s[:, :, None, None]))
    torch.testing.assert_close(channel_scale(x, s)[1, 2], x[1, 2] * s[1, 2])


def test_gates():
    v = torch.linspace(-4, 4, 9)
    torch.testing.assert_close(gate("sigmoid", v), 1 / (1 + torch.exp(-v)))
    torch.testing.assert_close(gate("hard_sigmoid", v), ((v + 3) / 6).clamp(0, 1))
    assert set(GATES) == {"sigmoid", "hard_sigmoid", "tanh", "relu"}


def test_exceptions():
    with pytest.raises(ValueError, match=r"mode: expected one of 'avg', 'max', got 'sum'"):
        global_pool(torch.randn(1, 2, 3, 3), "sum")
    with pytest.raises(ValueError, match=r"x: expected a 4-D tensor"):
        channel_pool(torch.randn(2, 3, 3))
    with pytest.raises(ValueError, match=r"gate: expected one of"):
        gate("softmax", torch.randn(3))
