"""Side-by-side benchmark of SE, CBAM, the bilinear sampler and every registered attention
mechanism (forward + backward).

SE (arXiv:1709.01507), CBAM (arXiv:1807.06521) and the bilinear sampler (arXiv:1506.02025):
reference formulas, fused kernels, torch.compile, timm, grid_sample. Every other name of
:func:`visattn.list_attention` given to ``--blocks`` (``all``: every one, and the sampler): the
layer ``create_attention(name, C)`` against timm's module computing the same thing, where timm has
one (:mod:`._bench_mechanisms`, which also prints the "every mechanism" table).

For every block and shape it prints a markdown table: median time of forward+backward over the
repeats, **memory passes** = time x measured copy bandwidth / tensor bytes (docs/benchmarks.md:
the floor of a block is 5 passes forward+backward), the ratio to timm (or to ``grid_sample``), and
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
``python -m visattn.bench`` and ``python benchmarks/bench.py`` (both run :func:`main`),
:func:`main`. The timing and memory measurement is in :mod:`._bench_timing`, the kernel tables in
:mod:`._bench_kernels`, the mechanisms against timm in :mod:`._bench_mechanisms`. Test:
``tests/kernels/test_kernels_bench.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ._bench_kernels import bench_kernels, tuning_lines
from ._bench_mechanisms import (
    TIMM_EQUIVALENTS,
    available_memory,
    bench_mechanism,
    mechanism_table,
    timm_available,
)
from ._bench_timing import (
    Context,
    Row,
    add_row,
    fwd_bwd,
    keep_freed_memory,
    layout,
    measure_bandwidth,
    peak_bytes,
    time_interleaved,
    time_median,
)

__all__ = [
    "RESNET50_STAGES",
    "TIMM_EQUIVALENTS",
    "Context",
    "Row",
    "bench_block",
    "bench_kernels",
    "bench_mechanism",
    "bench_models",
    "bench_sampler",
    "environment",
    "keep_freed_memory",
    "main",
    "measure_bandwidth",
    "mechanism_table",
    "table",
    "tuning_lines",
]

RESNET50_STAGES = [(256, 56), (512, 28), (1024, 14), (2048, 7)]


def _timm_modules() -> dict[str, Callable[[int], torch.nn.Module]]:
    if not timm_available():
        return {}
    return {name: TIMM_EQUIVALENTS[name].build for name in ("se", "cbam")}


def bench_block(ctx: Context, block: str, n: int, c: int, size: int, compile_ref: bool) -> None:
    """Rows for one SE / CBAM shape: reference, fast, (compiled reference), timm (eager, compiled)."""
    import visattn
    from visattn.kernels import use_backend

    shape = f"{n}x{c}x{size}x{size}"
    x = layout(torch.randn(n, c, size, size, device=ctx.device, dtype=ctx.dtype), ctx)
    x.requires_grad_(True)
    dy = layout(torch.randn_like(x), ctx)
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
    candidates.append(("visattn reference", fwd_bwd(ours, x, dy), "reference"))
    candidates.append(("visattn fast (default)", fwd_bwd(ours, x, dy), "auto"))
    if ctx.device.type == "cuda":  # "auto" runs whichever of these two it measured faster
        candidates.append(("visattn triton", fwd_bwd(ours, x, dy), "triton"))
    if compile_ref:
        compiled = torch.compile(ours)
        candidates.append(("torch.compile(reference)", fwd_bwd(compiled, x, dy), "reference"))
    timm = _timm_modules()
    if block in timm:
        tm = timm[block](c).to(ctx.device, ctx.dtype)
        candidates.append(("timm", fwd_bwd(tm, x, dy), "auto"))
        if compile_ref:
            candidates.append(("torch.compile(timm)", fwd_bwd(torch.compile(tm), x, dy), "auto"))
    else:
        ctx.notes.append("timm is not installed: no timm rows")
    timm_ms = None
    rows = []
    for name, step, backend, seconds, best, host in time_interleaved(
        candidates, ctx, f"{block} {shape}"
    ):
        mem = None
        if peak:
            with use_backend(backend):
                mem = peak_bytes(step, ctx.device, clear=lambda: setattr(x, "grad", None))
        row = add_row(ctx, block, shape, name, seconds, nbytes, mem, best=best, host=host)
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
    u = layout(torch.randn(n, c, size, size, device=ctx.device, dtype=dtype), ctx)
    u.requires_grad_(True)
    ang = torch.rand(n, device=ctx.device) * 0.6 - 0.3
    theta = torch.zeros(n, 2, 3, device=ctx.device)
    theta[:, 0, 0] = theta[:, 1, 1] = torch.cos(ang) * 0.9
    theta[:, 0, 1] = -torch.sin(ang)
    theta[:, 1, 0] = torch.sin(ang)
    grid = F.affine_grid(theta, (n, c, out, out), align_corners=False).to(dtype)
    grid.requires_grad_(True)
    dy = layout(torch.randn(n, c, out, out, device=ctx.device, dtype=dtype), ctx)
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
    for name, _, _, seconds, best, host in time_interleaved(candidates, ctx, f"sampler {shape}"):
        rows.append(add_row(ctx, "sampler", shape, name, seconds, nbytes, best=best, host=host))
    base = [r.ms for r in rows if r.impl == "F.grid_sample"]
    for row in rows:
        row.ratio = row.ms / base[0] if base else None


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
                seconds = time_median(step, ctx, repeats=steps)
                mem = peak_bytes(step, ctx.device) / 2**30
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
        description="Side-by-side benchmark of SE / CBAM / sampler (reference, fused, compiled, "
        "timm, grid_sample) and of every registered attention mechanism against timm's module "
        "(prints markdown tables; never fails on time).",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="default: float32 on CPU, bfloat16 on CUDA")  # fmt: skip
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="default: NCHW on CPU, channels_last on CUDA")  # fmt: skip
    p.add_argument("--batch", type=int, default=None, help="N (default 16 on CPU, 128 on CUDA)")
    p.add_argument("--blocks", default="se,cbam,sampler",
                   help="comma list of registered attention names (visattn.list_attention()) and "
                   "sampler; all: every one of them (default: se,cbam,sampler)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="only the first ResNet-50 stage (C=256)")
    p.add_argument("--shapes", default=None,
                   help="CxS,... instead of the ResNet-50 stages, e.g. 64x8 (C channels, S x S)")  # fmt: skip
    p.add_argument("--max-memory-gb", type=float, default=None,
                   help="skip a mechanism's shape whose estimated peak memory of forward + backward "
                   "exceeds this, with a note (default: half the memory available at the start; "
                   "0: no limit)")  # fmt: skip
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


def _shapes(spec: str | None, quick: bool) -> list[tuple[int, int]]:
    if spec is None:
        return RESNET50_STAGES[:1] if quick else RESNET50_STAGES
    shapes = []
    for item in spec.split(","):
        try:
            c, s = (int(v) for v in item.strip().lower().split("x"))
        except ValueError:
            c = s = 0
        if min(c, s) < 1:
            raise _UsageError(
                f"visattn bench: error: --shapes: expected CxS,... with positive ints, got {spec!r}"
            )
        shapes.append((c, s))
    return shapes


def _blocks(spec: str) -> list[str]:
    """The blocks to run, in the order se, cbam, the other registered names (sorted), sampler."""
    from visattn import list_attention

    known = [*list_attention(), "sampler"]
    asked = {b.strip() for b in spec.split(",") if b.strip()}
    unknown = sorted(asked - {*known, "all"})
    if unknown:
        raise _UsageError(
            f"visattn bench: error: --blocks: unknown block {unknown[0]!r} "
            f"(expected a comma list of {', '.join(['all', *known])})"
        )
    if "all" in asked:
        asked = set(known)
    first = [b for b in ("se", "cbam") if b in asked]
    return first + [b for b in known if b in asked and b not in first]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0, or 2 (one line on stderr) for a command-line mistake."""
    try:
        args = _parser().parse_args(argv)
        sampler_shape = _sampler_shape(args.sampler_shape)
        stages = _shapes(args.shapes, args.quick)
        blocks = _blocks(args.blocks)
        if args.max_memory_gb is not None and args.max_memory_gb < 0:
            raise _UsageError(
                f"visattn bench: error: --max-memory-gb: expected >= 0, got {args.max_memory_gb}"
            )
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
    big = max(batch * c * s * s for c, s in stages) * 4
    ctx.bandwidth = measure_bandwidth(ctx, max(big, 64 * 2**20))
    print("\n".join(environment(ctx)), flush=True)
    mechanisms = [b for b in blocks if b != "sampler"]
    if args.max_memory_gb is None:
        free = available_memory(device)
        max_bytes = free / 2 if free else None
    else:
        max_bytes = args.max_memory_gb * 1e9 or None
    runs: list[tuple[str, str]] = []
    status: dict[tuple[str, str, str], str] = {}
    for block in mechanisms:
        for c, s in stages:
            runs.append((block, f"{batch}x{c}x{s}x{s}"))
            if block in ("se", "cbam"):
                bench_block(ctx, block, batch, c, s, args.compile)
                continue
            skipped = bench_mechanism(ctx, block, batch, c, s, max_bytes)
            status.update({(block, runs[-1][1], impl): why for impl, why in skipped.items()})
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
    if any(name not in ("se", "cbam") for name, _ in runs):  # se / cbam alone: as before
        report += ["", "### Every mechanism against timm (forward + backward, eager)", "",
                   *mechanism_table(ctx.rows, runs, status)]  # fmt: skip
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
