"""Fused SE (arXiv:1709.01507) and CBAM (arXiv:1807.06521) vs the plain formulas.

Every case runs the default (fast) backend and the reference backend on the same random inputs
and compares the output and every gradient (input and parameters). Devices: CPU (C++ kernels)
and CUDA (Triton) when present; ``test_kernels_triton.py`` reruns this file with the Triton
interpreter on CPU (``VISATTN_TEST_FAST_BACKEND=triton``).
"""

from __future__ import annotations

import os

import pytest
import torch

import visattn
from visattn.functional import cbam, cbam_reference, squeeze_excite, squeeze_excite_reference
from visattn.kernels import get_backend, select_impl, use_backend

FAST = os.environ.get("VISATTN_TEST_FAST_BACKEND", "auto")
INTERPRETED = FAST == "triton"
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# The third shape has H W >= 128: the CPU kernels then split the positions of a sample into
# several tiles whose partial sums are added afterwards. Few positions in all: CBAM's max over
# channels of M_c x can route its gradient to another channel where two channels are within the
# last bit of each other (the fused M_c and the reference's differ by rounding); the chance of
# such a near-tie grows with the number of positions compared.
# Interpreted (Triton) shapes: one per tile shape of triton_kernels._tiles (64 x 64, 32 x 128
# with two position tiles, 256 x 16).
SHAPES = (
    [(1, 13, 5, 7), (3, 40, 9, 6), (1, 23, 13, 11)]
    if not INTERPRETED
    else [(2, 37, 5, 7), (1, 5, 12, 11), (2, 3, 3, 4)]
)
TOL = {torch.float32: 2e-4, torch.bfloat16: 3e-2}


def _fast_impl_expected(device: str) -> None:
    with use_backend(FAST):
        impl = select_impl(torch.empty(1, device=device))
    if impl is None:
        pytest.skip("no fast kernel on this machine (no compiler / no triton)")


def _close(got: torch.Tensor, want: torch.Tensor, tol: float, what: str) -> None:
    got, want = got.float(), want.float()
    err = (got - want).abs().max().item()
    scale = 1.0 + want.abs().max().item()
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol * scale:.3g}"


def _close_modules(got, want, tol: float, buffer_tol: float = 1e-5) -> None:
    """Two twin modules after backward: every parameter's gradient, then every buffer."""
    for (name, p), q in zip(got.named_parameters(), want.parameters(), strict=True):
        _close(p.grad, q.grad, tol, f"grad {name}")
    for (name, b), r in zip(got.named_buffers(), want.buffers(), strict=True):
        _close(b.float(), r.float(), buffer_tol, name)


def _run(fn, x, params, grad):
    x = x.detach().requires_grad_(True)
    ps = [p.detach().requires_grad_(True) if p is not None else None for p in params]
    y = fn(x, *ps)
    y.backward(grad)
    return y.detach(), [x.grad] + [p.grad for p in ps if p is not None]


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _compare(fast_fn, ref_fn, x, params, dtype):
    """Fast path in ``dtype`` vs the reference in float32 on the same (rounded) values."""
    grad = torch.randn(x.shape, device=x.device).to(dtype)
    xs = x.to(dtype)
    ps = [p.to(dtype) if p is not None else None for p in params]
    with use_backend(FAST):
        y1, g1 = _run(fast_fn, xs, ps, grad)
    with use_backend("reference"):
        y2, g2 = _run(ref_fn, xs.float(), [p.float() if p is not None else None for p in ps],
                      grad.float())  # fmt: skip
    assert y1.dtype == dtype and g1[0].dtype == dtype
    assert y1.is_contiguous(memory_format=torch.channels_last) == xs.is_contiguous(
        memory_format=torch.channels_last
    )
    _close(y1, y2, TOL[dtype], "output")
    for i, (a, b) in enumerate(zip(g1, g2, strict=True)):
        _close(a, b, TOL[dtype], f"gradient {i}")


