"""Tests of the non-local block's formulas (functional/nonlocal_block.py; Wang et al.,
arXiv:1711.07971, eq. 1 and 3-6, Sec. 3.3's subsampling) against NumPy formulas written here,
position by position from the equations: new random inputs each run (the seed is printed by
tests/conftest.py), odd sizes, N = 1, one row, one position; float64 gradcheck at points away
from the ReLU of eq. 5 and from max-pool ties; every validation error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from visattn.functional import (
    NONLOCAL_PAIRWISE,
    non_local,
    non_local_affinity,
    non_local_response,
)

# (N, C, H, W): N = 1, odd and non-square, one row, one position
SHAPES = [(1, 6, 3, 7), (2, 4, 5, 1), (2, 8, 5, 4), (3, 6, 1, 5), (2, 4, 1, 1)]
BN_EPS = 1e-5


# ------------------------------------------------------------------------------ NumPy formulas


def np_embed(x, w, b):
    """A 1 x 1 convolution W x + b at every position: x (N, C, H, W), w (C', C[, 1, 1])."""
    out = np.einsum("oc,nchw->nohw", w.reshape(w.shape[0], -1), x)
    return out if b is None else out + b[None, :, None, None]


def np_maxpool_2x2(u):
    """2 x 2 max pool, stride 2, with the partial windows at odd edges kept (ceil mode)."""
    n, c, h, w = u.shape
    hp, wp = -(-h // 2), -(-w // 2)
    out = np.empty((n, c, hp, wp))
    for i in range(hp):
        for j in range(wp):
            out[:, :, i, j] = u[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].max((2, 3))
    return out


def np_affinity(x, p, pairwise="embedded_gaussian", scale=None, subsample=False):
    """A_ij = f(x_i, x_j) / C(x) from eq. 3 (exp(theta_i^T phi_j) / sum_j of it), eq. 4
    (theta_i^T phi_j / N_j) or eq. 5 (ReLU(w_f^T [theta_i; phi_j]) / N_j), the concatenated
    vector built explicitly; ``scale`` multiplies theta_i^T phi_j."""
    theta = np_embed(x, p["theta_weight"], p.get("theta_bias"))
    phi = np_embed(x, p["phi_weight"], p.get("phi_bias"))
    if subsample:
        phi = np_maxpool_2x2(phi)
    n, c_inter = theta.shape[:2]
    t = theta.reshape(n, c_inter, -1).transpose(0, 2, 1)  # (N, HW, C'): theta_i, row-major
    q = phi.reshape(n, c_inter, -1).transpose(0, 2, 1)  # (N, N_j, C')
    n_j = q.shape[1]
    if pairwise == "concatenation":
        w_f = p["concat_weight"].reshape(-1)
        pairs = np.concatenate(  # [theta_i; phi_j] for every (i, j): (N, HW, N_j, 2 C')
            [
                np.broadcast_to(t[:, :, None, :], (n, t.shape[1], n_j, c_inter)),
                np.broadcast_to(q[:, None, :, :], (n, t.shape[1], n_j, c_inter)),
            ],
            axis=-1,
        )
        return np.maximum(pairs @ w_f, 0) / n_j
    dots = np.einsum("nic,njc->nij", t, q) * (1.0 if scale is None else scale)
    if pairwise == "dot_product":
        return dots / n_j
    f = np.exp(dots - dots.max(-1, keepdims=True))  # exp(theta^T phi), shifted for range
    return f / f.sum(-1, keepdims=True)


def np_response(x, p, bn=None, subsample=False, **options):
    """BN(W_z y), y_i = sum_j A_ij g(x_j) (eq. 1); bn = (mean, var, weight, bias) or None."""
    a = np_affinity(x, p, subsample=subsample, **options)
    g = np_embed(x, p["g_weight"], p.get("g_bias"))
    if subsample:
        g = np_maxpool_2x2(g)
    n, c_inter = g.shape[:2]
    gj = g.reshape(n, c_inter, -1)  # (N, C', N_j)
    y = np.einsum("nij,ncj->nci", a, gj).reshape(n, c_inter, *x.shape[2:])
    out = np_embed(y, p["z_weight"], p.get("z_bias"))
    if bn is not None:
        mean, var, weight, bias = (v[None, :, None, None] for v in bn)
        out = (out - mean) / np.sqrt(var + BN_EPS) * weight + bias
    return out


def params(c, inter, *, bias=True, concat=False, dtype=torch.float64):
    """Random W_theta, W_phi, W_g, W_z (1 x 1 convolution layout) and biases, and w_f."""
    p = {
        "theta_weight": torch.randn(inter, c, 1, 1, dtype=dtype) / c**0.5,
        "theta_bias": torch.randn(inter, dtype=dtype) * 0.1 if bias else None,
        "phi_weight": torch.randn(inter, c, 1, 1, dtype=dtype) / c**0.5,
        "phi_bias": torch.randn(inter, dtype=dtype) * 0.1 if bias else None,
        "g_weight": torch.randn(inter, c, dtype=dtype) / c**0.5,  # the 2-D layout too
        "g_bias": torch.randn(inter, dtype=dtype) * 0.1 if bias else None,
        "z_weight": torch.randn(c, inter, 1, 1, dtype=dtype) / inter**0.5,
        "z_bias": torch.randn(c, dtype=dtype) * 0.1 if bias else None,
    }
    if concat:
        p["concat_weight"] = torch.randn(1, 2 * inter, 1, 1, dtype=dtype)
    return p


def as_numpy(p):
    return {k: None if v is None else v.detach().double().numpy() for k, v in p.items()}


WEIGHTS = ("theta_weight", "theta_bias", "phi_weight", "phi_bias", "g_weight", "g_bias",
           "z_weight", "z_bias")  # fmt: skip


def weights(p):
    return [p[k] for k in WEIGHTS]


def random_bn(c, dtype=torch.float64):
    bn = nn.BatchNorm2d(c).to(dtype).eval()
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_(0, 1)
        bn.bias.normal_(0, 0.3)
    state = (bn.running_mean, bn.running_var, bn.weight, bn.bias)
    return bn, tuple(v.detach().double().numpy() for v in state)


# ------------------------------------------------------------------------------ the formulas

CASES = [
    {"pairwise": "embedded_gaussian"},
    {"pairwise": "embedded_gaussian", "scale": 0.35},
    {"pairwise": "dot_product"},
    {"pairwise": "dot_product", "scale": 2.0},
    {"pairwise": "concatenation"},
    {"pairwise": "embedded_gaussian", "subsample": True},
    {"pairwise": "concatenation", "subsample": True},
]


@pytest.mark.parametrize("options", CASES, ids=lambda o: "-".join(map(str, o.values())))
@pytest.mark.parametrize("shape", SHAPES)
def test_affinity_is_eq_3_to_5(options, shape):
    n, c, h, w = shape
    inter = max(c // 2, 1)
    p = params(c, inter, concat=options["pairwise"] == "concatenation")
    x = torch.randn(shape, dtype=torch.float64)
    kw = {"concat_weight": p.get("concat_weight"), **options}
    a = non_local_affinity(x, *weights(p)[:4], **kw)
    n_j = (-(-h // 2) * -(-w // 2)) if options.get("subsample") else h * w
    assert a.shape == (n, h * w, n_j)
    np.testing.assert_allclose(a.numpy(), np_affinity(x.numpy(), as_numpy(p), **options),
                               rtol=1e-11, atol=1e-13)  # fmt: skip
    if options["pairwise"] == "embedded_gaussian":  # C(x) = sum_j f: rows sum to 1
        torch.testing.assert_close(a.sum(-1), torch.ones(n, h * w, dtype=torch.float64))


@pytest.mark.parametrize("options", CASES, ids=lambda o: "-".join(map(str, o.values())))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_bn", [False, True])
def test_block_is_eq_6(options, shape, with_bn):
    _n, c, _h, _w = shape
    inter = max(c // 2, 1)
    p = params(c, inter, bias=not with_bn, concat=options["pairwise"] == "concatenation")
    bn, bn_np = random_bn(c) if with_bn else (None, None)
    x = torch.randn(shape, dtype=torch.float64)
    kw = {"concat_weight": p.get("concat_weight"), "norm": bn, **options}
    want = np_response(x.numpy(), as_numpy(p), bn=bn_np, **options)
    with torch.no_grad():
        term, block = non_local_response(x, *weights(p), **kw), non_local(x, *weights(p), **kw)
    np.testing.assert_allclose(term.numpy(), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(block.numpy(), x.numpy() + want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pairwise", NONLOCAL_PAIRWISE)
def test_float32(pairwise):
    """float32 against the float64 formula. Measured over 200 seeds x SHAPES x pairwise x
    subsample: max |error| 6.3e-6 on outputs up to ~47 (the error beyond atol 2e-6 is at most
    3.9e-7 |want|); atol 2e-6, rtol 2e-6 (5x)."""
    for shape in SHAPES:
        for subsample in (False, True):
            c = shape[1]
            p = params(c, c // 2, concat=pairwise == "concatenation", dtype=torch.float32)
            x = torch.randn(shape)
            kw = {"pairwise": pairwise, "subsample": subsample}
            want = x.double().numpy() + np_response(x.double().numpy(), as_numpy(p), **kw)
            got = non_local(x, *weights(p), concat_weight=p.get("concat_weight"), **kw)
            np.testing.assert_allclose(got.double().numpy(), want, rtol=2e-6, atol=2e-6)


def test_channels_last_kept():
    """The block's output and its term keep x's memory format, with the same values."""
    p = params(8, 4)
    bn, _ = random_bn(8)
    x = torch.randn(2, 8, 5, 6, dtype=torch.float64)
    xc = x.to(memory_format=torch.channels_last)
    for fn in (non_local, non_local_response):
        a, b = fn(x, *weights(p), norm=bn), fn(xc, *weights(p), norm=bn)
        assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(b, a)


def test_bn_starting_at_zero_makes_the_block_the_identity():
    """Sec. 4.1: with the BatchNorm's scale (and shift) at 0, z = x exactly."""
    p = params(6, 3)
    bn = nn.BatchNorm2d(6).double()
    nn.init.zeros_(bn.weight)
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    assert torch.equal(non_local(x, *weights(p), norm=bn), x)


def _ties_far(u, margin=1e-4):
    """Whether every 2 x 2 pooling window of u has a unique max, by more than ``margin``."""
    n, c, h, w = u.shape
    padded = torch.nn.functional.pad(u, (0, w % 2, 0, h % 2), value=-1e9)
    win = padded.unfold(2, 2, 2).unfold(3, 2, 2).reshape(n, c, -1, 4)
    top = win.topk(2, -1).values
    return bool(((top[..., 0] - top[..., 1]) > margin).all())


# every code path once: the scale, each pairwise function, the subsampling of phi and g
GRADCHECK_CASES = [CASES[1], CASES[2], CASES[5], CASES[6]]


@pytest.mark.parametrize("options", GRADCHECK_CASES, ids=lambda o: "-".join(map(str, o.values())))
def test_gradcheck(options):
    """float64 gradcheck in x and every weight, at a point away from the ReLU of eq. 5 and from
    max-pool ties."""
    concat = options["pairwise"] == "concatenation"
    for _ in range(20):
        p = params(4, 2, concat=concat)
        x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
        with torch.no_grad():
            ok = True
            if concat:
                t = torch.einsum("oc,nchw->nohw", p["theta_weight"].flatten(1), x)
                t = t + p["theta_bias"][:, None, None]
                q = torch.einsum("oc,nchw->nohw", p["phi_weight"].flatten(1), x)
                q = q + p["phi_bias"][:, None, None]
                if options.get("subsample"):
                    ok = _ties_far(q)
                    q = torch.nn.functional.max_pool2d(q, 2, 2, ceil_mode=True)
                w = p["concat_weight"].flatten()
                pre = (w[:2] @ t.flatten(2))[:, :, None] + (w[2:] @ q.flatten(2))[:, None, :]
                ok = ok and bool((pre.abs() > 1e-4).all())
            elif options.get("subsample"):
                for name in ("phi", "g"):
                    u = torch.einsum("oc,nchw->nohw", p[f"{name}_weight"].flatten(1), x)
                    ok = ok and _ties_far(u + p[f"{name}_bias"][:, None, None])
        if ok:
            break
    else:
        pytest.fail("no random point away from the kinks in 20 draws")
    extra = (p["concat_weight"],) if concat else ()
    opts = {k: v for k, v in options.items()}

    def block(u, *ws):
        cw = ws[8] if concat else None
        return non_local(u, *ws[:8], concat_weight=cw, **opts)

    inputs = (x, *weights(p), *extra)
    inputs = tuple(v.requires_grad_() for v in inputs)
    assert torch.autograd.gradcheck(block, inputs)

    def affinity(u, *ws):
        cw = ws[4] if concat else None
        return non_local_affinity(u, *ws[:4], concat_weight=cw, **opts)

    assert torch.autograd.gradcheck(affinity, (inputs[0], *inputs[1:5], *extra))


# ------------------------------------------------------------------------------ errors


def _call(fn, **changes):
    p = params(8, 4)
    kw = {k: changes.pop(k) for k in ("pairwise", "concat_weight", "scale", "subsample")
          if k in changes}  # fmt: skip
    p.update(changes)
    x = p.pop("x", torch.randn(2, 8, 3, 3, dtype=torch.float64))
    if fn is non_local_affinity:
        return fn(x, *weights(p)[:4], **kw)
    return fn(x, *weights(p), **kw)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"x": torch.randn(8, 3, 3)}, ValueError,
         r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor of shape \(8, 3, 3\)"),
        ({"theta_weight": torch.randn(4, 6, 1, 1)}, ValueError,
         r"theta_weight: expected a weight of shape \(hidden, 8\[, 1, 1\]\) for x of shape "
         r"\(2, 8, 3, 3\), got shape \(4, 6, 1, 1\)"),
        ({"phi_weight": torch.randn(3, 8, 1, 1)}, ValueError,
         r"phi_weight: expected a weight of shape \(4, 8\[, 1, 1\]\) .*got shape \(3, 8, 1, 1\)"),
        ({"theta_bias": torch.randn(5)}, ValueError,
         r"theta_bias: expected None or a tensor of shape \(4,\), got \(5,\)"),
        ({"pairwise": "gaussian"}, ValueError,
         r"pairwise: expected one of 'embedded_gaussian', 'dot_product', 'concatenation', "
         r"got 'gaussian'"),
        ({"pairwise": "concatenation"}, ValueError,
         r"concat_weight: expected w_f of shape \(1, 8\[, 1, 1\]\) for "
         r"pairwise='concatenation', got None"),
        ({"pairwise": "concatenation", "concat_weight": torch.randn(1, 4, 1, 1)}, ValueError,
         r"concat_weight: expected a weight of shape \(1, 8\[, 1, 1\]\) for 4 inter channels, "
         r"got shape \(1, 4, 1, 1\)"),
        ({"concat_weight": torch.randn(1, 8, 1, 1)}, ValueError,
         r"concat_weight: expected None for pairwise='embedded_gaussian' \(only "
         r"'concatenation' has w_f\), got a 4-D tensor of shape \(1, 8, 1, 1\)"),
        ({"pairwise": "concatenation", "concat_weight": torch.randn(1, 8), "scale": 0.5},
         ValueError, r"scale: expected None for pairwise='concatenation' .*got 0.5"),
        ({"scale": float("inf")}, ValueError,
         r"scale: expected None or a finite real number, got inf"),
        ({"scale": "timm"}, ValueError, r"scale: expected None or a finite real number, got 'timm'"),
        ({"subsample": 1}, TypeError, r"subsample: expected a bool, got 1 \(int\)"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("fn", [non_local, non_local_response, non_local_affinity])
def test_errors_name_the_argument_the_expectation_and_the_value(fn, changes, error, message):
    with pytest.raises(error, match=message):
        _call(fn, **dict(changes))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"g_weight": torch.randn(4, 7)},
         r"g_weight: expected a weight of shape \(4, 8\[, 1, 1\]\) .*got shape \(4, 7\)"),
        ({"g_bias": torch.randn(8)}, r"g_bias: expected None or a tensor of shape \(4,\), got \(8,\)"),
        ({"z_weight": torch.randn(8, 5, 1, 1)},
         r"z_weight: expected a weight of shape \(8, 4\[, 1, 1\]\) .*got shape \(8, 5, 1, 1\)"),
        ({"z_bias": torch.randn(4)}, r"z_bias: expected None or a tensor of shape \(8,\), got \(4,\)"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("fn", [non_local, non_local_response])
def test_block_weight_errors(fn, changes, message):
    with pytest.raises(ValueError, match=message):
        _call(fn, **dict(changes))
