"""Fused CPU kernels for SE (arXiv:1709.01507) and CBAM (arXiv:1807.06521): build, load, call.

The C++ source (``csrc/visattn_cpu.cpp`` next to this file, shipped as package data; formulas
listed at its top) has no PyTorch headers, so ``g++ -O3 -fopenmp`` builds it in a few seconds
(about 6 s here) on first use; the shared library is cached in ``$VISATTN_CACHE_DIR`` (default
``~/.cache/visattn``) under a hash of the source, the compiler flags and the CPU, and loaded with :mod:`ctypes` (which releases the GIL during
calls). The OpenMP runtime is the one PyTorch has already loaded (same ``libgomp.so.1``), so
both share one thread pool setting; the kernels use ``torch.get_num_threads()`` threads.
Without a working compiler :func:`available` is False and the layers use the reference formulas.

Full-size outputs (y, dx) come from :mod:`visattn.kernels._pool`, which reuses the memory of
earlier outputs once PyTorch has released them: glibc maps large blocks freshly from the system,
and the first-touch page faults (the kernel zeroes every new page) cost more than the fused
kernel itself on small CPUs. New large outputs are advised to use transparent huge pages
(``madvise(MADV_HUGEPAGE)`` before the first write), which cuts the first-touch cost about 3x.

The ctypes signatures are read from the ``extern "C"`` definitions of the source
(:func:`prototypes`), so that they cannot drift from it.

Every function takes x of shape (N, C, H, W) in NCHW or channels_last layout (other strides are
made contiguous first) and float32 / bfloat16; per-channel vectors are float32 (N, C), per
position vectors float32 (N, H W). Tests: ``tests/kernels/test_kernels_se_cbam.py`` and
``tests/kernels/test_kernels_norm_fusion.py`` (values against the formulas),
``tests/kernels/test_kernels_cpu_source.py`` (the -Werror build, the signatures, the wrappers'
argument counts).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from ._backend import as_dtype, flat_f32
from ._contract import BLOCK_KERNEL_NAMES
from ._excite import excite as excite  # the MLP: PyTorch ops
from ._excite import excite_backward as excite_backward
from ._excite import excite_wgrad as excite_wgrad
from ._fold import fold as fold  # the folded BatchNorm (PyTorch ops)
from ._fold import fold_backward as fold_backward
from ._pool import output_pool

__all__ = ["available", "build", *BLOCK_KERNEL_NAMES]  # the contract's functions, and the build

_FLAGS = ["-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC"]
_STATE: dict[str, object] = {}
SOURCE_PATH = Path(__file__).resolve().parent / "csrc" / "visattn_cpu.cpp"


def source() -> str:
    """The C++ source of the kernels (``csrc/visattn_cpu.cpp``)."""
    return SOURCE_PATH.read_text(encoding="utf-8")


def _cache_dir() -> Path:
    root = os.environ.get("VISATTN_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "visattn"
    )
    return Path(root) / "kernels"


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def compiler() -> str | None:
    """The C++ compiler :func:`build` uses: ``$CXX``, else ``g++``, else ``c++`` (None if none)."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def compile_command(cxx: str, src: Path, out: Path, extra: tuple[str, ...] = ()) -> list[str]:
    """The command line that compiles ``src`` into the shared library ``out`` (``extra`` flags
    appended: the tests add ``-Wall -Wextra -Werror``)."""
    return [cxx, *_FLAGS, *extra, str(src), "-o", str(out)]


