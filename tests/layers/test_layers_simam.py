"""Tests of SimAM (Yang et al., ICML 2021, eq. 4-5 and the paper's code listing;
src/visattn/layers/simam.py): the battery of layer_tester.py on the configurations of
TestSimAM (map kind "mixed": forward(x) == x * attention(x), the map (N, C, H, W)), then its own
tests: no parameters, one position, the registry.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from layer_tester import LayerTester

from visattn import SimAM, create_attention

LAMBDA = 1e-4  # the paper's lambda


def numpy_simam(x, lam=LAMBDA):
    """Per channel: mu, sigma^2 = sum (t - mu)^2 / (M - 1) (M = H W; 0 when M = 1, the
    documented rule), 1/e* = (t - mu)^2 / (4 (sigma^2 + lambda)) + 1/2; X~ = sigmoid(1/e*) X."""
    m = x.shape[2] * x.shape[3]
    d = (x - x.mean(axis=(2, 3), keepdims=True)) ** 2
    var = d.sum(axis=(2, 3), keepdims=True) / (m - 1) if m > 1 else np.zeros_like(d[..., :1, :1])
    inv_e = d / (4 * (var + lam)) + 0.5
    return x / (1 + np.exp(-inv_e))


class TestSimAM(LayerTester):
    layer = SimAM
    configs = {  # noqa: RUF012
        "paper": {},  # lambda = 1e-4
        "lambda": {"e_lambda": 0.5},
    }
    gradcheck_wrt = ("input",)  # no parameters
    tolerances = {  # noqa: RUF012
        **LayerTester.tolerances,
        # float32 against the float64 formula, measured over 300 seeds x both configurations x
        # the tester's shapes: max relative error 1.8e-7 (|error| 5.6e-7 on outputs up to ~4.6);
        # rtol 1e-6, atol 1e-6
        "float32": {"rtol": 1e-6, "atol": 1e-6},
        # bfloat16 autocast: SimAM's ops (mean, square, sigmoid) stay float32 under autocast:
        # measured max |error| 0
    }
    errors = {  # noqa: RUF012
        "lambda_zero": (
            ValueError,
            r"e_lambda: expected a finite real number > 0, got 0",
            lambda: SimAM(e_lambda=0),
        ),
        "lambda_str": (
            ValueError,
            r"e_lambda: expected a finite real number > 0, got 'small'",
            lambda: SimAM(e_lambda="small"),
        ),
        "x_3d": (
            ValueError,
            r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor of shape \(8, 5, 5\)",
            lambda: SimAM()(torch.randn(8, 5, 5)),
        ),
        "x_int": (
            TypeError,
            r"x: expected a floating point tensor, got dtype torch.int64",
            lambda: SimAM()(torch.ones(1, 2, 3, 3, dtype=torch.int64)),
        ),
    }

    def input_shape(self, config):
        return (2, 8, 9, 7)

    def formula(self, x, p, config):
        return numpy_simam(x, config.get("e_lambda", LAMBDA))

    def expected_num_params(self, config):  # parameter-free (the paper's title)
        return 0


def test_no_parameters_nor_buffers():
    m = SimAM()
    assert list(m.parameters()) == [] and list(m.buffers()) == [] and m.state_dict() == {}


def test_one_position_is_sigmoid_half():
    """H W = 1: the official code's variance is 0/0 (NaN); here X~ = sigmoid(1/2) X."""
    x = torch.randn(4, 16, 1, 1)
    torch.testing.assert_close(SimAM()(x), x / (1 + math.exp(-0.5)))
    torch.testing.assert_close(SimAM().attention(x), torch.full_like(x, 1 / (1 + math.exp(-0.5))))


def test_attention_is_the_mixed_map():
    x = torch.randn(2, 5, 6, 3)
    m = SimAM()
    a = m.attention(x)
    assert m.map_kind == "mixed" and a.shape == x.shape
    assert ((a > 0.5) & (a < 1)).all()  # sigmoid(1/e*) with 1/e* >= 1/2
    torch.testing.assert_close(m(x), x * a)


def test_any_channel_count_through_the_registry():
    m = create_attention("simam", 64)
    for c in (1, 3, 64):
        x = torch.randn(2, c, 4, 4)
        assert m(x).shape == x.shape