def _se_params(c: int, hidden: int, device: str, bias: bool = True):
    w1 = torch.randn(hidden, c, 1, 1, device=device) / c**0.5
    w2 = torch.randn(c, hidden, 1, 1, device=device) / hidden**0.5
    b1 = torch.randn(hidden, device=device) if bias else None
    b2 = torch.randn(c, device=device) if bias else None
    return [w1, b1, w2, b2]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "squeeze,gate,bias",
    [("avg", "sigmoid", True), ("max", "sigmoid", True), ("avg", "hard_sigmoid", False),
     ("max", "tanh", True), ("avg", "relu", True)],
)  # fmt: skip
def test_se_matches_reference(device, dtype, channels_last, shape, squeeze, gate, bias):
    _fast_impl_expected(device)
    _n, c, _h, _w = shape
    x = _layout(torch.randn(shape, device=device), channels_last)
    params = _se_params(c, 5, device, bias)
    kw = {"squeeze": squeeze}
    _compare(lambda x, *p: squeeze_excite(x, *p, gate=gate, **kw),
             lambda x, *p: squeeze_excite_reference(x, *p, gate=gate, **kw), x, params, dtype)  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "pool,kernel_size,bias",
    [(("avg", "max"), 7, True), (("avg",), 3, True), (("max",), 7, False), (("avg", "max"), 3, False)],
)  # fmt: skip
def test_cbam_matches_reference(device, dtype, channels_last, shape, pool, kernel_size, bias):
    _fast_impl_expected(device)
    _n, c, _h, _w = shape
    x = _layout(torch.randn(shape, device=device), channels_last)
    params = _se_params(c, 4, device, bias)
    conv_w = torch.randn(1, len(pool), kernel_size, kernel_size, device=device) / kernel_size
    conv_b = torch.randn(1, device=device) if bias else None
    params += [conv_w, conv_b]
    _compare(lambda x, *p: cbam(x, *p, pool=pool), lambda x, *p: cbam_reference(x, *p, pool=pool),
             x, params, dtype)  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("h, w", [(5, 6), (12, 13)])
def test_max_ties_share_the_gradient_like_amax(device, channels_last, h, w):
    """Integer-valued x and a constant M_c: many tied maxima over positions and over channels."""
    _fast_impl_expected(device)
    n, c = 2, 14
    x = _layout(torch.randint(-2, 3, (n, c, h, w), device=device).float(), channels_last)
    w1 = torch.randn(3, c, 1, 1, device=device)
    w2 = torch.zeros(c, 3, 1, 1, device=device)
    b1 = torch.randn(3, device=device)
    b2 = torch.full((c,), 0.3, device=device)
    conv_w = torch.randn(1, 2, 3, 3, device=device)
    conv_b = torch.randn(1, device=device)
    # Spatial ties exist: several channels reach the per-position maximum.
    assert ((x == x.amax(1, keepdim=True)).sum(1) > 1).any()
    assert ((x == x.amax((2, 3), keepdim=True)).sum((2, 3)) > 1).any()
    _compare(lambda x, *p: cbam(x, *p), lambda x, *p: cbam_reference(x, *p), x,
             [w1, b1, w2, b2, conv_w, conv_b], torch.float32)  # fmt: skip
    _compare(lambda x, *p: squeeze_excite(x, *p, squeeze="max"),
             lambda x, *p: squeeze_excite_reference(x, *p, squeeze="max"), x, [w1, b1, w2, b2],
             torch.float32)  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
def test_layers_use_fast_path_and_match_reference(device):
    _fast_impl_expected(device)
    x = torch.randn(2, 24, 7, 5, device=device)
    se = visattn.SqueezeExcite(24, reduction=4).to(device)
    blk = visattn.CBAM(24, reduction=4).to(device)
    for layer in (se, blk):
        with use_backend(FAST), torch.autograd.profiler.profile() as prof:
            y = layer(x)
        assert any(e.name.startswith("visattn::") for e in prof.function_events)
        with use_backend("reference"):
            _close(y, layer(x), 1e-4, type(layer).__name__)


@pytest.mark.parametrize(
    "kwargs",
    [{"order": "spatial_first"}, {"order": "parallel"}, {"pool": ("max", "avg")}],
)
def test_cbam_options_without_kernel_fall_back(kwargs):
    """Options the fused kernel does not cover run the formulas: same result in both backends."""
    layer = visattn.CBAM(16, reduction=4, **kwargs).eval()
    x = torch.randn(2, 16, 6, 5)
    with torch.autograd.profiler.profile() as prof:
        y = layer(x)
    assert not any(e.name.startswith("visattn::") for e in prof.function_events)
    with use_backend("reference"):
        torch.testing.assert_close(y, layer(x))


