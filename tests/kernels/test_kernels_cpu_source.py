"""The C++ source of the CPU kernels (``visattn/kernels/csrc/visattn_cpu.cpp``) and its bindings.

- it compiles with the flags of ``cpu.build()`` plus ``-Wall -Wextra -Werror`` (this is where CI
  turns warnings into errors);
- the ctypes signatures come from its ``extern "C"`` definitions: every exported function is
  declared, the parser maps the C types it knows and rejects any other, and every Python wrapper
  of ``visattn.kernels.cpu`` passes as many arguments as the C function takes (ctypes itself lets
  a cdecl call pass extra arguments silently).

The kernels' values are tested against the formulas in ``test_kernels_se_cbam.py`` and
``test_kernels_norm_fusion.py``.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import warnings

import pytest
import torch

from visattn.kernels import cpu

WERROR = ("-Wall", "-Wextra", "-Werror")


def _needs_kernels() -> None:
    if not cpu.available():
        pytest.skip("the CPU kernels are not available here (no compiler, or turned off)")


def test_source_ships_next_to_the_module():
    assert cpu.SOURCE_PATH.is_file()
    assert cpu.SOURCE_PATH.suffix == ".cpp"
    assert 'extern "C" {' in cpu.source()


def test_cpp_compiles_without_warnings(tmp_path):
    cxx = cpu.compiler()
    if cxx is None:
        pytest.skip("no C++ compiler ($CXX, g++ or c++) found: nothing to compile")
    cmd = cpu.compile_command(cxx, cpu.SOURCE_PATH, tmp_path / "lib.so", WERROR)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-4000:]}"


def test_parser_maps_the_known_types():
    text = (
        'extern "C" {\n'
        "int f(const float* a, float *b, const void* c, int64_t n, int k, float s, double d,\n"
        "      bool z, const int64_t* idx) { return 0; }\n"
        "void g() {}\n"
        "}\n"
    )
    P = ctypes.c_void_p
    f_args = [P, P, P, ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_double]
    f_args += [ctypes.c_bool, P]
    assert cpu.prototypes(text) == {"f": (ctypes.c_int, f_args), "g": (None, [])}


@pytest.mark.parametrize(
    "decl, bad",
    [
        ("void f(size_t n) {}", "size_t"),
        ("void f(const Geo* g) {}", "Geo*"),
        ("void f(int n, unsigned k) {}", "unsigned"),
        ("long f(int n) { return n; }", "long"),
        ("void f(float a[]) {}", "float a[]"),
    ],
)
def test_parser_rejects_unknown_types(decl, bad):
    with pytest.raises(ValueError, match=bad.replace("[", r"\[").replace("*", r"\*")):
        cpu.prototypes('extern "C" {\n' + decl + "\n}\n")


def test_parser_needs_one_extern_c_block():
    with pytest.raises(ValueError, match="extern"):
        cpu.prototypes("void f(int n) {}\n")


def test_every_exported_function_is_declared():
    _needs_kernels()
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("no nm to list the library's exported symbols")
    lib_path = cpu.build()
    out = subprocess.run([nm, "-D", "--defined-only", str(lib_path)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    exported = {line.split()[-1] for line in out.splitlines() if " T va_" in line}
    sigs = cpu.prototypes(cpu.source())
    assert exported == set(sigs)
    lib = cpu._lib()
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        assert tuple(fn.argtypes) == tuple(argtypes), name
        assert fn.restype is restype, name
    assert lib.va_version() >= 2


class _CountingLib:
    """Forwards to the real library, checking each call's argument count against argtypes."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self.called: set[str] = set()

    def __getattr__(self, name: str):
        fn = getattr(self._lib, name)

        def call(*args):
            assert len(args) == len(fn.argtypes), (
                f"{name}: the wrapper passes {len(args)} arguments, the C function takes "
                f"{len(fn.argtypes)}"
            )
            self.called.add(name)
            return fn(*args)

        return call


def _calls(n: int, c: int, h: int, w: int, cl: bool) -> None:
    """Every kernel wrapper of cpu.py, with and without each optional operand."""
    x = torch.randn(n, c, h, w)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(x)
    a, b = torch.rand(n, c) + 0.5, torch.rand(n, h * w) + 0.5
    gavg, gmax, cavg, cmax = torch.randn(n, h * w), torch.randn(n, h * w), *torch.randn(2, n, c)
    norm = torch.stack([torch.rand(c) + 0.5, *torch.randn(4, c)])
    for nrm in (None, norm[:2]):
        _, zmax = cpu.stats_c(x, nrm)
        _, pmax = cpu.stats_p(x, a, nrm)
        cpu.apply(x, a, None, nrm)
        cpu.apply(x, a, b, nrm)
    for bb, zz in [(None, None), (b, None), (None, zmax), (b, zmax)]:
        pm = pmax if (bb is not None and zz is not None) else None
        q, db, zc, pc = cpu.bwd_reduce(dy, x, a, bb, zz, pm)
        assert q.shape == (n, c) and (db is None) == (bb is None) and (zc is None) == (zz is None)
        assert (pc is None) == (pm is None)
        mom, db, pc = cpu.bwd_reduce_norm(dy, x, a, bb, zz, pm, norm[:3])
        assert mom.shape == (5 if zz is not None else 3, n, c)
        assert (db is None) == (bb is None) and (pc is None) == (pm is None)
    for gm, pm in [(None, None), (gmax, pmax)]:
        assert cpu.bwd_channel(x, a, gavg, gm, pm).shape == (n, c)
        assert cpu.bwd_channel_norm(x, a, gavg, gm, pm, norm[:3]).shape == (2, n, c)
    for nrm in (None, norm):
        cpu.bwd_apply(dy, x, a, None, None, None, None, cavg, None, None, nrm)
        cpu.bwd_apply(dy, x, a, b, gavg, gmax, pmax, cavg, cmax, zmax, nrm)


def test_wrappers_pass_the_prototype_argument_count(monkeypatch):
    _needs_kernels()
    counting = _CountingLib(cpu._lib())
    monkeypatch.setitem(cpu._STATE, "lib", counting)
    for cl in (False, True):
        _calls(2, 5, 3, 4, cl)
    kernels = set(cpu.prototypes(cpu.source())) - {"va_version"}
    assert counting.called == kernels


def test_is_channels_last():
    x = torch.randn(2, 3, 4, 5)
    assert cpu.is_channels_last(x) is False
    assert cpu.is_channels_last(x.contiguous(memory_format=torch.channels_last)) is True
    assert cpu.is_channels_last(torch.randn(2, 3, 1, 1)) is False  # both layouts at once: NCHW
    with pytest.warns(DeprecationWarning, match="is_channels_last"):
        old = cpu.layout_of
    assert old(x.contiguous(memory_format=torch.channels_last)) is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cpu.is_channels_last(x)  # the new name does not warn