def build(text: str | None = None) -> Path:
    """Compile the kernels (``text``, default :func:`source`) or find them in the cache, and
    return the library's path."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++ / c++ / $CXX) found")
    text = source() if text is None else text
    key = hashlib.sha256(
        "\0".join([text, cxx, *_FLAGS, _cpu_id(), platform.machine()]).encode()
    ).hexdigest()[:20]
    target = _cache_dir() / f"visattn_cpu_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "visattn_cpu.cpp"
        src.write_text(text, encoding="utf-8")
        out = Path(tmp) / "lib.so"
        proc = subprocess.run(compile_command(cxx, src, out), capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling the CPU kernels failed:\n{proc.stderr[-2000:]}")
        os.replace(out, target)  # atomic: concurrent builders never see a half-written file
    return target


def _lib() -> ctypes.CDLL | None:
    if "lib" not in _STATE:
        lib = None
        if os.environ.get("VISATTN_DISABLE_CPU_KERNELS", "0") in ("", "0"):
            try:
                text = source()
                lib = ctypes.CDLL(str(build(text)))
                _declare(lib, text)
            except (OSError, RuntimeError) as err:  # pragma: no cover - depends on the machine
                warnings.warn(
                    f"visattn: CPU kernels unavailable, using the reference formulas ({err})",
                    RuntimeWarning,
                    stacklevel=3,
                )
                lib = None
        _STATE["lib"] = lib
    return _STATE["lib"]  # type: ignore[return-value]


def available() -> bool:
    """Whether the fused CPU kernels are built and loadable on this machine."""
    return _lib() is not None


# ----------------------------------------------------------------------------- ctypes signatures
# Read from the extern "C" definitions of the source, so that they cannot drift from it. Only the
# C types the kernels use are known; any other is an error, not a guess.

_SCALARS = {
    "int": ctypes.c_int,
    "int64_t": ctypes.c_int64,
    "float": ctypes.c_float,
    "double": ctypes.c_double,
    "bool": ctypes.c_bool,
}
_POINTEES = {"void", *_SCALARS}  # any pointer to these is passed as an address (c_void_p)
_DEFINITION = re.compile(r"^([A-Za-z_]\w*)[ \t]+([A-Za-z_]\w*)[ \t]*\(", re.M)
_PARAM = re.compile(r"(const\s+)?([A-Za-z_]\w*)\s*(\*?)\s*([A-Za-z_]\w*)")

Signature = tuple[type | None, list[type]]


def _c_type(decl: str, where: str, pointer: bool) -> type:
    if pointer:
        if decl in _POINTEES:
            return ctypes.c_void_p
    elif decl in _SCALARS:
        return _SCALARS[decl]
    raise ValueError(f"unsupported C type {decl + '*' * pointer!r} in {where}")


def prototypes(text: str) -> dict[str, Signature]:
    """``{name: (restype, argtypes)}`` of every function defined at the top level of the
    ``extern "C" { ... }`` block of ``text``. Raises ValueError on a C type outside
    ``_SCALARS`` / pointers to them, or on a definition it cannot read."""
    parts = text.split('extern "C" {')
    if len(parts) != 2:
        raise ValueError('expected exactly one extern "C" { ... } block in the C++ source')
    sigs: dict[str, Signature] = {}
    for m in _DEFINITION.finditer(parts[1]):
        ret, name = m.group(1), m.group(2)
        close = parts[1].find(")", m.end())
        params = parts[1][m.end() : close].strip()
        if close < 0 or not parts[1][close + 1 :].lstrip().startswith("{"):
            raise ValueError(f"cannot read the definition of {name}")
        args = []
        for param in [] if params in ("", "void") else params.split(","):
            pm = _PARAM.fullmatch(param.strip())
            if pm is None:
                raise ValueError(f"cannot read parameter {param.strip()!r} of {name}")
            args.append(
                _c_type(pm.group(2), f"parameter {pm.group(4)} of {name}", bool(pm.group(3)))
            )
        restype = None if ret == "void" else _c_type(ret, f"the result of {name}", False)
        sigs[name] = (restype, args)
    if not sigs:
        raise ValueError('no function definitions found in the extern "C" block')
    return sigs


def _declare(lib: ctypes.CDLL, text: str) -> None:
    for name, (restype, argtypes) in prototypes(text).items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = restype


# ----------------------------------------------------------------------------- helpers


def is_channels_last(x: torch.Tensor) -> bool:
    """True when x is channels_last-contiguous (and not also NCHW-contiguous)."""
    return (not x.is_contiguous()) and x.is_contiguous(memory_format=torch.channels_last)


_DEPRECATED = {"layout_of": "is_channels_last"}


def __getattr__(name: str) -> object:
    """The old names of :data:`_DEPRECATED`, with a DeprecationWarning."""
    if name in _DEPRECATED:
        new = _DEPRECATED[name]
        warnings.warn(
            f"visattn.kernels.cpu.{name} is deprecated; use {new}",
            DeprecationWarning,
            stacklevel=2,
        )
        return globals()[new]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _fmt(cl: bool) -> torch.memory_format:
    return torch.channels_last if cl else torch.contiguous_format


def as_layout(t: torch.Tensor, cl: bool) -> torch.Tensor:
    """``t`` contiguous in the given layout (no copy when it already is)."""
    return t.contiguous(memory_format=_fmt(cl))


_MADV_HUGEPAGE = 14
_HUGE = 1 << 21


def _libc() -> ctypes.CDLL | None:
    if "libc" not in _STATE:
        libc = None
        if platform.system() == "Linux":
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                libc.madvise.restype = ctypes.c_int
            except (OSError, AttributeError):  # pragma: no cover - non-glibc systems
                libc = None
        _STATE["libc"] = libc
    return _STATE["libc"]  # type: ignore[return-value]


def _advise_huge_pages(storage: torch.UntypedStorage) -> None:
    """Ask for transparent huge pages on a new output's range (advice only: errors are harmless).

    The output pool calls this for new outputs of at least ``_pool.MIN_BYTES`` only."""
    libc = _libc()
    if libc is None:
        return
    ptr = storage.data_ptr()
    start = (ptr + _HUGE - 1) & ~(_HUGE - 1)
    end = (ptr + storage.nbytes()) & ~(_HUGE - 1)
    if end > start:
        libc.madvise(start, end - start, _MADV_HUGEPAGE)


def _empty(shape: torch.Size, dtype: torch.dtype, cl: bool) -> torch.Tensor:
    """A full-size output: reused memory from the output pool where possible, else a fresh
    allocation advised to use transparent huge pages."""
    return output_pool(_advise_huge_pages).empty(shape, dtype, _fmt(cl))


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _prep(x: torch.Tensor) -> tuple[torch.Tensor, bool, int, int, int, int]:
    cl = is_channels_last(x)
    x = as_layout(x, cl)
    n, c, h, w = x.shape
    return x, cl, 0 if x.dtype == torch.float32 else 1, n, c, h * w


def _nt() -> int:
    return max(1, torch.get_num_threads())


# ----------------------------------------------------------------------------- kernels


def stats_c(x: torch.Tensor, norm: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_p x, max_p x), each float32 (N, C); with ``norm`` (rows al, be) of x~ = x al + be."""
    x, cl, dt, n, c, p = _prep(x)
    norm = flat_f32(norm)
    s = torch.empty(n, c, dtype=torch.float32)
    m = torch.empty(n, c, dtype=torch.float32)
    _lib().va_stats_c(dt, int(cl), x.data_ptr(), n, c, p, _nt(), s.data_ptr(), m.data_ptr(),
                      _ptr(norm))  # fmt: skip
    return s, m