def test_backend_switch(monkeypatch):
    x = torch.randn(1, 8, 3, 3)
    monkeypatch.setenv("VISATTN_BACKEND", "reference")
    assert get_backend() == "reference" and select_impl(x) is None
    with use_backend("auto"):
        assert get_backend() == "auto"
    monkeypatch.setenv("VISATTN_BACKEND", "fastest")
    with pytest.raises(ValueError, match="VISATTN_BACKEND"):
        get_backend()
    with pytest.raises(ValueError, match="backend"), use_backend("nope"):
        pass
    monkeypatch.delenv("VISATTN_BACKEND")
    assert select_impl(x.double()) is None  # float64 has no kernel: reference


def test_bad_weights_name_the_argument():
    x = torch.randn(1, 8, 3, 3)
    with pytest.raises(ValueError, match="fc1_weight"):
        squeeze_excite(x, torch.randn(2, 7, 1, 1), None, torch.randn(8, 2, 1, 1), None)
    with pytest.raises(ValueError, match="conv_weight"):
        w = _se_params(8, 2, "cpu")
        cbam(x, *w, torch.randn(1, 1, 7, 7), None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("folded", [False, True], ids=["plain", "in_norm"])
def test_opcheck(device, folded):
    """Every operator, without and with a folded input BatchNorm (``in_norm``: the operators'
    own autograd does not cover that case, so those calls take inputs without gradients)."""
    _fast_impl_expected(device)
    with use_backend(FAST):
        impl = select_impl(torch.empty(1, device=device))
    from visattn.kernels import ops  # noqa: F401

    x = torch.randn(2, 10, 4, 5, device=device, requires_grad=not folded)
    w1, b1, w2, b2 = (p.requires_grad_(not folded) for p in _se_params(10, 3, device))
    conv_w = torch.randn(1, 2, 3, 3, device=device, requires_grad=not folded)
    conv_b = torch.randn(1, device=device, requires_grad=not folded)
    in_norm = None
    if folded:  # rows al, be, mu, 1/sigma, beta
        r = torch.rand(5, 10, device=device)
        in_norm = torch.stack([r[0] + 0.5, r[1] - 0.5, r[2] - 0.5, r[3] + 0.5, r[4] - 0.5])
    torch.library.opcheck(
        torch.ops.visattn.squeeze_excite.default,
        (x, w1, b1, w2, b2, in_norm, "max", "sigmoid", impl),
    )
    bn = (torch.rand(1, device=device) + 0.5, torch.randn(1, device=device))
    for mode, stats in ((0, (None, None)), (1, (None, None)), (2, (torch.randn(1, device=device),
                        torch.rand(1, device=device) + 0.5))):  # fmt: skip
        torch.library.opcheck(
            torch.ops.visattn.cbam.default,
            (x, w1, b1, w2, b2, conv_w, conv_b, *bn, *stats, in_norm, mode, 1e-5, True, True,
             impl),
        )  # fmt: skip
    dy = torch.randn(2, 10, 4, 5, device=device)
    with torch.no_grad():
        _, *saved = torch.ops.visattn.squeeze_excite(x, w1, b1, w2, b2, in_norm, "avg", "sigmoid",
                                                     impl)  # fmt: skip
    torch.library.opcheck(
        torch.ops.visattn.squeeze_excite_backward.default,
        (dy, x.detach(), *saved, w1.detach(), None, w2.detach(), None, in_norm, folded, "avg",
         "sigmoid", impl, True),
    )  # fmt: skip
    # bfloat16 activations with float32 weights (autocast), no biases: the empty gradients of
    # the absent biases must have the dtype the fake kernel gives them
    xb, dyb = x.detach().bfloat16(), dy.bfloat16()
    with torch.no_grad():
        _, *saved = torch.ops.visattn.squeeze_excite(xb, w1, None, w2, None, in_norm, "max",
                                                     "relu", impl)  # fmt: skip
    torch.library.opcheck(
        torch.ops.visattn.squeeze_excite_backward.default,
        (dyb, xb, *saved, w1.detach(), None, w2.detach(), None, in_norm, False, "max", "relu",
         impl, True),
    )  # fmt: skip
    with torch.no_grad():
        _, a, b, zc, pooled, h, _ = torch.ops.visattn.cbam(
            x, w1, b1, w2, b2, conv_w, conv_b, *bn, None, None, in_norm, 1, 1e-5, True, True, impl
        )
    params = [t.detach() for t in (w1, b1, w2, b2, conv_w, conv_b)]
    torch.library.opcheck(
        torch.ops.visattn.cbam_backward.default,
        (dy, x.detach(), a, b, zc, pooled, h, *params, *bn, None, None, in_norm, folded, 1, 1e-5,
         True, True, impl, True),
    )  # fmt: skip


@pytest.mark.skipif(INTERPRETED, reason="compile is covered on the native backend")
def test_torch_compile_of_layers_matches_eager():
    import copy

    model = torch.nn.Sequential(
        visattn.SqueezeExcite(16, reduction=4),
        visattn.CBAM(16, reduction=4),
        visattn.CBAM(16, reduction=4, norm=True),  # training mode: updates running statistics
    )
    twin = copy.deepcopy(model)
    x = torch.randn(2, 16, 5, 6)
    y_eager = twin(x)
    compiled = torch.compile(model, backend="inductor", fullgraph=True)
    xc = x.clone().requires_grad_(True)
    y = compiled(xc)
    torch.testing.assert_close(y, y_eager, rtol=1e-4, atol=1e-5)
    for a, b in zip(model.buffers(), twin.buffers(), strict=True):  # one update each so far
        torch.testing.assert_close(a, b)
    y.sum().backward()
    xe = x.clone().requires_grad_(True)
    twin(xe).sum().backward()
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_blocks_under_autocast(device):
    """Autocast leaves the fused blocks' float32 parts alone; the output keeps x's dtype."""
    _fast_impl_expected(device)
    x = torch.randn(2, 24, 6, 5, device=device).to(torch.bfloat16).requires_grad_(True)
    model = torch.nn.Sequential(
        visattn.SqueezeExcite(24, reduction=4), visattn.CBAM(24, reduction=4)
    )
    model = model.to(device)
    with torch.autocast(device, dtype=torch.bfloat16), use_backend(FAST):
        y = model(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    with use_backend("reference"):
        want = model(x.detach().float())
    _close(y, want, TOL[torch.bfloat16], "autocast output")
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_empty_inputs(device):
    _fast_impl_expected(device)
    base = torch.randn(2, 10, 9, 14, device=device)
    x = base[:, :, :, ::2]  # neither NCHW- nor channels_last-contiguous
    params = _se_params(10, 3, device)
    conv = [torch.randn(1, 2, 3, 3, device=device), torch.randn(1, device=device)]
    _compare(squeeze_excite, squeeze_excite_reference, x, params, torch.float32)
    _compare(cbam, cbam_reference, x, params + conv, torch.float32)
    empty = torch.randn(0, 10, 4, 4, device=device)
    with use_backend(FAST):
        assert squeeze_excite(empty, *params).shape == empty.shape
        assert cbam(empty, *params, *conv).shape == empty.shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_cbam_with_batchnorm_matches_reference(device, channels_last, momentum):
    """norm=True (the official layout): train mode (batch statistics, running-statistics update)
    and eval mode, output and every gradient including BatchNorm's weight and bias."""
    _fast_impl_expected(device)
    import copy

    layer = visattn.CBAM(20, reduction=4, norm=True).to(device)
    layer.spatial.bn.momentum = momentum
    with torch.no_grad():
        layer.spatial.bn.weight.fill_(1.3)
        layer.spatial.bn.bias.fill_(-0.2)
    twin = copy.deepcopy(layer)
    for training in (True, True, False):
        layer.train(training)
        twin.train(training)
        x = _layout(torch.randn(3, 20, 7, 9, device=device), channels_last).requires_grad_(True)
        xr = x.detach().clone().requires_grad_(True)
        with use_backend(FAST), torch.autograd.profiler.profile() as prof:
            y = layer(x)
        assert any(e.name.startswith("visattn::cbam") for e in prof.function_events)
        with use_backend("reference"):
            y_ref = twin(xr)
        grad = torch.randn_like(y)
        y.backward(grad)
        y_ref.backward(grad)
        _close(y, y_ref, 2e-4, "output")
        _close(x.grad, xr.grad, 2e-4, "grad x")
        _close_modules(layer, twin, 2e-4)


def test_flop_counter_counts_the_fused_blocks_like_the_formulas():
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 32, 9, 7, requires_grad=True)
    for layer in (visattn.SqueezeExcite(32, reduction=4), visattn.CBAM(32, reduction=4)):
        counts = []
        for backend in (FAST, "reference"):
            with use_backend(backend), FlopCounterMode(display=False) as counter:
                layer(x).sum().backward()
            counts.append(counter.get_total_flops())
        assert counts[0] == counts[1] > 0, type(layer).__name__


@pytest.mark.skipif(not INTERPRETED, reason="run by test_kernels_triton.py (interpreter)")
@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("pools", [(True, False), (False, True), (True, True)])
def test_triton_excitation_kernels_match_their_pytorch_formulas(gate, pools):
    """visattn.kernels.triton_kernels.excite / excite_backward / excite_wgrad against
    visattn.kernels._excite, with sizes that cross every tile (samples, channels, hidden)."""
    from visattn.kernels import _excite, triton_kernels

    use_avg, use_max = pools
    k = int(use_avg) + int(use_max)
    n, c, hid = 19, 70, 35  # tiles: 16 samples, 64 channels, 32 hidden units
    z = torch.randn(k, n, c)
    w1, w2 = torch.randn(hid, c) / c**0.5, torch.randn(c, hid) / hid**0.5
    for b1, b2 in ((torch.randn(hid), torch.randn(c)), (None, None)):
        got = triton_kernels.excite(z, w1, b1, w2, b2, gate)
        want = _excite.excite(z, w1, b1, w2, b2, gate)
        for name, a, b in zip(("h", "l", "s"), got, want, strict=True):
            _close(a, b, 1e-5, name)
        h, l, s = want
        ds, count = torch.randn(n, c), torch.randint(1, 4, (n, c)).float()
        args = (ds, l, s, h, w1, w2, count, 37, use_avg, use_max, gate)
        got = triton_kernels.excite_backward(*args)
        want = _excite.excite_backward(*args)
        for name, a, b in zip(("dl", "dh", "cavg", "cmax"), got, want, strict=True):
            assert (a is None) == (b is None), name
            if a is not None:
                _close(a, b, 1e-5, name)
        dl, dh = want[:2]
        got = triton_kernels.excite_wgrad(dl, dh, z, h)
        want = _excite.excite_wgrad(dl, dh, z, h)
        for name, a, b in zip(("dw1", "db1", "dw2", "db2"), got, want, strict=True):
            _close(a, b, 1e-5, name)


@pytest.mark.skipif(not INTERPRETED, reason="run by test_kernels_triton.py (interpreter)")
@pytest.mark.parametrize("use_max", [False, True])
@pytest.mark.parametrize("batch", [False, True])
def test_triton_fold_kernels_match_their_pytorch_formulas(use_max, batch):
    """visattn.kernels.triton_kernels.fold / fold_backward against visattn.kernels._fold, with
    sizes that cross every tile (256 channels forward; 16 samples and 64 channels backward),
    with and without the BatchNorm's affine parameters."""
    from visattn.kernels import _fold, triton_kernels

    n, c, positions = 37, 300, 29
    mean, var = torch.randn(c), torch.rand(c) + 0.1
    for weight, bias in ((torch.randn(c), torch.randn(c)), (None, None)):
        got = triton_kernels.fold(weight, bias, mean, var, 1e-5)
        want = _fold.fold(weight, bias, mean, var, 1e-5)
        _close(got, want, 1e-6, "rows")
        sums = [torch.randn(n, c) for _ in range(5)]
        tie = [torch.randn(n, c), torch.randint(1, 4, (n, c)).float(), torch.randn(n, c)]
        args = (want, batch, *sums, *(tie if use_max else (None, None, None)), positions)
        got = triton_kernels.fold_backward(*args)
        for name, a, b in zip(("rows", "dnorm"), got, _fold.fold_backward(*args), strict=True):
            _close(a, b, 1e-5, name)
