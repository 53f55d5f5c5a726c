"""Side-by-side benchmark of SE (arXiv:1709.01507), CBAM (arXiv:1807.06521) and the bilinear
sampler (arXiv:1506.02025): reference formulas, fused kernels, torch.compile, timm, grid_sample.

For every block and shape it prints a markdown table: median time of forward+backward over the
repeats, **memory passes** = time x measured copy bandwidth / tensor bytes (DESIGN.md §5: the
floor of a block is 5 passes forward+backward), the ratio to timm (or to ``grid_sample``), and
for CBAM the peak memory of one forward+backward. Bandwidth comes from a large ``copy_`` in the
same run (read + write bytes / time). Peak memory: on CUDA ``torch.cuda.max_memory_allocated``
above the memory held before the call; on CPU the peak of the running sum of the allocation /
free events that ``torch.profiler`` (``profile_memory=True``) records for PyTorch's CPU
allocator during the call (block input, parameters and dy are allocated before and not counted;
the output, everything saved for backward, temporaries and x.grad are). The C++ kernels allocate
through PyTorch too; their output pool (:mod:`visattn.kernels._pool`) is emptied before the
call, so that the outputs it would otherwise hand out again are counted as allocations; their
small per-tile scratch vectors, < 1% of a pass, are not counted.

On CUDA it also measures training images/s of ``resnet50``, ``seresnet50`` and ``cbam_resnet50``
(``visattn.create_model``, from the models package; skipped with a message when it is missing).
It never fails on time: it is a measuring tool. Entry points: ``visattn bench`` (CLI),
``python benchmarks/bench.py``, :func:`main`. Test: ``tests/kernels/test_kernels_bench.py``.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .kernels._backend import synchronize

__all__ = ["main"]

RESNET50_STAGES = [(256, 56), (512, 28), (1024, 14), (2048, 7)]


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


def _time(fn: Callable[[], object], ctx: Context, repeats: int | None = None) -> float:
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


def _time_interleaved(
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
    seconds = _time(lambda: dst.copy_(src), ctx, repeats=max(5, ctx.repeats))
    return 2 * src.numel() * 4 / seconds


def _peak_bytes(
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


def _fwd_bwd(module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        y = module(x)
        y.backward(dy)

    return step


def _layout(t: torch.Tensor, ctx: Context) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if ctx.channels_last else t


def _add(ctx: Context, block, shape, impl, seconds, nbytes, peak=None, note="", best=0.0,
         host=None) -> Row:  # fmt: skip
    row = Row(block, shape, impl, seconds * 1e3, seconds * ctx.bandwidth / nbytes,
              best_ms=best * 1e3, peak_mb=None if peak is None else peak / 2**20, note=note,
              host_ms=host * 1e3 if host is not None and ctx.device.type == "cuda" else None)  # fmt: skip
    ctx.rows.append(row)
    print(f"  {block:8s} {shape:22s} {impl:28s} {row.ms:9.3f} ms  {row.passes:7.1f} passes"
          + (f"  peak {row.peak_mb:8.1f} MB" if row.peak_mb is not None else "")
          + (f"  host {row.host_ms:8.3f} ms" if row.host_ms is not None else ""), flush=True)  # fmt: skip
    return row


def _timm_modules() -> dict[str, Callable[[int], torch.nn.Module]]:
    if importlib.util.find_spec("timm") is None:
        return {}
    from timm.layers import SEModule
    from timm.layers.cbam import CbamModule

    return {
        "se": lambda c: SEModule(c, rd_ratio=1 / 16),
        "cbam": lambda c: CbamModule(c, rd_ratio=1 / 16, spatial_kernel_size=7),
    }


def bench_block(ctx: Context, block: str, n: int, c: int, size: int, compile_ref: bool) -> None:
    """Rows for one SE / CBAM shape: reference, fast, (compiled reference), timm (eager, compiled)."""
    import visattn
    from visattn.kernels import use_backend

    shape = f"{n}x{c}x{size}x{size}"
    x = _layout(torch.randn(n, c, size, size, device=ctx.device, dtype=ctx.dtype), ctx)
    x.requires_grad_(True)
    dy = _layout(torch.randn_like(x), ctx)
    nbytes = x.numel() * x.element_size()
    # Same layout as timm's modules: SE with MLP biases; CBAM with BatchNorm after the 7x7
    # convolution and no MLP biases (timm's CbamModule, and the official CBAM code).
    make = {
        "se": lambda: visattn.SqueezeExcite(c),
        "cbam": lambda: visattn.CBAM(c, norm=True, bias=False),
    }[block]
    ours = make().to(ctx.device, ctx.dtype)
    peak = block == "cbam"
    candidates: list[tuple[str, Callable[[], None], str]] = []
    candidates.append(("visattn reference", _fwd_bwd(ours, x, dy), "reference"))
    candidates.append(("visattn fast (default)", _fwd_bwd(ours, x, dy), "auto"))
    if ctx.device.type == "cuda":  # "auto" runs whichever of these two it measured faster
        candidates.append(("visattn triton", _fwd_bwd(ours, x, dy), "triton"))
    if compile_ref:
        compiled = torch.compile(ours)
        candidates.append(("torch.compile(reference)", _fwd_bwd(compiled, x, dy), "reference"))
    timm = _timm_modules()
    if block in timm:
        tm = timm[block](c).to(ctx.device, ctx.dtype)
        candidates.append(("timm", _fwd_bwd(tm, x, dy), "auto"))
        if compile_ref:
            candidates.append(("torch.compile(timm)", _fwd_bwd(torch.compile(tm), x, dy), "auto"))
    else:
        ctx.notes.append("timm is not installed: no timm rows")
    timm_ms = None
    rows = []
    for name, step, backend, seconds, best, host in _time_interleaved(
        candidates, ctx, f"{block} {shape}"
    ):
        mem = None
        if peak:
            with use_backend(backend):
                mem = _peak_bytes(step, ctx.device, clear=lambda: setattr(x, "grad", None))
        row = _add(ctx, block, shape, name, seconds, nbytes, mem, best=best, host=host)
        rows.append(row)
        if name == "timm":
            timm_ms = row.ms
    if timm_ms:
        for row in rows:
            row.ratio = row.ms / timm_ms


def bench_sampler(ctx: Context, n: int, c: int, size: int, out: int, compile_ref: bool) -> None:
    """Rows for the bilinear sampler: reference, fast, (compiled reference), grid_sample."""
    from visattn.functional import bilinear_sample

    dtype = ctx.dtype
    shape = f"{n}x{c}x{size}x{size}->{out} {str(dtype).replace('torch.', '')}"
    u = _layout(torch.randn(n, c, size, size, device=ctx.device, dtype=dtype), ctx)
    u.requires_grad_(True)
    ang = torch.rand(n, device=ctx.device) * 0.6 - 0.3
    theta = torch.zeros(n, 2, 3, device=ctx.device)
    theta[:, 0, 0] = theta[:, 1, 1] = torch.cos(ang) * 0.9
    theta[:, 0, 1] = -torch.sin(ang)
    theta[:, 1, 0] = torch.sin(ang)
    grid = F.affine_grid(theta, (n, c, out, out), align_corners=False).to(dtype)
    grid.requires_grad_(True)
    dy = _layout(torch.randn(n, c, out, out, device=ctx.device, dtype=dtype), ctx)
    nbytes = u.numel() * u.element_size()

    def ours() -> None:
        u.grad = grid.grad = None
        bilinear_sample(u, grid).backward(dy)

    def torch_gs() -> None:
        u.grad = grid.grad = None
        F.grid_sample(u, grid, align_corners=False).backward(dy)

    candidates = [
        ("visattn reference", ours, "reference"),
        ("visattn fast (default)", ours, "auto"),
    ]
    if compile_ref:
        comp = torch.compile(lambda a, g: bilinear_sample(a, g))

        def compiled() -> None:
            u.grad = grid.grad = None
            comp(u, grid).backward(dy)

        candidates.append(("torch.compile(reference)", compiled, "reference"))
    candidates.append(("F.grid_sample", torch_gs, "auto"))
    rows = []
    for name, _, _, seconds, best, host in _time_interleaved(candidates, ctx, f"sampler {shape}"):
        rows.append(_add(ctx, "sampler", shape, name, seconds, nbytes, best=best, host=host))
    base = [r.ms for r in rows if r.impl == "F.grid_sample"]
    for row in rows:
        row.ratio = row.ms / base[0] if base else None


def bench_kernels(ctx: Context, n: int, c: int, size: int) -> list[str]:
    """Every SE / CBAM kernel alone at one shape (the C++ ones on CPU, the Triton ones on CUDA):
    median time, the full-size passes it makes and the share of the measured copy bandwidth it
    reaches at that (a kernel at 100% moves its bytes as fast as ``copy_``). The small kernels
    (the MLP, the folded BatchNorm's steps) make no full-size pass: time only. Inputs are random
    stand-ins of the right shapes (the kernels' speed does not depend on the values)."""
    from visattn.kernels import select_impl, use_backend
    from visattn.kernels.ops import _kernels

    dev = ctx.device
    x = _layout(torch.randn(n, c, size, size, device=dev, dtype=ctx.dtype), ctx)
    with use_backend("triton" if dev.type == "cuda" else "cpu"):
        impl = select_impl(x)
    if impl is None:
        return [f"no fused kernels for {dev.type} here: kernel rows skipped"]
    k = _kernels(impl)
    p, hid = size * size, max(1, c // 16)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, dtype=torch.float32, device=dev)

    dy, a, b = _layout(torch.randn_like(x), ctx), rand(n, c), rand(n, p)
    gavg, gmax, cavg, cmax, count = rand(n, p), rand(n, p), rand(n, c), rand(n, c), rand(n, c)
    norm = k.fold(rand(c) + 0.5, rand(c), rand(c), rand(c) + 0.5, 1e-5)
    rows = torch.cat([norm[:3], rand(2, c)])
    zmax, pmax = k.stats_c(x, norm)[1], k.stats_p(x, a, norm)[1]
    z, w1, w2, b1, b2 = rand(2, n, c), rand(hid, c), rand(c, hid), rand(hid), rand(c)
    h, l, s = k.excite(z, w1, b1, w2, b2, "sigmoid")
    dl, dh = k.excite_backward(cavg, l, s, h, w1, w2, count, p, True, True, "sigmoid")[:2]
    sums = [rand(n, c) for _ in range(5)]
    kernels: list[tuple[str, int, Callable[[], object]]] = [
        ("stats_c", 1, lambda: k.stats_c(x)),
        ("stats_c, folded BN", 1, lambda: k.stats_c(x, norm)),
        ("apply (SE)", 2, lambda: k.apply(x, a)),
        ("stats_p, folded BN", 1, lambda: k.stats_p(x, a, norm)),
        ("apply (CBAM), folded BN", 2, lambda: k.apply(x, a, b, norm)),
        ("bwd_reduce (SE)", 2, lambda: k.bwd_reduce(dy, x, a)),
        ("bwd_reduce_norm (CBAM)", 2, lambda: k.bwd_reduce_norm(dy, x, a, b, zmax, pmax, norm)),
        ("bwd_channel_norm (CBAM)", 1, lambda: k.bwd_channel_norm(x, a, gavg, gmax, pmax, norm)),
        ("bwd_apply (SE)", 3, lambda: k.bwd_apply(dy, x, a, None, None, None, None, cavg, None,
                                                  None)),
        ("bwd_apply (CBAM), folded BN", 3, lambda: k.bwd_apply(dy, x, a, b, gavg, gmax, pmax, cavg,
                                                               cmax, zmax, rows)),
        ("excite (2 pools)", 0, lambda: k.excite(z, w1, b1, w2, b2, "sigmoid")),
        ("excite_backward", 0, lambda: k.excite_backward(cavg, l, s, h, w1, w2, count, p, True,
                                                         True, "sigmoid")),
        ("excite_wgrad", 0, lambda: k.excite_wgrad(dl, dh, z, h)),
        ("fold", 0, lambda: k.fold(sums[0], sums[1], sums[2], sums[3] + 1, 1e-5)),
        ("fold_backward", 0, lambda: k.fold_backward(norm, True, *sums, cmax, count, cavg, p)),
    ]  # fmt: skip
    shape = f"{n}x{c}x{size}x{size}"
    nbytes = x.numel() * x.element_size()
    lines = []
    for name, passes, fn in kernels:
        seconds = _time(fn, ctx)
        share = f"{passes * nbytes / seconds / ctx.bandwidth:.0%}" if passes else "-"
        lines.append(f"| {name} | {shape} | {seconds * 1e3:.3f} | {passes or '-'} | {share} |")
        print(lines[-1], flush=True)
    return lines


def _train_step(run, opt, images, labels, device: torch.device) -> Callable[[], None]:
    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(run(images), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_models(ctx: Context, batch: int, steps: int, compile_models: bool) -> list[str]:
    """Training images/s of resnet50 / seresnet50 / cbam_resnet50 (bf16 autocast, channels_last)."""
    if importlib.util.find_spec("visattn.models") is None:
        msg = (
            "visattn.models is not available (models branch not merged): whole-network rows skipped"
        )
        print(msg)
        return [msg]
    from visattn.models import create_model

    lines = [
        "| model | mode | images/s | vs resnet50 | peak memory (GiB) |",
        "|---|---|---|---|---|",
    ]
    from visattn.kernels import use_backend

    # On CUDA the default ("auto") runs each SE / CBAM call by the Triton kernels or the reference
    # formulas, whichever it measured faster on its first call of that kind (tuning_lines); the
    # Triton kernels (and with them the BatchNorm + attention node, docs/kernels.md) are also
    # measured pinned.
    runs = [("resnet50", "auto"), ("seresnet50", "auto"), ("cbam_resnet50", "auto")]
    if ctx.device.type == "cuda":
        runs[2:2] = [("seresnet50", "triton")]
        runs.append(("cbam_resnet50", "triton"))
    for mode in ["eager"] + (["compile"] if compile_models else []):
        base = None
        for name, backend in runs:
            label = name if backend == "auto" else f"{name} ({backend})"
            try:
                model = create_model(name).to(ctx.device).to(memory_format=torch.channels_last)
            except Exception as err:
                lines.append(f"| {label} | {mode} | failed: {type(err).__name__}: {err} | | |")
                continue
            run = torch.compile(model) if mode == "compile" else model
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            images = torch.randn(batch, 3, 224, 224, device=ctx.device).to(
                memory_format=torch.channels_last
            )
            labels = torch.randint(0, 1000, (batch,), device=ctx.device)

            train = _train_step(run, opt, images, labels, ctx.device)

            def step(train=train, backend=backend) -> None:
                with use_backend(backend):
                    train()

            try:
                seconds = _time(step, ctx, repeats=steps)
                mem = _peak_bytes(step, ctx.device) / 2**30
            except Exception as err:
                lines.append(f"| {label} | {mode} | failed: {type(err).__name__}: {err} | | |")
                continue
            ips = batch / seconds
            base = ips if name == "resnet50" else base
            rel = f"{ips / base:.0%}" if base else "-"
            lines.append(f"| {label} | {mode} | {ips:.1f} | {rel} | {mem:.2f} |")
            print(lines[-1], flush=True)
            del model, run, opt, step, train
    return lines


def tuning_lines() -> list[str]:
    """What backend "auto" measured in this run (CUDA: Triton kernels vs reference formulas, one
    row per kind of call; visattn.kernels.tuning_results)."""
    from visattn.kernels import tuning_results

    lines = [
        "| block | options | shape | dtype | layout | backward | kernels (ms) | reference (ms) | chosen |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in tuning_results():
        name, *options = r["block"]
        fast = next((f"{v:.3f} ({k})" for k, v in r["ms"].items() if k != "reference"), "failed")
        ref = f"{r['ms']['reference']:.3f}" if "reference" in r["ms"] else "failed"
        lines.append(
            f"| {name} | {', '.join(map(str, options))} | {'x'.join(map(str, r['shape']))} "
            f"| {str(r['dtype']).replace('torch.', '')} "
            f"| {'channels_last' if r['channels_last'] else 'NCHW'} | {r['backward']} "
            f"| {fast} | {ref} | {r['choice']} |"
        )
    return lines if len(lines) > 2 else []


def environment(ctx: Context) -> list[str]:
    lines = [
        f"- device: {_device_name(ctx.device)}",
        f"- torch {torch.__version__}, python {platform.python_version()}, "
        f"threads {torch.get_num_threads()}",
    ]
    for pkg in ("triton", "timm"):
        if importlib.util.find_spec(pkg) is not None:
            mod = __import__(pkg)
            lines.append(f"- {pkg} {getattr(mod, '__version__', '?')}")
    lines.append(
        f"- dtype {str(ctx.dtype).replace('torch.', '')}, "
        f"{'channels_last' if ctx.channels_last else 'NCHW'}, median of {ctx.repeats} repeats "
        f"after {ctx.warmup} warm-up"
    )
    lines.append(f"- measured copy bandwidth: {ctx.bandwidth / 1e9:.1f} GB/s (read + write)")
    if ctx.keep_freed_memory:
        lines.append("- allocator: glibc keeps freed memory for reuse (--keep-freed-memory)")
    return lines


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({_cpu_model()})"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def table(rows: list[Row]) -> list[str]:
    """Markdown rows; a "host (ms)" column is added when the rows carry host times (CUDA)."""
    host = any(r.host_ms is not None for r in rows)
    lines = [
        "| block | shape | implementation | median (ms) | best (ms) | memory passes | vs timm / grid_sample | peak memory (MB) |"
        + (" host (ms) |" if host else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if host else ""),
    ]
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        peak = f"{r.peak_mb:.1f}" if r.peak_mb is not None else "-"
        line = (
            f"| {r.block} | {r.shape} | {r.impl} | {r.ms:.3f} | {r.best_ms:.3f} | {r.passes:.1f} "
            f"| {ratio} | {peak} |"
        )
        if host:
            line += f" {r.host_ms:.3f} |" if r.host_ms is not None else " - |"
        lines.append(line)
    return lines


class _UsageError(Exception):
    """A command-line mistake, reported as one line on stderr (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(f"{self.prog}: error: {message}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="visattn bench",
        description="Side-by-side benchmark of SE / CBAM / sampler: reference, fused, compiled, "
        "timm, grid_sample (prints a markdown table; never fails on time).",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="default: float32 on CPU, bfloat16 on CUDA")  # fmt: skip
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="default: NCHW on CPU, channels_last on CUDA")  # fmt: skip
    p.add_argument("--batch", type=int, default=None, help="N (default 16 on CPU, 128 on CUDA)")
    p.add_argument("--blocks", default="se,cbam,sampler", help="comma list of se, cbam, sampler")
    p.add_argument("--quick", action="store_true", help="only the first ResNet-50 stage (C=256)")
    p.add_argument(
        "--repeats", type=int, default=None, help="timed repeats (default 5 CPU, 20 GPU)"
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads on CPU")
    p.add_argument("--compile", action="store_true", help="add torch.compile rows (slow)")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="CPU: let glibc reuse freed memory for every candidate (see docs/benchmarks.md)")  # fmt: skip
    p.add_argument("--sampler-shape", default=None,
                   help="N,C,H,OUT of the sampler (default 64,64,112,112 on CUDA, 8,32,56,56 on CPU)")  # fmt: skip
    p.add_argument("--sampler-dtypes", default=None,
                   help="comma list; default: float32,bfloat16 on CUDA, float32 on CPU")  # fmt: skip
    p.add_argument("--models", action=argparse.BooleanOptionalAction, default=None,
                   help="train images/s of the ResNet-50 family (default: on CUDA only)")  # fmt: skip
    p.add_argument("--compile-models", action="store_true",
                   help="also train the networks under torch.compile (slow: minutes per model)")  # fmt: skip
    p.add_argument("--kernels", action="store_true",
                   help="also time every SE / CBAM kernel alone at each shape")  # fmt: skip
    p.add_argument("--model-batch", type=int, default=128)
    p.add_argument("--model-steps", type=int, default=10)
    p.add_argument("--output", default=None, help="also write the markdown report to this file")
    return p


def _sampler_shape(spec: str | None) -> tuple[int, int, int, int] | None:
    if spec is None:
        return None
    try:
        values = tuple(int(v) for v in spec.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 1:
        raise _UsageError(
            f"visattn bench: error: --sampler-shape: expected four positive ints N,C,H,OUT, got {spec!r}"
        )
    return values  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0, or 2 (one line on stderr) for a command-line mistake."""
    try:
        args = _parser().parse_args(argv)
        sampler_shape = _sampler_shape(args.sampler_shape)
    except _UsageError as err:
        print(str(err), file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            print("visattn bench: error: --device cuda but CUDA is not available", file=sys.stderr)
            return 2
    gpu = device.type == "cuda"
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    kept = args.keep_freed_memory and keep_freed_memory()
    if args.keep_freed_memory and not kept:
        print("visattn bench: --keep-freed-memory: not glibc on Linux, ignored", file=sys.stderr)
    dtype = getattr(torch, args.dtype or ("bfloat16" if gpu else "float32"))
    ctx = Context(
        device=device,
        dtype=dtype,
        channels_last=args.channels_last if args.channels_last is not None else gpu,
        repeats=args.repeats or (20 if gpu else 5),
        warmup=args.warmup,
        keep_freed_memory=kept,
    )
    batch = args.batch or (128 if gpu else 16)
    blocks = [b.strip() for b in args.blocks.split(",") if b.strip()]
    for b in blocks:
        if b not in ("se", "cbam", "sampler"):
            print(f"visattn bench: error: --blocks: unknown block {b!r}", file=sys.stderr)
            return 2
    stages = RESNET50_STAGES[:1] if args.quick else RESNET50_STAGES
    big = max(batch * c * s * s for c, s in stages) * 4
    ctx.bandwidth = measure_bandwidth(ctx, max(big, 64 * 2**20))
    print("\n".join(environment(ctx)), flush=True)
    for block in ("se", "cbam"):
        if block in blocks:
            for c, s in stages:
                bench_block(ctx, block, batch, c, s, args.compile)
    kernel_lines: list[str] = []
    if args.kernels:
        for c, s in stages:
            kernel_lines += bench_kernels(ctx, batch, c, s)
    if "sampler" in blocks:
        n, c, h, o = sampler_shape or ((64, 64, 112, 112) if gpu else (8, 32, 56, 56))
        sdtypes = (args.sampler_dtypes or ("float32,bfloat16" if gpu else "float32")).split(",")
        for name in sdtypes:
            ctx.dtype = getattr(torch, name.strip())
            bench_sampler(ctx, n, c, h, o, args.compile)
        ctx.dtype = dtype
    model_lines: list[str] = []
    if args.models if args.models is not None else gpu:
        model_lines = bench_models(ctx, args.model_batch, args.model_steps, args.compile_models)
    report = ["## Results", "", *environment(ctx)]
    if ctx.rows:
        report += ["", *table(ctx.rows)]
    if kernel_lines:
        report += ["", "### Each kernel alone", "",
                   "| kernel | shape | median (ms) | passes | share of copy bandwidth |",
                   "|---|---|---|---|---|", *kernel_lines]  # fmt: skip
    if model_lines:
        report += ["", "### Whole networks (train, bf16 autocast, channels_last)", "", *model_lines]
    tuned = tuning_lines()
    if tuned:
        report += ["", '### What backend "auto" measured (first call of each kind)', "", *tuned]
    for note in sorted(set(ctx.notes)):
        report.append(f"\nNote: {note}")
    text = "\n".join(report) + "\n"
    print()
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
