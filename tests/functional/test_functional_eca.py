"""Tests of the no-reduction channel gates (src/visattn/functional/eca_block.py) against NumPy
formulas written here: ECA (arXiv:1910.03151, eq. 9 and 12), its circular variant and effective
SE (arXiv:1911.06667, Sec. 3.3). Their excitation steps z (N, C) -> s (N, C) are tested on their
own (the step a fused kernel plugs in). New random inputs each run (the seed is printed by
tests/conftest.py), odd sizes and N = 1; float64 gradcheck; every validation error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import visattn.functional as vf
from visattn.functional.eca_block import _eca_excitation, _ese_excitation

SHAPES = [(1, 5, 3, 7), (3, 7, 5, 1), (2, 9, 7, 5), (2, 16, 1, 1)]  # (N, C, H, W)

# ------------------------------------------------------------------------------ NumPy formulas


def np_sigmoid(v):
    return 1 / (1 + np.exp(-v))


def np_hard_sigmoid(v):
    return np.clip((v + 3) / 6, 0, 1)


def np_eca_excitation(y, w, circular):
    """s_c = sigma(sum_j w_j y_{c + j - k // 2}) (eq. 9) for y (N, C), w (k,): zero outside
    0 ... C - 1, or the index taken mod C (circular)."""
    k, c = w.shape[0], y.shape[1]
    p = k // 2
    if circular:
        # np.roll(y, p - j)[:, c] = y[:, (c + j - p) mod C]
        logits = sum(w[j] * np.roll(y, p - j, axis=1) for j in range(k))
    else:
        padded = np.pad(y, ((0, 0), (p, p)))
        logits = sum(w[j] * padded[:, j : j + c] for j in range(k))
    return np_sigmoid(logits)


def np_eca_gate(x, w, circular=False):
    """sigma(C1D_k(GAP(x))), (N, C, 1, 1)."""
    return np_eca_excitation(x.mean((2, 3)), w.reshape(-1), circular)[:, :, None, None]


def np_ese_excitation(y, weight, bias):
    """s = hard_sigmoid(W_C y + b_C) for y (N, C), W_C (C, C[, 1, 1])."""
    w = weight.reshape(weight.shape[0], -1)
    return np_hard_sigmoid(y @ w.T + (0 if bias is None else bias))


def np_ese_gate(x, weight, bias):
    return np_ese_excitation(x.mean((2, 3)), weight, bias)[:, :, None, None]


def psi(c, gamma=2.0, b=1.0):
    """Eq. 12, written here: t = |log2(C) / gamma + b / gamma|, truncated, made odd (upwards)."""
    t = math.floor(abs(math.log(c) / math.log(2) / gamma + b / gamma))
    return t + 1 - t % 2


def _np(t):
    return None if t is None else t.detach().double().numpy()


def _f64(*shape):
    return torch.randn(*shape, dtype=torch.float64)


# ------------------------------------------------------------------------------------ ECA


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 3, 5, 9])  # 9 > C for C = 5, 7: the padding spans all channels
@pytest.mark.parametrize("circular", [False, True])
def test_eca_against_numpy(shape, k, circular):
    x, w = _f64(*shape), _f64(1, 1, k)
    gate = vf.eca_gate(x, w, circular=circular)
    want = np_eca_gate(_np(x), _np(w), circular)
    assert gate.shape == (shape[0], shape[1], 1, 1)
    np.testing.assert_allclose(_np(gate), want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(_np(vf.eca(x, w, circular=circular)), _np(x) * want, rtol=1e-12)


@pytest.mark.parametrize("circular", [False, True])
def test_eca_excitation_against_numpy(circular):
    """The pluggable step alone: z (N, C) -> s (N, C)."""
    n, c, k = int(torch.randint(1, 5, ())), int(torch.randint(1, 40, ())), 5
    z, w = _f64(n, c), _f64(1, 1, k)
    s = _eca_excitation(z, w, circular)
    assert s.shape == (n, c)
    np.testing.assert_allclose(_np(s), np_eca_excitation(_np(z), _np(w)[0, 0], circular), 1e-12)


def test_eca_circular_differs_from_zero_padding_at_the_edges_only():
    """The two paddings agree on the channels whose window stays inside 0 ... C - 1."""
    c, k = 11, 5
    x, w = _f64(2, c, 4, 3), _f64(1, 1, k).abs() + 0.1
    zero = vf.eca_gate(x, w).flatten(1)
    circ = vf.eca_gate(x, w, circular=True).flatten(1)
    inner = slice(k // 2, c - k // 2)
    torch.testing.assert_close(circ[:, inner], zero[:, inner], rtol=0, atol=0)
    assert (circ[:, : k // 2] != zero[:, : k // 2]).all()
    assert (circ[:, -(k // 2) :] != zero[:, -(k // 2) :]).all()


def test_eca_k1_is_a_scaled_sigmoid_per_channel():
    """k = 1 (the paper's psi for C < 8): s_c = sigma(w y_c), no interaction across channels."""
    x, w = _f64(3, 4, 5, 5), _f64(1, 1, 1)
    for circular in (False, True):
        torch.testing.assert_close(
            vf.eca_gate(x, w, circular=circular), torch.sigmoid(w[0, 0, 0] * x.mean((2, 3), True))
        )


@pytest.mark.parametrize("circular", [False, True])
def test_eca_gradcheck(circular):
    x = _f64(2, 6, 3, 5).requires_grad_()
    w = _f64(1, 1, 5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: vf.eca(a, b, circular=circular), (x, w))


@pytest.mark.parametrize(
    ("c", "k"),
    [(1, 1), (2, 1), (4, 1), (7, 1), (8, 3), (64, 3), (127, 3), (128, 5), (256, 5), (2047, 5),
     (2048, 7)],
)  # fmt: skip
def test_eca_kernel_size_eq_12(c, k):
    assert vf.eca_kernel_size(c) == k == psi(c)


def test_eca_kernel_size_against_numpy_over_c_gamma_b():
    for c in torch.randint(1, 5000, (50,)).tolist():
        gamma = float(torch.empty(()).uniform_(0.5, 4))
        b = float(torch.empty(()).uniform_(-3, 3))
        assert vf.eca_kernel_size(c, gamma, b) == psi(c, gamma, b), (c, gamma, b)


# ------------------------------------------------------------------------------------ eSE


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["linear", "conv", "no_bias"])
def test_ese_against_numpy(shape, layout):
    n, c = shape[:2]
    x = _f64(*shape) * 4  # wide enough that some logits fall past the hard sigmoid's clamps
    w = _f64(c, c, 1, 1) if layout == "conv" else _f64(c, c)
    b = None if layout == "no_bias" else _f64(c) * 3
    gate = vf.ese_gate(x, w, b)
    want = np_ese_gate(_np(x), _np(w), _np(b))
    assert gate.shape == (n, c, 1, 1)
    np.testing.assert_allclose(_np(gate), want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(_np(vf.ese(x, w, b)), _np(x) * want, rtol=1e-12)


def test_ese_excitation_against_numpy():
    n, c = int(torch.randint(1, 5, ())), int(torch.randint(1, 40, ()))
    z, w, b = _f64(n, c) * 3, _f64(c, c, 1, 1), _f64(c) * 3
    s = _ese_excitation(z, w, b)
    assert s.shape == (n, c)
    np.testing.assert_allclose(_np(s), np_ese_excitation(_np(z), _np(w), _np(b)), rtol=1e-12)
    assert ((s == 0) | (s == 1)).any() and ((s > 0) & (s < 1)).any()  # both regimes met


def test_ese_gradcheck():
    """Away from the hard sigmoid's corners at +-3 (the logits stay inside (-3, 3) here)."""
    x = _f64(2, 5, 3, 4).requires_grad_()
    w, b = (_f64(5, 5, 1, 1) * 0.3).requires_grad_(), (_f64(5) * 0.3).requires_grad_()
    logits = x.mean((2, 3)) @ w.flatten(1).T + b
    assert logits.abs().max() < 2.9
    assert torch.autograd.gradcheck(vf.ese, (x, w, b))


# ---------------------------------------------------------------------------- memory format


@pytest.mark.parametrize("block", ["eca", "ceca", "ese"])
def test_channels_last_is_kept(block):
    x = torch.randn(2, 8, 5, 3).to(memory_format=torch.channels_last)
    out = {
        "eca": lambda: vf.eca(x, torch.randn(1, 1, 3)),
        "ceca": lambda: vf.eca(x, torch.randn(1, 1, 3), circular=True),
        "ese": lambda: vf.ese(x, torch.randn(8, 8, 1, 1), torch.randn(8)),
    }[block]()
    assert out.is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------------------- validation

X = torch.randn(2, 8, 4, 4)

ERRORS = {
    "eca_x_3d": (
        ValueError,
        r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor of shape \(8, 4, 4\)",
        lambda: vf.eca(torch.randn(8, 4, 4), torch.randn(1, 1, 3)),
    ),
    "eca_x_int": (
        TypeError,
        r"x: expected a floating point tensor, got dtype torch.int64",
        lambda: vf.eca_gate(torch.ones(1, 8, 2, 2, dtype=torch.long), torch.randn(1, 1, 3)),
    ),
    "eca_weight_even": (
        ValueError,
        r"weight: expected shape \(1, 1, k\) with k odd, got \(1, 1, 4\)",
        lambda: vf.eca(X, torch.randn(1, 1, 4)),
    ),
    "eca_weight_shape": (
        ValueError,
        r"weight: expected shape \(1, 1, k\) with k odd, got \(2, 1, 3\)",
        lambda: vf.eca_gate(X, torch.randn(2, 1, 3)),
    ),
    "eca_weight_not_tensor": (
        TypeError,
        r"weight: expected a torch.Tensor, got \[1, 2, 3\] \(list\)",
        lambda: vf.eca(X, [1, 2, 3]),
    ),
    "eca_circular": (
        TypeError,
        r"circular: expected a bool, got 'yes' \(str\)",
        lambda: vf.eca(X, torch.randn(1, 1, 3), circular="yes"),
    ),
    "kernel_size_channels": (
        ValueError,
        r"channels: expected an int >= 1, got 0",
        lambda: vf.eca_kernel_size(0),
    ),
    "kernel_size_gamma": (
        ValueError,
        r"gamma: expected a positive number, got 0",
        lambda: vf.eca_kernel_size(64, gamma=0),
    ),
    "kernel_size_gamma_type": (
        TypeError,
        r"gamma: expected a positive number, got '2' \(str\)",
        lambda: vf.eca_kernel_size(64, gamma="2"),
    ),
    "kernel_size_b": (
        ValueError,
        r"b: expected a finite real number, got nan",
        lambda: vf.eca_kernel_size(64, b=float("nan")),
    ),
    "kernel_size_b_bool": (
        TypeError,
        r"b: expected a finite real number, got True \(bool\)",
        lambda: vf.eca_kernel_size(64, b=True),
    ),
    "ese_x_3d": (
        ValueError,
        r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor",
        lambda: vf.ese(torch.randn(8, 4, 4), torch.randn(8, 8), None),
    ),
    "ese_weight": (
        ValueError,
        r"weight: expected a weight of shape \(8, 8\[, 1, 1\]\) for x of shape \(2, 8, 4, 4\), "
        r"got shape \(4, 8\)",
        lambda: vf.ese_gate(X, torch.randn(4, 8), None),
    ),
    "ese_bias": (
        ValueError,
        r"bias: expected None or a tensor of shape \(8,\), got \(4,\)",
        lambda: vf.ese(X, torch.randn(8, 8, 1, 1), torch.randn(4)),
    ),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_errors(name):
    exception, match, call = ERRORS[name]
    with pytest.raises(exception, match=match):
        call()


@pytest.mark.parametrize("block", ["eca", "ceca", "ese"])
@pytest.mark.parametrize("shape", [(2, 16, 5, 7), (1, 12, 21, 23)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_channel_gate_matches_the_formula(block, shape, channels_last):
    """eca / ceca / ese on the fused channel gate (their registered excitations; backend
    ``cpu`` pins the operator at every size) equal the plain formula (backend ``reference``):
    output and the gradients of x and of the weights, float32, NCHW and channels_last."""
    from visattn.kernels import select_impl, use_backend

    x0 = torch.randn(shape)
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    if select_impl(x0) is None:
        pytest.skip("no fast kernels for this device / dtype")
    c = shape[1]
    if block == "ese":
        params = [torch.randn(c, c, 1, 1) / c**0.5, torch.randn(c)]
        run = lambda x, p: vf.ese(x, *p)  # noqa: E731
    else:
        params = [torch.randn(1, 1, 3)]
        run = lambda x, p: vf.eca(x, *p, circular=block == "ceca")  # noqa: E731
    results = []
    for backend in ("cpu", "reference"):
        x = x0.clone().requires_grad_()
        p = [t.clone().requires_grad_() for t in params]
        with use_backend(backend):
            y = run(x, p)
        dy = torch.ones_like(y) + torch.arange(y.numel()).view_as(y) % 3
        grads = torch.autograd.grad(y, [x, *p], dy)
        results.append((y, *grads))
    assert results[0][0].is_contiguous(memory_format=torch.channels_last) == channels_last
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
