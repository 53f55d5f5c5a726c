"""The kernels' contract (``src/visattn/kernels/_contract.py``): both backends of the fused SE /
CBAM blocks (arXiv:1709.01507, arXiv:1807.06521), :mod:`visattn.kernels.cpu` and
:mod:`visattn.kernels.triton_kernels`, have every function of ``BlockKernels`` with its
parameters (names, order, kinds, defaults); the Triton backend has those of ``SamplerKernels``
(arXiv:1506.02025). Also: the custom operators' schemas stay as they are, and the gate list has
one definition (``visattn._modes``) that the kernels follow.

Nothing here runs a kernel: the numbers are tested in ``test_kernels_se_cbam.py``,
``test_kernels_norm_fusion.py``, ``test_kernels_sampler.py`` and, for the Triton kernels under
the interpreter, ``test_kernels_triton.py``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
from types import ModuleType

import pytest
import torch

from visattn import _modes
from visattn.kernels import _contract, _excite, ops

HAS_TRITON = importlib.util.find_spec("triton") is not None
BACKENDS = ["visattn.kernels.cpu"] + (["visattn.kernels.triton_kernels"] if HAS_TRITON else [])


def _contract_functions(protocol: type) -> dict[str, inspect.Signature]:
    """The protocol's functions as a module implements them: signatures without ``self``."""
    out = {}
    for name, member in vars(protocol).items():
        if name.startswith("_") or not inspect.isfunction(member):
            continue
        sig = inspect.signature(member)
        out[name] = sig.replace(parameters=list(sig.parameters.values())[1:])
    return out


def _mismatches(module: ModuleType, protocol: type) -> list[str]:
    """What ``module`` lacks or spells differently from ``protocol``, one line each."""
    problems = []
    for name, want in _contract_functions(protocol).items():
        where = f"{module.__name__}.{name}"
        fn = getattr(module, name, None)
        if fn is None:
            problems.append(f"{where}: missing ({protocol.__name__} lists it)")
            continue
        got = inspect.signature(fn)
        got_params = [(p.name, p.kind, p.default) for p in got.parameters.values()]
        want_params = [(p.name, p.kind, p.default) for p in want.parameters.values()]
        if got_params != want_params:
            problems.append(
                f"{where}{got}: parameters differ from {protocol.__name__}.{name}{want}"
            )
    return problems