def apply(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None = None,
    norm: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """y = (x a_c) b_p in x's dtype and layout (x~ for x with ``norm``)."""
    x, cl, dt, n, c, p = _prep(x)
    a, b, norm = map(flat_f32, (a, b, norm))
    y = _empty(x.shape, x.dtype, cl)
    _lib().va_apply(dt, int(cl), x.data_ptr(), y.data_ptr(), a.data_ptr(), _ptr(b), n, c, p, _nt(),
                    _ptr(norm))  # fmt: skip
    return y


def stats_p(
    x: torch.Tensor, a: torch.Tensor, norm: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_c a_c x, max_c a_c x), each float32 (N, H W) (x~ for x with ``norm``)."""
    x, cl, dt, n, c, p = _prep(x)
    a, norm = flat_f32(a), flat_f32(norm)
    s = torch.empty(n, p, dtype=torch.float32)
    m = torch.empty(n, p, dtype=torch.float32)
    _lib().va_stats_p(dt, int(cl), x.data_ptr(), a.data_ptr(), s.data_ptr(), m.data_ptr(), n, c,
                      p, _nt(), _ptr(norm))  # fmt: skip
    return s, m


def _reduce(dy, x, a, b, zmax, pmax, norm):
    """The C++ bwd_reduce: (mom, db, pcnt), mom float32 (K, N, C) with K = 1 + [zmax] rows
    (q, zcnt), or with ``norm`` 3 + 2 [zmax] rows (see :func:`bwd_reduce_norm`)."""
    x, cl, dt, n, c, p = _prep(x)
    dy = as_layout(as_dtype(dy, x.dtype), cl)
    a, b, zmax, pmax, norm = map(flat_f32, (a, b, zmax, pmax, norm))
    k = (1 if norm is None else 3) + (0 if zmax is None else 1 if norm is None else 2)
    mom = torch.empty(k, n, c, dtype=torch.float32)
    db = torch.empty(n, p, dtype=torch.float32) if b is not None else None
    pc = torch.empty(n, p, dtype=torch.float32) if (zmax is not None and b is not None) else None
    _lib().va_bwd_reduce(
        dt, int(cl), dy.data_ptr(), x.data_ptr(), a.data_ptr(), _ptr(b), _ptr(zmax), _ptr(pmax),
        _ptr(norm), mom.data_ptr(), _ptr(db), _ptr(pc), n, c, p, _nt(),
    )  # fmt: skip
    return mom, db, pc


def bwd_reduce(
    dy: torch.Tensor,
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor | None = None,
    zmax: torch.Tensor | None = None,
    pmax: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """q_c = sum_p dy x b_p; with b also db_p = sum_c dy a_c x; with zmax the tie counts
    sum_p [x == zmax_c] and (with b) sum_c [a_c x == pmax_p]."""
    mom, db, pc = _reduce(dy, x, a, b, zmax, pmax, None)
    return mom[0], db, (mom[1] if zmax is not None else None), pc


def bwd_reduce_norm(
    dy: torch.Tensor,
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor | None,
    zmax: torch.Tensor | None,
    pmax: torch.Tensor | None,
    norm: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """:func:`bwd_reduce` for x~ = x al + be (``norm`` rows al, be, mu), as sums on d = x - mu:
    (mom, db, pcnt), mom float32 (K, N, C) with rows sum_p dy b, sum_p dy b d, sum_p d and, with
    zmax, sum_p [x~ == zmax_c] and sum_p [x~ == zmax_c] d (K = 5, else 3)."""
    return _reduce(dy, x, a, b, zmax, pmax, norm)


def _channel(x, a, gavg, gmax, pmax, norm):
    """The C++ bwd_channel: float32 (1, N, C), or (2, N, C) with ``norm``."""
    x, cl, dt, n, c, p = _prep(x)
    a, gavg, gmax, pmax, norm = map(flat_f32, (a, gavg, gmax, pmax, norm))
    mom = torch.empty(1 if norm is None else 2, n, c, dtype=torch.float32)
    _lib().va_bwd_channel(
        dt, int(cl), x.data_ptr(), a.data_ptr(), gavg.data_ptr(), _ptr(gmax), _ptr(pmax),
        _ptr(norm), mom.data_ptr(), n, c, p, _nt(),
    )  # fmt: skip
    return mom


def bwd_channel(
    x: torch.Tensor,
    a: torch.Tensor,
    gavg: torch.Tensor,
    gmax: torch.Tensor | None = None,
    pmax: torch.Tensor | None = None,
) -> torch.Tensor:
    """out_c = sum_p x (gavg_p + [a_c x == pmax_p] gmax_p), float32 (N, C)."""
    return _channel(x, a, gavg, gmax, pmax, None)[0]


def bwd_channel_norm(
    x: torch.Tensor,
    a: torch.Tensor,
    gavg: torch.Tensor,
    gmax: torch.Tensor | None,
    pmax: torch.Tensor | None,
    norm: torch.Tensor,
) -> torch.Tensor:
    """:func:`bwd_channel` for x~ = x al + be (``norm`` rows al, be, mu): float32 (2, N, C) with
    rows sum_p [a_c x~ == pmax_p] gmax_p (zeros without gmax) and sum_p d w_p, d = x - mu,
    w_p = gavg_p + [a_c x~ == pmax_p] gmax_p."""
    return _channel(x, a, gavg, gmax, pmax, norm)


def bwd_apply(
    dy: torch.Tensor,
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor | None,
    gavg: torch.Tensor | None,
    gmax: torch.Tensor | None,
    pmax: torch.Tensor | None,
    cavg: torch.Tensor,
    cmax: torch.Tensor | None,
    zmax: torch.Tensor | None,
    norm: torch.Tensor | None = None,
) -> torch.Tensor:
    """dx = a_c (dy b_p + gavg_p + [a_c x == pmax_p] gmax_p) + cavg_c + [x == zmax_c] cmax_c.

    With ``norm`` (rows al, be, mu, v, w): that r = dL/dx~ of x~ = x al + be, returned as
    dL/dx = al_c r + v_c (x - mu_c) + w_c (the folded BatchNorm's backward)."""
    x, cl, dt, n, c, p = _prep(x)
    dy = as_layout(as_dtype(dy, x.dtype), cl)
    a, b, gavg, gmax, pmax = map(flat_f32, (a, b, gavg, gmax, pmax))
    cavg, cmax, zmax, norm = map(flat_f32, (cavg, cmax, zmax, norm))
    dx = _empty(x.shape, x.dtype, cl)
    _lib().va_bwd_apply(
        dt, int(cl), dy.data_ptr(), x.data_ptr(), a.data_ptr(), _ptr(b), _ptr(gavg), _ptr(gmax),
        _ptr(pmax), cavg.data_ptr(), _ptr(cmax), _ptr(zmax), dx.data_ptr(), n, c, p, _nt(),
        _ptr(norm),
    )  # fmt: skip
    return dx
