"""The shared layer tester: the fixed battery of tests that every attention layer gets.

How to test a mechanism
-----------------------
A mechanism's test file, ``tests/layers/test_layers_<mechanism>.py``, subclasses
:class:`LayerTester` once per layer class and states only what is particular to the layer::

    import numpy as np
    import torch
    from layer_tester import LayerTester

    from visattn import SqueezeExcite


    def numpy_se(x, p, squeeze="avg", **_):  # the paper's formula, float64 NumPy
        z = x.mean((2, 3)) if squeeze == "avg" else x.max((2, 3))
        hidden = np.maximum(0, z @ p["fc1.weight"][:, :, 0, 0].T + p["fc1.bias"])
        s = 1 / (1 + np.exp(-(hidden @ p["fc2.weight"][:, :, 0, 0].T + p["fc2.bias"])))
        return x * s[:, :, None, None]


    class TestSqueezeExcite(LayerTester):
        layer = SqueezeExcite
        configs = {  # name -> constructor arguments; the first is the typical layer
            "paper": dict(channels=32),
            "max": dict(channels=8, reduction=2, squeeze="max"),
        }
        errors = {  # name -> (exception type, regex of the message, call that raises)
            "reduction": (ValueError, r"reduction: expected .*got 16", lambda: SqueezeExcite(8)),
        }

        def input_shape(self, config):  # a typical input (N, C, H, W) for the configuration
            return (2, config["channels"], 9, 7)

        def formula(self, x, p, config):
            return numpy_se(x, p, **config)

        def expected_num_params(self, config):  # optional: where the paper gives the count
            return ...

Required: ``layer`` (or override :meth:`LayerTester.build`, e.g. to give parameters values that
are not their initial ones), ``configs``, ``errors``, :meth:`LayerTester.input_shape` and
:meth:`LayerTester.formula`. ``formula(x, p, config)`` gets the input as a float64 array
(N, C, H, W), ``p`` the layer's ``state_dict()`` as float64 arrays (floating entries only) and
the configuration's constructor arguments; the layer runs in eval mode for it (a BatchNorm uses
the running statistics found in ``p``). Write the formula from the paper, independently of
``visattn`` (no calls into the package).

Optional: :meth:`LayerTester.expected_num_params`, :meth:`LayerTester.output_shape` (default:
the input's shape), :meth:`LayerTester.smooth_at` (whether a gradcheck input is away from the
layer's kinks: ReLU, max-pool ties...), ``gradcheck_configs`` / ``gradcheck_wrt`` /
``gradcheck_kwargs``, ``compile_configs`` / ``compile_gradients``, ``onnx_configs``, ``tolerances``. A group that does
not apply to a layer is switched off by setting its test to ``None`` in the subclass, with a
comment that says why (``test_num_params = None  # the paper gives no count``). Tests of the
layer's own (options, attributes, behaviour outside the formula) are ordinary methods or
functions of the same file.

Groups (each test method below; ``config`` runs over ``configs`` unless said otherwise)
----------------------------------------------------------------------------------------
- smoke: forward and backward on a typical input: shape, dtype, finite values, a gradient for
  the input and every parameter (training mode, as built).
- exception: each entry of ``errors`` raises its type with a message that matches (CPU only: the
  argument checks run before any device work).
- cardinality: output shape on the typical input, N = 1 and odd spatial sizes; parameter count.
- feature: the output equals ``formula`` on random inputs (new each run; the seed is printed,
  ``tests/conftest.py``), on the typical shape, N = 1 with random odd H, W and a 1-row input:
  in float64 (the reference formulas of ``visattn``) and in float32 under backends ``auto``
  (the fused kernels on CPU) and ``reference``.
- gradcheck: float64, input and parameters, on ``gradcheck_configs`` (default: the first
  config; small ones keep it fast), at a random point where :meth:`smooth_at` holds.
- autocast: bfloat16 on CPU (float16 on CUDA) against float32.
- compile: ``torch.compile`` against eager, values and input gradients (on the scale of the
  largest eager value, ``tolerances["compile"]``): one test per layer
  class, on ``compile_configs`` (default: the first config only; list a second one only for a
  code path of its own) because each compile costs tens of seconds on CPU.
- channels_last: the same values and input gradients as NCHW (``tolerances["channels_last"]``).
- map: a layer that declares a ``map_kind`` (``visattn.layers._common.MAP_KINDS``) gives its
  map as ``attention(x)``, of that kind's shape, and its output is x times it (x plus it for
  ``"residual"``; ``"select"`` weights sum to 1 over the branches): what the visualisation
  records (``visattn.viz.capture``).
- onnx: export (opset 18), ``onnx.checker`` and onnxruntime against eager on ``onnx_configs``
  (default: the first config); skipped when onnx, onnxruntime or onnxscript is missing.

Every group except exception and onnx also runs on CUDA when it is available (the ``device``
fixture of ``tests/conftest.py``). Numerical groups run the layer in eval mode; smoke, gradcheck
and compile run it as built (training mode).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from visattn.kernels import use_backend
from visattn.layers._common import MAP_KINDS, map_kind

__all__ = ["KINK_MARGIN", "LayerTester", "min_gap", "state_arrays"]

#: Smallest distance to a kink (ReLU corner, max-pool tie) accepted for a gradcheck point: the
#: finite differences (eps 1e-6) move a pre-activation by a few 1e-6 at most.
KINK_MARGIN = 1e-4


def state_arrays(layer: nn.Module) -> dict[str, np.ndarray]:
    """The floating entries of ``layer.state_dict()`` as float64 NumPy arrays on the CPU."""
    return {
        k: v.detach().to("cpu", torch.float64).numpy()
        for k, v in layer.state_dict().items()
        if v.is_floating_point()
    }


def min_gap(v: torch.Tensor, dim: int) -> float:
    """Smallest difference between the largest and the second largest value along ``dim``: the
    distance of a max pool to a tie (for :meth:`LayerTester.smooth_at`)."""
    if v.shape[dim] < 2:
        return float("inf")
    top = v.topk(2, dim).values
    return float((top.select(dim, 0) - top.select(dim, 1)).min())


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: dict[str, float], msg) -> None:
    """``assert_close`` of both tensors divided by ``max(1, max|expected|)``: a tolerance on the
    scale of the largest term, where roundoff of a sum in another order lives."""
    scale = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual / scale, expected / scale, **tol, msg=msg)


class LayerTester:
    """Base class of the per-mechanism test classes (see the module docstring)."""

    layer: ClassVar[type[nn.Module]]
    configs: ClassVar[dict[str, dict[str, Any]]]
    errors: ClassVar[dict[str, tuple[type[Exception], str, Callable[[], Any]]]] = {}

    gradcheck_configs: ClassVar[tuple[str, ...] | None] = None  # None: the first config
    gradcheck_wrt: ClassVar[tuple[str, ...]] = ("input", "params")
    gradcheck_kwargs: ClassVar[dict[str, Any]] = {}
    compile_configs: ClassVar[tuple[str, ...] | None] = None  # None: the first config
    compile_gradients: ClassVar[bool] = True  # False: forward only (about half the compile time)
    onnx_configs: ClassVar[tuple[str, ...] | None] = None  # None: the first config

    tolerances: ClassVar[dict[str, dict[str, float]]] = {
        # the layers' float64 path and the NumPy formula differ by roundoff only
        "float64": {"rtol": 1e-10, "atol": 1e-12},
        # float32 (kernels or formulas) against the float64 formula: set per mechanism from the
        # measured error, with a margin (see each test file)
        "float32": {"rtol": 1e-5, "atol": 1e-6},
        # bfloat16 has 8 significant bits: relative rounding 2^-9 of inputs and intermediates
        "autocast": {"rtol": 5e-2, "atol": 5e-2},
        "onnx": {"rtol": 1e-4, "atol": 1e-5},
        # channels_last against NCHW, values and input gradients: torch's float32 defaults; a
        # layer whose gradients sum large, cancelling terms (a residual block) sets its own
        "channels_last": {"rtol": 1.3e-6, "atol": 1e-5},
        # torch.compile against eager, values and input gradients, both divided by the eager
        # tensor's largest magnitude (at least 1): the fused graph sums in another order, and
        # its roundoff grows with the largest term, which an ill-conditioned draw (a LayerNorm
        # over nearly equal values) makes large; torch's float32 defaults on that scale
        "compile": {"rtol": 1.3e-6, "atol": 1e-5},
    }

    # ----------------------------------------------------------------- what a mechanism states

    def build(self, config: dict[str, Any]) -> nn.Module:
        """The layer for a configuration (float32, CPU; the tester moves it)."""
        return self.layer(**config)

    def input_shape(self, config: dict[str, Any]) -> tuple[int, int, int, int]:
        """A typical input shape (N, C, H, W) for the configuration."""
        raise NotImplementedError

    def formula(self, x: np.ndarray, p: dict[str, np.ndarray], config: dict[str, Any]):
        """The layer's output by the paper's equations, in NumPy (float64)."""
        raise NotImplementedError

    def output_shape(self, shape: tuple[int, ...], config: dict[str, Any]) -> tuple[int, ...]:
        return tuple(shape)

    def expected_num_params(self, config: dict[str, Any]) -> int:
        raise NotImplementedError(f"{type(self).__name__}: no parameter count stated")

    def smooth_at(self, layer: nn.Module, x: torch.Tensor) -> bool:
        """Whether the layer is differentiable in a neighbourhood of ``x`` (gradcheck)."""
        return True

    # --------------------------------------------------------------------------- machinery

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Parametrise ``config`` over the configurations (or a group's subset), ``error``
        over ``errors``; pytest calls this for every test of a class that defines it."""
        if "config" in metafunc.fixturenames:
            first = (next(iter(self.configs)),)
            subset = {
                "test_gradcheck": self.gradcheck_configs,
                "test_onnx_export": self.onnx_configs,
            }
            names = (
                subset[metafunc.function.__name__] or first
                if metafunc.function.__name__ in subset
                else tuple(self.configs)
            )
            unknown = [n for n in names if n not in self.configs]
            assert not unknown, f"{type(self).__name__}: unknown configs {unknown}"
            metafunc.parametrize("config", names)
        if "error" in metafunc.fixturenames:
            metafunc.parametrize("error", list(self.errors))

    def make(self, name: str, device: torch.device | str = "cpu", dtype=torch.float32):
        return self.build(dict(self.configs[name])).to(device=device, dtype=dtype)

    def shapes(self, config: dict[str, Any]) -> list[tuple[int, int, int, int]]:
        """The typical shape, N = 1 with random odd H, W in 1..11 (new each run), a 1-row map."""
        _n, c, h, w = self.input_shape(config)
        oh, ow = (2 * torch.randint(0, 6, (2,)) + 1).tolist()
        return [(_n, c, h, w), (1, c, oh, ow), (3, c, 1, 7)]

    def layout_shapes(self, config: dict[str, Any]) -> list[tuple[int, int, int, int]]:
        n, c, h, w = self.input_shape(config)
        return [(n, c, h, w), (1, c, h, w), (1, c, 1, 1), (1, c, 7, 5), (3, c, 4, 9)]

    def tol(self, kind: str, config: str) -> dict[str, float]:
        """Tolerance of a comparison group; override for a per-configuration value."""
        return self.tolerances[kind]

    # ------------------------------------------------------------------------------ smoke

    def test_smoke(self, config, device):
        cfg = self.configs[config]
        layer = self.make(config, device)
        x = torch.randn(self.input_shape(cfg), device=device, requires_grad=True)
        out = layer(x)
        assert out.shape == self.output_shape(x.shape, cfg)
        assert out.dtype == x.dtype and out.device == x.device
        assert torch.isfinite(out).all()
        out.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        for name, param in layer.named_parameters():
            assert param.grad is not None, f"no gradient for {name}"
            assert torch.isfinite(param.grad).all(), name

    # -------------------------------------------------------------------------- exception

    def test_exception(self, error):
        exception, match, call = self.errors[error]
        with pytest.raises(exception, match=match):
            call()

    # ------------------------------------------------------------------------ cardinality

    def test_output_shape(self, config, device):
        cfg = self.configs[config]
        layer = self.make(config, device).eval()
        for shape in self.shapes(cfg):
            with torch.no_grad():
                out = layer(torch.randn(shape, device=device))
            assert out.shape == self.output_shape(shape, cfg), f"input shape {shape}"

    def test_num_params(self, config):
        layer = self.make(config)
        count = sum(p.numel() for p in layer.parameters())
        assert count == self.expected_num_params(self.configs[config])

    # ---------------------------------------------------------------------------- feature

    def test_feature_float64(self, config, device):
        cfg = self.configs[config]
        layer = self.make(config, device, torch.float64).eval()
        p = state_arrays(layer)
        for shape in self.shapes(cfg):
            x = torch.randn(shape, dtype=torch.float64, device=device)
            with torch.no_grad():
                got = layer(x).cpu().numpy()
            want = self.formula(x.cpu().numpy(), p, cfg)
            np.testing.assert_allclose(
                got, want, **self.tol("float64", config), err_msg=f"input shape {shape}"
            )

    @pytest.mark.parametrize("backend", ["auto", "reference"])
    def test_feature_float32(self, config, device, backend):
        cfg = self.configs[config]
        layer = self.make(config, device).eval()
        p = state_arrays(layer)  # the float32 values, exactly, as float64
        for shape in self.shapes(cfg):
            x = torch.randn(shape, device=device)
            with torch.no_grad(), use_backend(backend):
                got = layer(x).double().cpu().numpy()
            want = self.formula(x.double().cpu().numpy(), p, cfg)
            np.testing.assert_allclose(
                got, want, **self.tol("float32", config), err_msg=f"input shape {shape}"
            )

    # -------------------------------------------------------------------------- gradcheck

    def test_gradcheck(self, config, device):
        cfg = self.configs[config]
        layer = self.make(config, device, torch.float64)
        _n, c, _h, _w = self.input_shape(cfg)
        for _ in range(20):
            x = torch.randn(2, c, 4, 5, dtype=torch.float64, device=device)
            with torch.no_grad():
                if self.smooth_at(layer, x):
                    break
        else:
            pytest.fail("no random input away from the kinks in 20 draws")
        x.requires_grad_()
        if "input" in self.gradcheck_wrt:
            assert torch.autograd.gradcheck(layer, (x,), **self.gradcheck_kwargs)
        if "params" in self.gradcheck_wrt:
            names = [n for n, _ in layer.named_parameters()]

            def f(*params):
                return torch.func.functional_call(
                    layer, dict(zip(names, params, strict=True)), (x,)
                )

            params = tuple(layer.parameters())
            assert torch.autograd.gradcheck(f, params, **self.gradcheck_kwargs)

    # --------------------------------------------------------------------------- autocast

    def test_autocast(self, config, device):
        cfg = self.configs[config]
        dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
        layer = self.make(config, device).eval()
        x = torch.randn(self.input_shape(cfg), device=device)
        with torch.no_grad():
            with torch.autocast(device.type, dtype=dtype):
                out = layer(x)
            ref = layer(x)
        assert out.dtype in (dtype, torch.float32)
        torch.testing.assert_close(out.float(), ref, **self.tol("autocast", config))

    # ---------------------------------------------------------------------------- compile

    def test_compile(self, device):
        for name in self.compile_configs or (next(iter(self.configs)),):
            layer = self.make(name, device)
            x = torch.randn(self.input_shape(self.configs[name]), device=device, requires_grad=True)
            if not self.compile_gradients:
                with torch.no_grad():  # an inference graph: no backward to compile
                    a, b = torch.compile(layer)(x), layer(x)
                assert_close_scaled(a, b, self.tol("compile", name), msg=lambda m, n=name: f"{n}: {m}")
                continue
            tol = self.tol("compile", name)
            a, b = torch.compile(layer)(x), layer(x)
            assert_close_scaled(a, b, tol, msg=lambda m, n=name: f"{n}: {m}")
            go = torch.randn_like(b)
            ga = torch.autograd.grad(a, x, go)[0]
            gb = torch.autograd.grad(b, x, go)[0]
            assert_close_scaled(ga, gb, tol, msg=lambda m, n=name: f"{n} (gradient): {m}")

    # ---------------------------------------------------------------------- channels_last

    def test_channels_last(self, config, device):
        cfg = self.configs[config]
        layer = self.make(config, device).eval()
        for shape in self.layout_shapes(cfg):
            x = torch.randn(shape, device=device)
            xa = x.clone().requires_grad_()
            xb = x.clone().to(memory_format=torch.channels_last).requires_grad_()
            a, b = layer(xa), layer(xb)
            tol = self.tol("channels_last", config)
            torch.testing.assert_close(b, a, **tol, msg=lambda m, s=shape: f"{s}: {m}")
            go = torch.randn_like(a)
            ga = torch.autograd.grad(a, xa, go)[0]
            gb = torch.autograd.grad(b, xb, go)[0]
            torch.testing.assert_close(gb, ga, **tol, msg=lambda m, s=shape: f"{s} (gradient): {m}")

    # -------------------------------------------------------------------------------- map

    def test_attention_map(self, config, device):
        """The visualisation's protocol (``visattn.viz.capture``, the kinds of
        ``visattn.layers._common.MAP_KINDS``): a layer that declares a ``map_kind`` gives its map
        as ``attention(x)``, of the kind's shape, related to its output as the kind says:
        x * map for a gate (N, C, 1, 1) (``"se"`` / ``"channel"``), a map (N, 1, H, W)
        (``"spatial"``) or a map broadcastable to x (``"mixed"``); x + term for ``"residual"``;
        weights (N, M, C) summing to 1 over the M branches for ``"select"``. Layers without a
        single map (CBAM: two parts; the spatial transformer: theta and a grid) declare none or
        ``"stn"`` and are captured otherwise."""
        layer = self.make(config, device).eval()
        kind = map_kind(layer)
        if kind not in MAP_KINDS:
            pytest.skip(f"{type(layer).__name__} applies no single map (map_kind={kind!r})")
        for shape in self.shapes(self.configs[config]):
            x = torch.randn(shape, device=device)
            with torch.no_grad():
                m, y = layer.attention(x), layer(x)
            n, c, h, w = shape
            if kind == "select":
                # (N, M, C), C the output's channels (a convolution's, not necessarily x's)
                assert m.dim() == 3 and m.shape[::2] == (n, y.shape[1]), (shape, m.shape)
                ones = torch.ones(n, m.shape[2], device=device)
                torch.testing.assert_close(m.sum(1), ones, **self.tol("float32", config))
                continue
            want = {"spatial": (n, 1, h, w), "se": (n, c, 1, 1), "channel": (n, c, 1, 1)}
            if kind in want:
                assert m.shape == want[kind], (shape, m.shape)
            else:  # mixed, residual: any shape that broadcasts to x's
                assert torch.broadcast_shapes(m.shape, x.shape) == x.shape, (shape, m.shape)
            combined = x + m if kind == "residual" else x * m
            torch.testing.assert_close(y, combined, **self.tol("float32", config))

    # ------------------------------------------------------------------------------- onnx

    def test_onnx_export(self, config, tmp_path):
        onnx = pytest.importorskip("onnx")
        ort = pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")  # torch.onnx.export's exporter
        layer = self.make(config).eval()
        x = torch.randn(self.input_shape(self.configs[config]))
        path = str(tmp_path / f"{config}.onnx")
        torch.onnx.export(
            layer, (x,), path, opset_version=18, input_names=["x"], output_names=["y"]
        )
        onnx.checker.check_model(onnx.load(path))
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = session.run(None, {"x": x.numpy()})[0]
        with torch.no_grad():
            want = layer(x).numpy()
        np.testing.assert_allclose(got, want, **self.tol("onnx", config))
