"""Backend switch of the fast kernels (docs/kernels.md, "Switching backends").

``VISATTN_BACKEND`` (environment, read at every call) and :func:`use_backend` (a context
manager, which wins over the environment) choose how SE, CBAM and the bilinear sampler run:

- ``"auto"`` (default): the fastest correct path for the device. On CPU the fused C++ kernels
  for SE and CBAM (always faster there) and ``torch.nn.functional.grid_sample`` for the sampler.
  On CUDA the Triton sampler (deterministic backward), and for SE and CBAM the Triton kernels or
  the reference formulas, whichever :mod:`visattn.kernels._tune` measured faster for that kind
  of call (on an H200 an earlier version of the kernels was slower than the reference:
  docs/benchmarks.md). The reference wherever no kernel applies.
- ``"reference"``: the plain formulas (docs/core.md) everywhere.
- ``"cpu"``: the C++ kernels on CPU tensors, the reference formulas on CUDA.
- ``"triton"``: the Triton SE / CBAM kernels on CUDA, without measuring, and on CPU tensors
  when ``TRITON_INTERPRET=1`` is set before ``triton`` is imported (the interpreter runs the
  kernels on the CPU: tests only).

Tests: ``tests/kernels/test_kernels_se_cbam.py`` (the switch),
``tests/kernels/test_kernels_tune.py`` (the measured choice).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

import torch

__all__ = [
    "BACKENDS",
    "as_dtype",
    "flat_f32",
    "get_backend",
    "select_impl",
    "synchronize",
    "triton_available",
    "use_backend",
]

BACKENDS = ("auto", "reference", "cpu", "triton")

_OVERRIDE: list[str] = []
_TRITON_OK: list[bool] = []


def _check(name: object, source: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(
            f"{source}: expected one of {', '.join(map(repr, BACKENDS))}, got {name!r}"
        )
    return name


def get_backend() -> str:
    """The active backend name: the innermost :func:`use_backend`, else ``VISATTN_BACKEND``."""
    if _OVERRIDE:
        return _OVERRIDE[-1]
    return _check(os.environ.get("VISATTN_BACKEND", "auto") or "auto", "VISATTN_BACKEND")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Context manager: run SE / CBAM / the sampler with backend ``name`` inside the block.

    Example: ``with visattn.kernels.use_backend("reference"): y = layer(x)``. Not thread-local.
    """
    _OVERRIDE.append(_check(name, "backend"))
    try:
        yield name
    finally:
        _OVERRIDE.pop()


@torch.compiler.assume_constant_result
def triton_available() -> bool:
    """Whether ``triton`` can be imported (checked once; a constant for torch.compile)."""
    if not _TRITON_OK:
        _TRITON_OK.append(importlib.util.find_spec("triton") is not None)
    return _TRITON_OK[0]


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_FAST_DTYPES = (torch.float32, torch.bfloat16)


def select_impl(x: torch.Tensor) -> str | None:
    """``"triton"``, ``"c"`` or ``None`` (reference) for the SE / CBAM kernels on ``x``.

    Under backend ``"auto"`` on CUDA this is the candidate that
    :func:`visattn.kernels._tune.tuned_impl` then measures against the reference formulas."""
    backend = get_backend()
    if backend == "reference" or torch.onnx.is_in_onnx_export():
        return None  # ONNX has no visattn:: operators: export the plain formulas
    if x.dtype not in (*_FAST_DTYPES, torch.float16):
        return None
    if x.device.type == "cuda":
        return "triton" if backend in ("auto", "triton") and triton_available() else None
    if x.device.type != "cpu":
        return None
    if backend == "triton":
        if not (interpret_mode() and triton_available()):
            raise RuntimeError(
                "backend: 'triton' on CPU tensors needs triton and TRITON_INTERPRET=1 set before "
                "triton is imported"
            )
        return "triton"
    if x.dtype not in _FAST_DTYPES:
        return None
    return "c" if cpu_kernels_available() else None


@torch.compiler.assume_constant_result
def cpu_kernels_available() -> bool:
    """Whether the C++ kernels build and load here (checked once; a constant for torch.compile)."""
    from . import cpu

    return cpu.available()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on CPU, where work is synchronous. For
    timing: ``visattn.kernels._tune`` and ``visattn.bench``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in dtype; t itself, without a dispatcher call, when it already is (the hot path)."""
    return t if t.dtype == dtype else t.to(dtype)


def flat_f32(t: torch.Tensor | None) -> torch.Tensor | None:
    """t (N, ...) as a contiguous float32 (N, K) matrix, the layout the kernels index; t itself
    when it already is one (the common case: no dispatcher calls on the hot path)."""
    if t is None:
        return None
    if t.dim() == 2 and t.dtype == torch.float32 and t.is_contiguous():
        return t
    return t.reshape(t.shape[0], -1).float().contiguous()
