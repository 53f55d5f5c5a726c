"""SimAM, a parameter-free attention module (Yang, Zhang, Li, Xie, ICML 2021, PMLR 139:11863),
as pure tensor functions.

Per channel of X (N, C, H, W), over its M = H W positions t, with n = M - 1:

    mu      = 1/M sum_t t,      sigma^2 = 1/n sum_t (t - mu)^2     (eq. 4's mu^ and sigma^^2)
    1/e_t*  = (t - mu)^2 / (4 (sigma^2 + lambda)) + 1/2            (the reciprocal of eq. 4's e_t*)
    X~      = sigmoid(1/E) * X                                     (eq. 5)

with lambda = 1e-4 (the paper's choice). sigma^2 divides by n = M - 1 as the paper's PyTorch
code listing and the official code do (the energy of eq. 1-3 averages over the M - 1 neurons
other than t; the closed form estimates the mean and variance once per channel). Symbols ->
arguments: X is ``x``, lambda ``e_lambda`` (the official code's name), 1/E the map
:func:`simam_map` returns, E the energies e_t* of every position.

**One position** (H W = 1): n = 0 and the listing's variance is 0/0 (NaN). Here sigma^2 is 0
there (one value has no spread: the sum of squares is 0 and is divided by max(n, 1)), so
(t - mu)^2 = 0 gives 1/e* = 1/2 and X~ = sigmoid(1/2) X: finite, and what any finite variance
would give, since the numerator (t - mu)^2 is exactly 0.

Tests: ``tests/functional/test_functional_simam.py``, ``tests/layers/test_layers_simam.py``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .attention import _check_x

__all__ = ["SIMAM_LAMBDA", "simam", "simam_map"]

#: lambda of eq. 4, the paper's value (its Sec. 4 and code).
SIMAM_LAMBDA = 1e-4


def check_simam(x: Tensor, e_lambda: float) -> None:
    """x (N, C, H, W) and lambda (:func:`check_e_lambda`)."""
    _check_x(x)
    check_e_lambda(e_lambda)


def check_e_lambda(e_lambda: float) -> None:
    """lambda, a finite real number > 0 (it keeps 4 (sigma^2 + lambda) > 0)."""
    if (
        isinstance(e_lambda, bool)
        or not isinstance(e_lambda, (int, float))
        or not math.isfinite(e_lambda)
        or e_lambda <= 0
    ):
        raise ValueError(f"e_lambda: expected a finite real number > 0, got {e_lambda!r}")


def _simam_map(x: Tensor, e_lambda: float) -> Tensor:
    """1/E for x (N, C, H, W), unvalidated: (x - mu)^2 / (4 (sigma^2 + lambda)) + 1/2."""
    n = max(x.shape[2] * x.shape[3] - 1, 1)  # H W = 1: the sum of squares is 0, sigma^2 = 0
    d = (x - x.mean(dim=(2, 3), keepdim=True)).square()
    # 1 / (4 (sigma^2 + lambda)) on the (N, C, 1, 1) statistics, then one full-size multiply
    inv = (d.sum(dim=(2, 3), keepdim=True) * (4 / n) + 4 * e_lambda).reciprocal()
    return d * inv + 0.5


def _simam(x: Tensor, e_lambda: float) -> Tensor:
    return x * torch.sigmoid(_simam_map(x, e_lambda))


def simam_map(x: Tensor, *, e_lambda: float = SIMAM_LAMBDA) -> Tensor:
    """SimAM's inverse minimal energies 1/E = (x - mu)^2 / (4 (sigma^2 + lambda)) + 1/2 (the
    reciprocal of eq. 4, per channel, sigma^2 over H W - 1), shape (N, C, H, W).

    Args:
        x: X, (N, C, H, W).
        e_lambda: lambda of eq. 4 (1e-4 in the paper), > 0.

    The attention map X is multiplied by is ``sigmoid`` of this (eq. 5).
    """
    check_simam(x, e_lambda)
    return _simam_map(x, e_lambda)


def simam(x: Tensor, *, e_lambda: float = SIMAM_LAMBDA) -> Tensor:
    """The SimAM block X~ = sigmoid(1/E) * X (eq. 5), (N, C, H, W): what the layer runs.

    Args:
        x: X, (N, C, H, W), any memory format (kept).
        e_lambda: lambda of eq. 4 (1e-4 in the paper), > 0.
    """
    check_simam(x, e_lambda)
    return _simam(x, e_lambda)