def test_contract_lists_what_the_operators_call():
    """ops.py and gate_ops.py (the channel gate) call nothing on a backend outside
    BlockKernels, and all of it but ``fold`` (the folded BatchNorm's forward step, which
    visattn.functional calls through ``ops.block_kernels`` before the operators)."""
    from visattn.kernels import gate_ops

    source = inspect.getsource(ops) + inspect.getsource(gate_ops)
    called = set(re.findall(r"\bk\.(\w+)\(", source))
    listed = set(_contract_functions(_contract.BlockKernels))
    assert called <= listed, f"ops.py calls kernels outside the contract: {called - listed}"
    assert listed - called == {"fold"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_satisfies_block_kernels(backend):
    module = importlib.import_module(backend)
    problems = _mismatches(module, _contract.BlockKernels)
    assert not problems, "\n".join(problems)


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_triton_backend_satisfies_sampler_kernels():
    from visattn.kernels import triton_kernels

    problems = _mismatches(triton_kernels, _contract.SamplerKernels)
    assert not problems, "\n".join(problems)


def test_a_renamed_parameter_is_reported_with_backend_and_function():
    """The check names the backend and the function (a fake backend with one parameter
    renamed, another function missing)."""
    fake = ModuleType("fake_backend")
    for name in _contract_functions(_contract.BlockKernels):
        setattr(fake, name, getattr(ops.block_kernels("c"), name))

    def stats_c(x, normalisation=None):  # "norm" renamed
        raise AssertionError

    fake.stats_c = stats_c
    del fake.fold
    problems = _mismatches(fake, _contract.BlockKernels)
    assert len(problems) == 2
    assert problems[0].startswith("fake_backend.stats_c(x, normalisation=None): parameters differ")
    assert "BlockKernels.stats_c" in problems[0]
    assert problems[1] == "fake_backend.fold: missing (BlockKernels lists it)"


def test_operator_schemas_unchanged():
    """The flat schemas that torch.compile, opcheck and visattn.functional's positional calls
    rely on, written from ops.py's named tuples."""
    schemas = {
        "squeeze_excite": "visattn::squeeze_excite(Tensor x, Tensor w1, Tensor? b1, Tensor w2, "
        "Tensor? b2, Tensor? in_norm, str squeeze, str gate, str impl) -> (Tensor, Tensor, "
        "Tensor, Tensor, Tensor)",
        "squeeze_excite_backward": "visattn::squeeze_excite_backward(Tensor dy, Tensor x, "
        "Tensor s, Tensor z, Tensor h, Tensor l, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
        "Tensor? in_norm, bool in_norm_batch, str squeeze, str gate, str impl, bool need_dx) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
        "cbam": "visattn::cbam(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
        "Tensor conv_w, Tensor? conv_b, Tensor? bn_w, Tensor? bn_b, Tensor? bn_mean, "
        "Tensor? bn_var, Tensor? in_norm, SymInt bn_mode, float eps, bool use_avg, "
        "bool use_max, str impl) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
        "cbam_backward": "visattn::cbam_backward(Tensor dy, Tensor x, Tensor a, Tensor b, "
        "Tensor z, Tensor pooled, Tensor h, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
        "Tensor conv_w, Tensor? conv_b, Tensor? bn_w, Tensor? bn_b, Tensor? bn_mean, "
        "Tensor? bn_var, Tensor? in_norm, bool in_norm_batch, SymInt bn_mode, float eps, "
        "bool use_avg, bool use_max, str impl, bool need_dx) -> (Tensor, Tensor, Tensor, "
        "Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
    }
    for name, want in schemas.items():
        assert str(getattr(torch.ops.visattn, name).default._schema) == want


def test_named_tuples_call_the_operators():
    """torch.ops.visattn.cbam(x, *CbamParams(...), in_norm, *CbamOptions(...)) and SE's twin."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 5)
    se = ops.SeParams(torch.randn(2, 8), None, torch.randn(8, 2), torch.randn(8))
    y, *saved = torch.ops.visattn.squeeze_excite(x, *se, None, *ops.SeOptions("avg", "tanh", "c"))
    s = torch.tanh(torch.relu(x.mean((2, 3)) @ se.w1.t()) @ se.w2.t() + se.b2)
    torch.testing.assert_close(ops.SeSaved(*saved).s, s)
    torch.testing.assert_close(y, x * s[:, :, None, None])
    params = ops.CbamParams(torch.randn(2, 8), None, torch.randn(8, 2), None,
                            torch.randn(1, 2, 3, 3), None, None, None, None, None)  # fmt: skip
    options = ops.CbamOptions(_modes.BnMode.NONE, 1e-5, True, True, "c")
    out = torch.ops.visattn.cbam(x, *params, None, *options)
    saved = ops.CbamSaved(*out[1:-1])
    assert saved.a.shape == (2, 8) and saved.b.shape == (2, 25) and saved.pooled.shape[1] == 2
    grads = ops.CbamGrads(*torch.ops.visattn.cbam_backward(
        torch.ones_like(x), x, *saved, *params, None, False, *options, True
    ))  # fmt: skip
    assert grads.dx.shape == x.shape and grads.dconv_w.shape == params.conv_w.shape
    assert grads.db1.numel() == 0 and grads.dnorm.numel() == 0


def test_gates_have_one_definition():
    """The CPU formulas' gates and derivatives and the Triton kernels' gate ids all follow
    visattn._modes.GATES."""
    assert _excite.GATES is _modes.GATES
    assert tuple(_excite._GATE_GRADS) == _modes.GATES
    assert list(_modes.GATE_IDS.values()) == list(range(len(_modes.GATES)))
    if HAS_TRITON:
        from visattn.kernels import _triton_excite as te

        named = {"sigmoid": te.SIGMOID, "hard_sigmoid": te.HARD_SIGMOID, "tanh": te.TANH,
                 "relu": te.RELU}  # fmt: skip
        assert set(named) == set(_modes.GATES)
        assert all(int(named[g].value) == _modes.GATE_IDS[g] for g in _modes.GATES)
