"""Tests of SimAM's formula (functional/simam_block.py; Yang et al., ICML 2021, eq. 4-5 and the
paper's code listing) against a NumPy formula written here: new random inputs each run (the
seed is printed by tests/conftest.py), odd sizes, N = 1, a single row and a single position;
float64 gradcheck (the formula is smooth); every validation error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visattn.functional import SIMAM_LAMBDA, simam, simam_map

# (N, C, H, W): N = 1, odd and non-square, one row, one position
SHAPES = [(1, 5, 3, 7), (3, 7, 5, 1), (2, 9, 7, 5), (2, 4, 1, 6), (2, 3, 1, 1)]


def np_simam_map(x, lam=SIMAM_LAMBDA):
    """1/e_t* = (t - mu)^2 / (4 (sigma^2 + lambda)) + 1/2 for every position t of every channel,
    mu the channel's mean and sigma^2 its variance over the M - 1 other positions' count
    (ddof = 1, the code listing's n = H W - 1); one position: sigma^2 = 0 (the documented rule)."""
    n, c = x.shape[:2]
    out = np.empty_like(x)
    for i in range(n):
        for k in range(c):
            t = x[i, k]
            var = t.var(ddof=1) if t.size > 1 else 0.0
            out[i, k] = (t - t.mean()) ** 2 / (4 * (var + lam)) + 0.5
    return out


def np_simam(x, lam=SIMAM_LAMBDA):
    """X~ = sigmoid(1/E) * X (eq. 5)."""
    return x / (1 + np.exp(-np_simam_map(x, lam)))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lam", [SIMAM_LAMBDA, 0.3])
def test_simam_is_eq_5(shape, lam):
    x = torch.randn(shape, dtype=torch.float64) * 2 + 0.5
    np.testing.assert_allclose(
        simam_map(x, e_lambda=lam).numpy(), np_simam_map(x.numpy(), lam), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(
        simam(x, e_lambda=lam).numpy(), np_simam(x.numpy(), lam), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_simam_float32(shape):
    """float32 against the float64 formula. Measured over 300 seeds x these shapes: max
    relative error 1.8e-7 (max |error| 1.4e-6, on outputs up to ~15); rtol 1e-6 (5x that),
    atol 1e-6 for outputs near 0."""
    x = torch.randn(shape) * 3
    np.testing.assert_allclose(
        simam(x).double().numpy(), np_simam(x.double().numpy()), rtol=1e-6, atol=1e-6
    )


def test_one_position_gives_sigmoid_half():
    """H W = 1: n = 0, the listing's 0/0. Defined here: sigma^2 = 0, 1/e* = 1/2, so X~ =
    sigmoid(1/2) X, finite, with the gradient sigmoid(1/2) (d(t - mu)^2 / dt = 0 there)."""
    x = torch.randn(3, 6, 1, 1, dtype=torch.float64, requires_grad=True)
    y = simam(x)
    torch.testing.assert_close(simam_map(x), torch.full_like(x, 0.5))
    torch.testing.assert_close(y, x * (1 / (1 + math.exp(-0.5))))
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, torch.full_like(x, 1 / (1 + math.exp(-0.5))))


def test_constant_channel_gives_sigmoid_half():
    """A constant channel: every t = mu, so 1/e* = 1/2 everywhere (no NaN: lambda > 0)."""
    x = torch.full((1, 2, 4, 5), 3.0)
    torch.testing.assert_close(simam(x), x / (1 + math.exp(-0.5)))


def test_distinct_neurons_get_more_weight():
    """The paper's point: the farther t lies from its channel's mean, the lower its energy and
    the larger its weight sigmoid(1/e*); 1/e* >= 1/2 everywhere."""
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    inv = simam_map(x)
    assert (inv >= 0.5).all()
    dist = (x - x.mean((2, 3), keepdim=True)).abs()
    order = dist.flatten(2).argsort(-1)
    sorted_inv = inv.flatten(2).gather(-1, order)
    assert (sorted_inv.diff(dim=-1) >= 0).all()


def test_gradcheck():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(simam, (x,))
    assert torch.autograd.gradcheck(lambda u: simam_map(u, e_lambda=0.2), (x,))


def test_channels_last_kept():
    x = torch.randn(2, 6, 5, 7).to(memory_format=torch.channels_last)
    y = simam(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, simam(x.contiguous()))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: simam(torch.randn(4, 5, 5)), ValueError,
         r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor of shape \(4, 5, 5\)"),
        (lambda: simam(torch.ones(1, 2, 3, 3, dtype=torch.int64)), TypeError,
         r"x: expected a floating point tensor, got dtype torch.int64"),
        (lambda: simam([1.0]), TypeError, r"x: expected a torch.Tensor, got \[1.0\] \(list\)"),
        (lambda: simam(torch.randn(1, 2, 3, 3), e_lambda=0), ValueError,
         r"e_lambda: expected a finite real number > 0, got 0"),
        (lambda: simam_map(torch.randn(1, 2, 3, 3), e_lambda=-1e-4), ValueError,
         r"e_lambda: expected a finite real number > 0, got -0.0001"),
        (lambda: simam(torch.randn(1, 2, 3, 3), e_lambda=float("nan")), ValueError,
         r"e_lambda: expected a finite real number > 0, got nan"),
        (lambda: simam(torch.randn(1, 2, 3, 3), e_lambda=True), ValueError,
         r"e_lambda: expected a finite real number > 0, got True"),
        (lambda: simam(torch.randn(1, 2, 3, 3), e_lambda="1e-4"), ValueError,
         r"e_lambda: expected a finite real number > 0, got '1e-4'"),
    ],
)  # fmt: skip
def test_errors_name_the_argument_the_expectation_and_the_value(call, error, message):
    with pytest.raises(error, match=message):
        call()
