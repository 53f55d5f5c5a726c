"""Timing and memory measurement of ``visattn bench`` (see :mod:`visattn.commands.bench`):
median / best seconds, round-robin timing of candidates, copy bandwidth, peak memory, the rows.

Test: ``tests/kernels/test_kernels_bench.py``.
"""

from __future__ import annotations

import ctypes
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..kernels._backend import synchronize


@dataclass
class Row:
    block: str
    shape: str
    impl: str
    ms: float
    passes: float
    best_ms: float = 0.0
    ratio: float | None = None
    peak_mb: float | None = None
    note: str = ""
    host_ms: float | None = None  # CUDA: time until forward + backward are launched


@dataclass
class Context:
    device: torch.device
    dtype: torch.dtype
    channels_last: bool
    repeats: int
    warmup: int
    bandwidth: float = 0.0  # bytes / s, read + write
    best: float = 0.0  # minimum seconds of the last _time call
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    keep_freed_memory: bool = False


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of mapping every large tensor
    afresh (``mallopt``: mmap threshold 1 GiB, trim threshold 2 GiB), for the whole process.

    Every candidate (timm, the reference, ``grid_sample``) then reuses memory the way the fused
    CPU kernels' output pool does, which separates the kernels' speed from the allocator's.
    Returns False where this is not glibc on Linux, or glibc refuses.
    """
    if platform.system() != "Linux":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 31))


def time_median(fn: Callable[[], object], ctx: Context, repeats: int | None = None) -> float:
    """Median seconds of ``fn`` over the repeats (after warm-up); the minimum goes to ``ctx.best``."""
    for _ in range(ctx.warmup):
        fn()
    synchronize(ctx.device)
    times = []
    for _ in range(repeats or ctx.repeats):
        start = time.perf_counter()
        fn()
        synchronize(ctx.device)
        times.append(time.perf_counter() - start)
    ctx.best = min(times)
    return statistics.median(times)


def time_interleaved(
    candidates: list[tuple[str, Callable[[], None], str]], ctx: Context, label: str
) -> list[tuple[str, Callable[[], None], str, float, float, float]]:
    """Median and minimum seconds of each candidate, timed round-robin, and the median host
    seconds (until the call returns, before synchronising: on CUDA the time to launch its work;
    when it is close to the total, the GPU waits for the host).

    Every repeat runs each candidate once in turn, so a load spike on a shared machine hits
    all of them alike instead of one candidate's whole series. Candidates that fail are
    reported and dropped.
    """
    from visattn.kernels import use_backend

    ready = []
    for name, step, backend in candidates:
        try:
            with use_backend(backend):
                for _ in range(max(1, ctx.warmup)):
                    step()
            synchronize(ctx.device)
        except Exception as err:  # a measuring tool: report and go on
            print(f"  {label} {name}: failed ({type(err).__name__}: {err})", flush=True)
            continue
        ready.append((name, step, backend))
    times: dict[str, list[float]] = {name: [] for name, _, _ in ready}
    hosts: dict[str, list[float]] = {name: [] for name, _, _ in ready}
    for _ in range(ctx.repeats):
        for name, step, backend in ready:
            with use_backend(backend):
                start = time.perf_counter()
                step()
                launched = time.perf_counter()
                synchronize(ctx.device)
                times[name].append(time.perf_counter() - start)
                hosts[name].append(launched - start)
    return [
        (name, step, backend, statistics.median(times[name]), min(times[name]),
         statistics.median(hosts[name]))
        for name, step, backend in ready
    ]  # fmt: skip


def measure_bandwidth(ctx: Context, nbytes: int) -> float:
    """Copy bandwidth (bytes read + written per second) of a ``copy_`` of ``nbytes``."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=ctx.device).normal_()
    dst = torch.empty_like(src)
    seconds = time_median(lambda: dst.copy_(src), ctx, repeats=max(5, ctx.repeats))
    return 2 * src.numel() * 4 / seconds


def peak_bytes(
    fn: Callable[[], object], device: torch.device, clear: Callable[[], None] | None = None
) -> float:
    """Peak bytes allocated by PyTorch during ``fn()`` above what was live before.

    ``clear`` runs first (outside the measurement): it drops what the previous call left (the
    input's .grad), so that its release is not counted against this call's peak.
    """
    if clear is not None:
        clear()
    if device.type == "cpu":
        from visattn.kernels import empty_cache

        empty_cache()  # the fused kernels' outputs are then new allocations, seen and counted
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return float(torch.cuda.max_memory_allocated(device) - base)
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    deltas = []
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation:
            deltas.append((event.start_time_ns, event.extra_fields.alloc_size))
    running = peak = 0
    for _, delta in sorted(deltas):
        running += delta
        peak = max(peak, running)
    return float(peak)


def fwd_bwd(module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        y = module(x)
        y.backward(dy)

    return step


def layout(t: torch.Tensor, ctx: Context) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if ctx.channels_last else t


def add_row(ctx: Context, block, shape, impl, seconds, nbytes, peak=None, note="", best=0.0,
         host=None) -> Row:  # fmt: skip
    row = Row(block, shape, impl, seconds * 1e3, seconds * ctx.bandwidth / nbytes,
              best_ms=best * 1e3, peak_mb=None if peak is None else peak / 2**20, note=note,
              host_ms=host * 1e3 if host is not None and ctx.device.type == "cuda" else None)  # fmt: skip
    ctx.rows.append(row)
    print(f"  {block:8s} {shape:22s} {impl:28s} {row.ms:9.3f} ms  {row.passes:7.1f} passes"
          + (f"  peak {row.peak_mb:8.1f} MB" if row.peak_mb is not None else "")
          + (f"  host {row.host_ms:8.3f} ms" if row.host_ms is not None else ""), flush=True)  # fmt: skip
    return row
