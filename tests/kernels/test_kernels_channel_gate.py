"""The generic channel gate y = x * E(pool(x), *params) with a pluggable excitation E
(``visattn::channel_gate``, :func:`visattn.functional.channel_gate`) against the plain formula.

The excitations registered here stand for the pool -> transform -> gate -> scale mechanisms:
SE's MLP (Hu et al., arXiv:1709.01507, eq. 3; the operator must then equal the fused
``visattn::squeeze_excite``), ECA's 1-D convolution across channels (Wang et al.,
arXiv:1910.03151, eq. 2) with zero and with circular padding, effective SE's single FC with a
hard sigmoid (Lee and Park, CenterMask, arXiv:1911.06667) and the parameter-free sigmoid of
Gather-Excite's theta^- with global extent (Hu et al., arXiv:1810.12348). The plain formula is
checked against NumPy, the operator against the plain formula (output and every gradient) on
every backend present: the C++ kernels on CPU, Triton on CUDA, and the Triton kernels under the
interpreter when ``test_kernels_triton.py`` reruns this file (``VISATTN_TEST_FAST_BACKEND``).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from visattn.functional import channel_gate, channel_gate_reference, register_excitation
from visattn.kernels import select_impl, use_backend

_FAST_ENV = os.environ.get("VISATTN_TEST_FAST_BACKEND")
INTERPRETED = _FAST_ENV == "triton"


def fast(device) -> str:
    """The backend that pins the operator on ``device`` (``auto`` runs the plain formula for
    small CPU maps, ``CPU_CHANNEL_GATE_MIN_POSITIONS``): the environment's, else ``cpu`` /
    ``triton``."""
    if _FAST_ENV:
        return _FAST_ENV
    return "cpu" if torch.device(device).type == "cpu" else "triton"


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (N, C, H, W): odd sizes, N = 1, H W >= 128 (the CPU kernels split a sample's positions in
# tiles); under the interpreter one shape per Triton tile shape (64 x 64, 32 x 128, 256 x 16).
SHAPES = (
    [(1, 13, 5, 7), (3, 40, 9, 6), (2, 23, 13, 11)]
    if not INTERPRETED
    else [(2, 37, 5, 7), (1, 5, 12, 11), (2, 3, 3, 4)]
)
# Measured over 20 seeds x every case of test_fast_matches_reference on CPU, the largest error
# relative to 1 + max |reference| over the output and every gradient: float32 1.8e-6 (the C++
# kernels' sums run in another order than PyTorch's reductions), bfloat16 3.4e-3 (the output
# and dx rounded to bfloat16); tolerances about 10x that (bfloat16: the fused SE's tests' 3e-2).
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


# ----------------------------------------------------------------------------- excitations


def _se_mlp(z, w1, b1, w2, b2):
    """SE's excitation sigmoid(W_2 ReLU(W_1 z + b_1) + b_2), weights as 1 x 1 convolutions'."""
    return torch.sigmoid(F.linear(torch.relu(F.linear(z, w1.flatten(1), b1)), w2.flatten(1), b2))


def _eca(z, w):
    """ECA: sigmoid(conv1d(z, w, padding k // 2)) across channels, w (1, 1, k)."""
    return torch.sigmoid(F.conv1d(z.unsqueeze(1), w, padding=w.shape[-1] // 2)).squeeze(1)


def _eca_circular(z, w):
    """ECA with circular padding (timm's CecaModule)."""
    pad = w.shape[-1] // 2
    return torch.sigmoid(F.conv1d(F.pad(z.unsqueeze(1), (pad, pad), mode="circular"), w))[:, 0]


def _ese(z, w, b):
    """Effective SE: hard_sigmoid(W z + b) as a 1 x 1 convolution, returned (N, C, 1, 1)."""
    return F.hardsigmoid(F.conv2d(z[:, :, None, None], w, b))


EXCITATIONS = {
    "test_se_mlp": _se_mlp,
    "test_eca": _eca,
    "test_eca_circular": _eca_circular,
    "test_ese": _ese,
    "test_sigmoid": torch.sigmoid,  # Gather-Excite theta^-, global extent: no parameters
}
for _name, _fn in EXCITATIONS.items():
    register_excitation(_name, _fn)


def _params(name: str, c: int, device="cpu", dtype=torch.float32) -> list[torch.Tensor]:
    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device=device) * scale).to(dtype)

    if name == "test_se_mlp":
        hid = 5
        return [rand(hid, c, 1, 1, scale=c**-0.5), rand(hid), rand(c, hid, 1, 1, scale=hid**-0.5),
                rand(c)]  # fmt: skip
    if name in ("test_eca", "test_eca_circular"):
        return [rand(1, 1, 5 if c >= 5 else 3)]  # circular padding needs k // 2 <= C
    if name == "test_ese":
        return [rand(c, c, 1, 1, scale=c**-0.5), rand(c)]
    return []


# ----------------------------------------------------------------------------- helpers


def _fast_impl_expected(device: str) -> None:
    with use_backend(fast(device)):
        impl = select_impl(torch.empty(1, device=device))
    if impl is None:
        pytest.skip("no fast kernel on this machine (no compiler / no triton)")


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.float(), want.float()
    return (got - want).abs().max().item() / (1.0 + want.abs().max().item())


def _close(got: torch.Tensor, want: torch.Tensor, tol: float, what: str) -> None:
    err = _rel_err(got, want)
    assert err <= tol, f"{what}: max error {err:.3g} (relative to 1 + max |want|) > {tol:.3g}"


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _run(fn, x, params, grad):
    """y and the gradients (x first, then every parameter) of fn(x, params)."""
    x = x.detach().requires_grad_(True)
    ps = [p.detach().requires_grad_(True) for p in params]
    y = fn(x, ps)
    y.backward(grad)
    return y.detach(), [x.grad] + [p.grad for p in ps]


def _fast_and_reference(name, x, params, squeeze, dtype):
    """(y, grads) of the fast path in ``dtype`` and of the reference in float32 on the same
    rounded values."""
    grad = torch.randn(x.shape, device=x.device).to(dtype)
    xs, ps = x.to(dtype), [p.to(dtype) for p in params]
    with use_backend(fast(x.device)), torch.autograd.profiler.profile() as prof:
        got = _run(lambda u, q: channel_gate(u, name, q, squeeze=squeeze), xs, ps, grad)
    assert any(e.name == "visattn::channel_gate_backward" for e in prof.function_events)
    with use_backend("reference"):
        ref = _run(lambda u, q: channel_gate(u, name, q, squeeze=squeeze), xs.float(),
                   [p.float() for p in ps], grad.float())  # fmt: skip
    return got, ref


# ----------------------------------------------------------------------------- the formula


def _numpy_gate(name, z, params):
    """s (N, C) from the pooled z (N, C), written from the papers with NumPy."""
    p = [t.numpy() for t in params]
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    if name == "test_se_mlp":
        h = np.maximum(z @ p[0][:, :, 0, 0].T + p[1], 0)
        return sigmoid(h @ p[2][:, :, 0, 0].T + p[3])
    if name in ("test_eca", "test_eca_circular"):
        w = p[0][0, 0]
        k, c = w.shape[0], z.shape[1]
        mode = "wrap" if name == "test_eca_circular" else "constant"
        padded = np.pad(z, ((0, 0), (k // 2, k // 2)), mode=mode)
        return sigmoid(np.stack([padded[:, i : i + k] @ w for i in range(c)], 1))
    if name == "test_ese":
        return np.clip((z @ p[0][:, :, 0, 0].T + p[1]) / 6 + 0.5, 0, 1)  # relu6(l + 3) / 6
    return sigmoid(z)


ONLY_NATIVE = pytest.mark.skipif(INTERPRETED, reason="no kernel involved: run once, natively")


@ONLY_NATIVE
@pytest.mark.parametrize("squeeze", ["avg", "max"])
@pytest.mark.parametrize("name", list(EXCITATIONS))
@pytest.mark.parametrize("shape", [(1, 7, 3, 5), (3, 12, 4, 1)])
def test_reference_matches_numpy(name, squeeze, shape):
    x = torch.randn(shape, dtype=torch.float64)
    params = [p.double() for p in _params(name, shape[1])]
    xn = x.numpy()
    z = xn.mean((2, 3)) if squeeze == "avg" else xn.max((2, 3))
    want = xn * _numpy_gate(name, z, params)[:, :, None, None]
    got = channel_gate_reference(x, name, params, squeeze=squeeze)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    # float64 has no kernel: the dispatch function is the reference there
    np.testing.assert_allclose(channel_gate(x, name, params, squeeze=squeeze).numpy(), want,
                               rtol=1e-12, atol=1e-12)  # fmt: skip


@ONLY_NATIVE
@pytest.mark.parametrize("squeeze", ["avg", "max"])
@pytest.mark.parametrize("name", ["test_eca", "test_eca_circular", "test_ese", "test_sigmoid"])
def test_gradcheck_float64(name, squeeze):
    """Float64 runs the reference (no kernel): its gradients by finite differences; the fast
    paths' gradients are compared with these formulas' below."""
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64, requires_grad=True)
    params = [p.double().requires_grad_(True) for p in _params(name, 6)]
    assert torch.autograd.gradcheck(
        lambda x, *p: channel_gate(x, name, list(p), squeeze=squeeze), (x, *params)
    )


# ----------------------------------------------------------------------------- fast vs plain

CASES = [("test_se_mlp", "avg"), ("test_eca", "avg"), ("test_eca_circular", "max"),
         ("test_ese", "avg"), ("test_sigmoid", "max"), ("test_eca", "max")]  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name,squeeze", CASES)
def test_fast_matches_reference(device, dtype, channels_last, shape, name, squeeze):
    _fast_impl_expected(device)
    x = _layout(torch.randn(shape, device=device), channels_last)
    params = _params(name, shape[1], device)
    (y1, g1), (y2, g2) = _fast_and_reference(name, x, params, squeeze, dtype)
    assert y1.dtype == dtype and g1[0].dtype == dtype
    assert all(g.dtype == dtype for g in g1[1:])  # the parameters' dtype
    assert y1.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert g1[0].is_contiguous(memory_format=torch.channels_last) == channels_last
    _close(y1, y2, TOL[dtype], "output")
    for i, (a, b) in enumerate(zip(g1, g2, strict=True)):
        _close(a, b, TOL[dtype], "dx" if i == 0 else f"grad of params[{i - 1}]")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("squeeze", ["avg", "max"])
def test_se_mlp_equals_the_fused_squeeze_excite(device, squeeze):
    """The channel gate with SE's MLP registered is SE: visattn::squeeze_excite (hand-derived
    backward) and visattn::channel_gate (autograd on E) agree on the output and every
    gradient. Measured over 20 seeds with the C++ kernels: the output bitwise (same passes,
    same ops for E), gradients within 3.5e-7 relative; tolerance 3e-6 (Triton's SE computes
    its MLP in kernels of its own, so its output is compared with that tolerance too)."""
    _fast_impl_expected(device)
    with use_backend(fast(device)):
        impl = select_impl(torch.empty(1, device=device))
    x = torch.randn(3, 24, 7, 5, device=device)
    params = _params("test_se_mlp", 24, device)
    grad = torch.randn_like(x)

    def se(u, q):
        return torch.ops.visattn.squeeze_excite(u, *q, None, squeeze, "sigmoid", impl)[0]

    def gate(u, q):
        return torch.ops.visattn.channel_gate(u, q, "test_se_mlp", squeeze, impl)[0]

    y1, g1 = _run(se, x, params, grad)
    y2, g2 = _run(gate, x, params, grad)
    if impl == "c":
        assert torch.equal(y2, y1)
    _close(y2, y1, 3e-6, "output")
    for i, (a, b) in enumerate(zip(g2, g1, strict=True)):
        _close(a, b, 3e-6, f"gradient {i}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_max_ties_share_the_gradient_like_amax(device, channels_last):
    """Integer-valued x: many positions tie for a channel's maximum."""
    _fast_impl_expected(device)
    x = _layout(torch.randint(-2, 3, (2, 9, 6, 5), device=device).float(), channels_last)
    assert ((x == x.amax((2, 3), keepdim=True)).sum((2, 3)) > 1).any()
    for name in ("test_eca", "test_sigmoid"):
        (y1, g1), (y2, g2) = _fast_and_reference(name, x, _params(name, 9, device), "max",
                                                 torch.float32)  # fmt: skip
        _close(y1, y2, TOL[torch.float32], "output")
        for i, (a, b) in enumerate(zip(g1, g2, strict=True)):
            _close(a, b, TOL[torch.float32], f"gradient {i}")


@pytest.mark.parametrize("device", DEVICES)
def test_under_autocast_with_float32_parameters(device):
    """bfloat16 activations, float32 parameters under autocast: the output keeps x's dtype,
    the parameters' gradients are float32, E runs in float32."""
    _fast_impl_expected(device)
    x = torch.randn(2, 20, 6, 5, device=device).bfloat16().requires_grad_(True)
    params = [p.requires_grad_(True) for p in _params("test_ese", 20, device)]
    with torch.autocast(device, dtype=torch.bfloat16), use_backend(fast(device)):
        y = channel_gate(x, "test_ese", params)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in params)
    with use_backend("reference"):
        want = channel_gate(x.detach().float(), "test_ese", [p.detach() for p in params])
    _close(y, want, TOL[torch.bfloat16], "autocast output")


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_empty_and_no_grad_inputs(device):
    _fast_impl_expected(device)
    base = torch.randn(2, 10, 9, 14, device=device)
    x = base[:, :, :, ::2]  # neither NCHW- nor channels_last-contiguous
    params = _params("test_eca", 10, device)
    (y1, g1), (y2, g2) = _fast_and_reference("test_eca", x, params, "avg", torch.float32)
    for a, b in zip([y1, *g1], [y2, *g2], strict=True):
        _close(a, b, TOL[torch.float32], "non-contiguous")
    with use_backend(fast(device)):
        empty = torch.randn(0, 10, 4, 4, device=device)
        assert channel_gate(empty, "test_eca", params).shape == empty.shape
        with torch.no_grad():
            y = channel_gate(x, "test_eca", params)
    with use_backend("reference"):
        _close(y, channel_gate(x, "test_eca", params), TOL[torch.float32], "no_grad")
    # gradients for the parameters only (x needs none): the operator skips the dx pass
    ps = [p.clone().requires_grad_(True) for p in params]
    with use_backend(fast(device)):
        channel_gate(x, "test_eca", ps).sum().backward()
    qs = [p.clone().requires_grad_(True) for p in params]
    with use_backend("reference"):
        channel_gate(x, "test_eca", qs).sum().backward()
    _close(ps[0].grad, qs[0].grad, TOL[torch.float32], "parameter-only gradient")


# ----------------------------------------------------------------------------- operators


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    _fast_impl_expected(device)
    with use_backend(fast(device)):
        impl = select_impl(torch.empty(1, device=device))
    cases = (("test_eca", "avg"), ("test_ese", "max"), ("test_sigmoid", "avg"))
    for name, squeeze in cases[:1] if INTERPRETED else cases:  # the interpreter is slow
        x = torch.randn(2, 10, 4, 5, device=device, requires_grad=True)
        params = [p.requires_grad_(True) for p in _params(name, 10, device)]
        torch.library.opcheck(torch.ops.visattn.channel_gate.default,
                              (x, params, name, squeeze, impl))  # fmt: skip
        # bfloat16 activations with float32 parameters (autocast): the parameters' gradients
        # keep their dtype, as the fake kernel says; no dx wanted (parameters only)
        for xx, need_dx in ((x.detach(), True), (x.detach().bfloat16(), name == "test_ese")):
            with torch.no_grad():
                _, s, z = torch.ops.visattn.channel_gate(xx, params, name, squeeze, impl)
            torch.library.opcheck(
                torch.ops.visattn.channel_gate_backward.default,
                (torch.randn_like(xx), xx, s, z, [p.detach() for p in params], name, squeeze,
                 impl, need_dx),
            )  # fmt: skip


@pytest.mark.skipif(INTERPRETED, reason="compile is covered on the native backend")
def test_torch_compile_matches_eager():
    """fullgraph torch.compile of the dispatch function: the operators stay opaque (the
    autograd on E inside the backward operator runs at run time), output and gradients equal
    eager's."""
    _fast_impl_expected("cpu")
    x = torch.randn(2, 16, 20, 21)  # backend auto: H W >= CPU_CHANNEL_GATE_MIN_POSITIONS
    x = x.contiguous(memory_format=torch.channels_last)
    w = _params("test_eca", 16)[0]

    def block(u, weight):
        return channel_gate(u, "test_eca", [weight], squeeze="avg") * 2

    compiled = torch.compile(block, backend="inductor", fullgraph=True)
    xc, wc = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    with torch.autograd.profiler.profile() as prof:
        y = compiled(xc, wc)
        y.sum().backward()
    names = {e.name for e in prof.function_events}
    assert {"visattn::channel_gate", "visattn::channel_gate_backward"} <= names
    xe, we = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y_eager = block(xe, we)
    y_eager.sum().backward()
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(wc.grad, we.grad, rtol=1e-5, atol=1e-6)


class _EcaLike(torch.nn.Module):
    """A stand-in for a layer wired to the channel gate: it owns the parameter, its forward is
    one call of the dispatch function."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_gate(x, "test_eca", [self.conv.weight])


@ONLY_NATIVE
def test_onnx_export_runs_the_plain_formula(tmp_path):
    """ONNX has no visattn:: operators: export traces the plain formula (opset 18, as the layer
    tester exports), and onnxruntime reproduces the fused eager output."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    layer = _EcaLike().eval()
    x = torch.randn(2, 12, 5, 7)
    path = str(tmp_path / "gate.onnx")
    torch.onnx.export(layer, (x,), path, opset_version=18, input_names=["x"],
                      output_names=["y"])  # fmt: skip
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert not any(node.domain.startswith("visattn") for node in model.graph.node)
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    with torch.no_grad():
        want = layer(x).numpy()
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5)


@ONLY_NATIVE
def test_flop_counter_counts_like_the_formula():
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 32, 9, 7, requires_grad=True)
    for name in ("test_eca", "test_ese", "test_se_mlp", "test_sigmoid"):
        params = [p.requires_grad_(True) for p in _params(name, 32)]
        counts = []
        for backend in (fast("cpu"), "reference"):
            with use_backend(backend), FlopCounterMode(display=False) as counter:
                channel_gate(x, name, params).sum().backward()
            counts.append(counter.get_total_flops())
        assert counts[0] == counts[1], name
        assert (counts[0] > 0) == (name != "test_sigmoid"), name


# ----------------------------------------------------------------------------- errors


@ONLY_NATIVE
def test_bad_arguments_name_the_argument():
    x = torch.randn(1, 8, 3, 3)
    w = _params("test_eca", 8)
    with pytest.raises(ValueError, match=r"excitation: expected one of .*'test_eca'.*got 'nope'"):
        channel_gate(x, "nope", w)
    with pytest.raises(ValueError, match=r"squeeze: expected one of 'avg', 'max', got 'sum'"):
        channel_gate(x, "test_eca", w, squeeze="sum")
    with pytest.raises(TypeError, match=r"params: expected a list or tuple of tensors, got a 3-D"):
        channel_gate(x, "test_eca", w[0])
    with pytest.raises(TypeError, match=r"params\[1\]: expected a torch.Tensor, got None"):
        channel_gate(x, "test_ese", [torch.randn(8, 8, 1, 1), None])
    with pytest.raises(ValueError, match=r"x: expected a 4-D tensor"):
        channel_gate(torch.randn(8, 3, 3), "test_eca", w)
    with pytest.raises(ValueError, match=r"x: expected a 4-D tensor"):
        channel_gate_reference(torch.randn(8, 3, 3), "test_eca", w)


register_excitation("test_wrong_shape", lambda z: torch.sigmoid(z)[:, :1])


@pytest.mark.parametrize("backend", [fast("cpu"), "reference"])
def test_a_gate_of_the_wrong_shape_names_the_excitation(backend):
    x = torch.randn(2, 8, 3, 3)
    want = r"excitation 'test_wrong_shape': expected a gate of shape \(2, 8\) .* got shape \(2, 1\)"
    with use_backend(backend), pytest.raises(ValueError, match=want):
        channel_gate(x, "test_wrong_shape")


@ONLY_NATIVE
def test_register_excitation_checks_its_arguments():
    register_excitation("test_eca", _eca)  # the same function again: fine
    with pytest.raises(ValueError, match=r"name: excitation 'test_eca' is already registered"):
        register_excitation("test_eca", _eca_circular)
    with pytest.raises(ValueError, match=r"name: expected a non-empty str, got 3"):
        register_excitation(3, _eca)
    with pytest.raises(TypeError, match=r"fn: expected a callable excitation"):
        register_excitation("test_not_callable", "sigmoid")


def test_auto_on_the_cpu_runs_the_operator_from_the_measured_size_up():
    """Backend ``auto`` on the CPU: the plain formula below ``CPU_CHANNEL_GATE_MIN_POSITIONS``
    positions (measured slower there), the operator from there up; a pinned backend always
    runs the operator."""
    from visattn.functional.fused import CPU_CHANNEL_GATE_MIN_POSITIONS as limit

    _fast_impl_expected("cpu")
    w = _params("test_eca", 8)[0]
    side = math.isqrt(limit)
    for backend, (h, w_) in [("auto", (side - 1, side)), ("auto", (side + 1, side)),
                             ("cpu", (3, 3))]:  # fmt: skip
        x = torch.randn(2, 8, h, w_, requires_grad=True)
        with use_backend(backend), torch.autograd.profiler.profile() as prof:
            channel_gate(x, "test_eca", [w]).sum().backward()
        ran = "visattn::channel_gate" in {e.name for e in prof.function_events}
        assert ran == (backend == "cpu" or h * w_ >= limit), (backend, h, w_)
