"""Measured choice between the fast kernels and the reference formulas ("the default is the
fastest correct path for the device", docs/kernels.md).

Whether the Triton SE / CBAM kernels beat the plain formulas on a GPU depends on the GPU, the
shape, the dtype and the memory format: on an H200 the first version was slower than the
reference, and the kernels changed since (docs/benchmarks.md). So on the devices of
:data:`TUNED_DEVICES` (CUDA) backend ``"auto"`` measures, like ``torch.backends.cudnn.benchmark``:
the first call of each kind (block and options, shape, strides, dtype, device, autocast,
training or not, whether gradients flow) runs both candidates a few times back to back, forward
and, where autograd records, backward, and every later call of that kind uses the one with the
shorter time per call: its device time or its host time, whichever bounds calls that follow one
another. (Inside a GPU-bound training step a block's host time hides behind other layers' GPU
work, so this can keep the formulas where the kernels, with more host work, would have been
faster there; it never picks a path whose host work slows a host-bound run, e.g. small batches.)

- Measuring changes nothing: it runs on a detached copy of the input, takes gradients with
  ``torch.autograd.grad`` (no ``.grad`` is touched), saves its tensors past the hooks of an
  enclosing ``torch.utils.checkpoint`` and puts the buffers of the BatchNorms involved (running
  statistics, batch counter) back as they were.
- Where nothing can be measured the reference formulas run: while ``torch.compile`` /
  ``torch.export`` / ``torch.jit.trace`` trace, and on fake tensors (Inductor fuses the formulas
  into kernels of its own); while a CUDA graph is being captured, for kinds not yet measured.
- With ``torch.use_deterministic_algorithms(True)`` nothing is measured (the choice could differ
  from run to run): the kernels run, whose results repeat bitwise (no atomics).
- If the fast candidate fails while being measured (say a Triton build error on an unusual
  GPU), the reference is chosen for that kind and a warning says why. If the formulas run out
  of memory while being measured (the outer forward holds its tensors meanwhile), the kernels
  are chosen, and the same if both do; any other error of the formulas is raised.
- ``VISATTN_BACKEND=triton`` / ``reference`` (or :func:`use_backend`) pin the choice;
  :func:`tuning_results` lists what was measured, :func:`clear_tuning` forgets it.

The tuner is handed the block as a callable (``run``) and switches between the candidates with
:func:`visattn.kernels.use_backend`: it knows no formula and imports nothing above the kernels
(``tests/kernels/test_kernels_layering.py``).

As with cuDNN's benchmark mode, two processes may choose differently; both candidates agree
within dtype tolerance (``tests/kernels/test_kernels_se_cbam.py``).
Tests: ``tests/kernels/test_kernels_tune.py``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor

from ._backend import get_backend, synchronize, use_backend

__all__ = ["TUNED_DEVICES", "clear_tuning", "tuned_impl", "tuning_results"]

#: Device types on which backend "auto" measures instead of taking the fast kernels outright.
TUNED_DEVICES: set[str] = {"cuda"}

WARMUP, REPEATS = 2, 5

_BACKEND_OF = {"triton": "triton", "c": "cpu", None: "reference"}
_CHOICES: dict[tuple, str | None] = {}
_RESULTS: list[dict[str, Any]] = []


def _key(block: tuple, x: torch.Tensor, tensors: Sequence[Any], modules: Sequence[nn.Module],
         backward: bool) -> tuple:  # fmt: skip
    """What makes two calls the same kind (cheap: computed on every call)."""
    dev = x.device.type
    autocast = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
    weight = tensors[0].dtype if tensors else None
    return (block, x.shape, x.stride(), x.dtype, x.device, autocast, backward, x.requires_grad,
            weight, tuple((type(m), m.training) for m in modules))  # fmt: skip


def _call(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
          grads_of: list[torch.Tensor], backward: bool) -> None:  # fmt: skip
    """One call of the block on a detached copy of x: forward, and backward when timed."""
    leaf = x.detach().requires_grad_(x.requires_grad and backward)
    y = run(leaf)
    if backward:
        inputs = ([leaf] if leaf.requires_grad else []) + grads_of
        torch.autograd.grad(y, inputs, torch.ones_like(y), allow_unused=True)


def _seconds_per_call(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                      grads_of: list[torch.Tensor], backward: bool) -> float:  # fmt: skip
    """Seconds per call over REPEATS calls back to back, after WARMUP.

    The device is synchronised around the timed calls only, not between them: the host
    launches ahead, so a call costs its device time or its host time, whichever is larger."""
    # Plain saved tensors: the hooks of an enclosing torch.utils.checkpoint must not see these
    # (its recomputation, already decided, measures nothing and would find fewer).
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        for _ in range(WARMUP):
            _call(run, x, grads_of, backward)
        synchronize(x.device)
        start = time.perf_counter()
        for _ in range(REPEATS):
            _call(run, x, grads_of, backward)
        synchronize(x.device)
    return (time.perf_counter() - start) / REPEATS


def tuned_impl(
    impl: str | None,
    block: tuple,
    x: torch.Tensor,
    run: Callable[[torch.Tensor], torch.Tensor],
    tensors: Sequence[Any],
    modules: Iterable[nn.Module | None] = (),
) -> str | None:
    """``impl`` or ``None`` (the reference), whichever runs this kind of call faster.

    Args:
        impl: the fast kernels' name for x (``select_impl``); returned as is unless backend
            ``"auto"`` is active on a device of :data:`TUNED_DEVICES`.
        block: what is computed, hashable (the block's name and its options).
        x: the block's input.
        run: ``run(x)`` calls the block on another x (the same parameters and modules), using
            whatever backend is active.
        tensors: the block's parameters (None allowed); gradients flow to those requiring
            grad.
        modules: modules the block calls (a BatchNorm before it, its own BatchNorm; None
            allowed): gradients flow to their parameters too, their buffers are restored.
    """
    if impl is None or x.device.type not in TUNED_DEVICES or get_backend() != "auto":
        return impl
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or isinstance(x, FakeTensor):
        return None  # nothing to time while tracing: the formulas, for Inductor to fuse
    if torch.are_deterministic_algorithms_enabled():
        return impl  # a choice by timing could differ between runs; the kernels never do
    modules = [m for m in modules if m is not None]
    backward = torch.is_grad_enabled() and (
        x.requires_grad or any(t is not None and t.requires_grad for t in tensors)
    )
    key = _key(block, x, tensors, modules, backward)
    if key in _CHOICES:
        return _CHOICES[key]
    if x.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None  # no synchronising inside a CUDA graph capture
    grads_of = [t for m in modules for t in m.parameters()] + [t for t in tensors if t is not None]
    grads_of = list({id(t): t for t in grads_of if t.requires_grad}.values())
    buffers = [b for m in modules for b in m.buffers()]
    kept = [b.detach().clone() for b in buffers]
    times: dict[str | None, float] = {}
    failed: dict[str | None, Exception] = {}
    try:
        for candidate in (impl, None):
            with use_backend(_BACKEND_OF[candidate]):
                try:
                    times[candidate] = _seconds_per_call(run, x, grads_of, backward)
                except Exception as err:
                    # The kernels may fail where the formulas work (a Triton build error); the
                    # formulas' own errors are the caller's, unless memory ran out because of
                    # the measurement itself (the outer forward holds its tensors meanwhile).
                    if candidate is None and not isinstance(err, torch.OutOfMemoryError):
                        raise
                    failed[candidate] = err
    finally:
        with torch.no_grad():
            for b, k in zip(buffers, kept, strict=True):
                b.copy_(k)
    # The faster; with nothing measured (both ran out of memory), the kernels, which keep less.
    choice = min(times, key=times.__getitem__) if times else impl
    if failed:
        names = {impl: f"the {_BACKEND_OF[impl]} kernels", None: "the formulas"}
        why = "; ".join(f"{names[c]}: {type(e).__name__}: {e}" for c, e in failed.items())
        warnings.warn(
            f"visattn: backend 'auto' could not measure {block[0]} on shape {tuple(x.shape)} "
            f"({why}); such calls use {names[choice]}",
            RuntimeWarning,
            stacklevel=3,
        )
    _CHOICES[key] = choice
    _RESULTS.append({
        "block": block, "shape": tuple(x.shape), "dtype": x.dtype, "device": str(x.device),
        "channels_last": x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last),
        "backward": backward, "choice": _BACKEND_OF[choice],
        "ms": {_BACKEND_OF[c]: t * 1e3 for c, t in times.items()},
    })  # fmt: skip
    return choice


def tuning_results() -> list[dict[str, Any]]:
    """What backend ``"auto"`` measured so far, one dict per kind of call: ``block`` (name and
    options), ``shape``, ``dtype``, ``device``, ``channels_last``, ``backward`` (whether the
    backward was timed too), ``choice`` (``"triton"`` / ``"cpu"`` / ``"reference"``) and
    ``ms`` (each candidate's time per call, milliseconds)."""
    return [dict(r) for r in _RESULTS]


def clear_tuning() -> None:
    """Forget every measured choice: the next call of each kind measures again."""
    _CHOICES.clear()
    _RESULTS.clear()
