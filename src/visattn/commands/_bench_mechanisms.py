"""Every registered attention mechanism against timm's module, in ``visattn bench --blocks``
(see :mod:`visattn.commands.bench`).

For a name of :func:`visattn.list_attention` other than ``se`` and ``cbam`` (which keep their
reference / fused / compiled / timm rows), one shape gives two rows, timed round-robin, forward +
backward: ``visattn`` (``create_attention(name, C)`` at its defaults, eager, the default backend)
and ``timm`` (the module of :data:`TIMM_EQUIVALENTS` built to compute the same thing), with the
ratio visattn / timm. A name that timm lacks gets the visattn row only. Nothing here knows a
mechanism's class: the layer comes from the registry, timm's module from the table.

Before timing (unless the limit is 0), each module runs one forward + backward at N = 2
(``peak_bytes``) and that peak is scaled linearly to the batch; a module whose estimate exceeds
the memory limit is skipped at that shape, with a printed note and a "skipped" cell in
:func:`mechanism_table` (non-local's H W x H W attention matrices are the case this is for). The estimate counts the parameter
gradients N / 2 times: it errs on the large side.

Tests: ``tests/kernels/test_kernels_bench_mechanisms.py`` (also the table against the
registered layers' defaults), ``tests/kernels/test_kernels_bench.py``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ._bench_timing import Context, Row, add_row, fwd_bwd, layout, peak_bytes, time_interleaved

__all__ = [
    "TIMM_EQUIVALENTS",
    "TimmEquivalent",
    "available_memory",
    "bench_mechanism",
    "estimate_peak_bytes",
    "mechanism_table",
]


@dataclass(frozen=True)
class TimmEquivalent:
    """timm's module for one registered name: how it is built from C, and how it is written."""

    #: The module as printed in the tables, C standing for the channels.
    module: str
    build: Callable[[int], nn.Module]
    #: Where it computes something else than the visattn layer that is timed ("": nothing).
    differs: str = ""
    #: The visattn layer that is timed, when it is not ``create_attention(name, C)``.
    ours: str = ""


def _timm(path: str) -> Callable[..., nn.Module]:
    """The class ``timm.layers.<path>`` (e.g. ``"eca.EcaModule"``), imported from its module:
    several (CoordAttn, the CBAM modules) are not exported by ``timm.layers`` itself."""
    import importlib

    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(f"timm.layers.{module}"), name)


# Each entry reproduces the defaults of the visattn layer (its paper's): the arguments differ
# from timm's own defaults where timm's defaults are not the paper's. Modules are named
# relative to timm.layers.
TIMM_EQUIVALENTS: dict[str, TimmEquivalent] = {
    "cbam": TimmEquivalent(
        "cbam.CbamModule(C, rd_ratio=1/16, spatial_kernel_size=7)",
        lambda c: _timm("cbam.CbamModule")(c, rd_ratio=1 / 16, spatial_kernel_size=7),
        ours="CBAM(C, norm=True, bias=False)",
    ),
    "ceca": TimmEquivalent("eca.CecaModule(C)", lambda c: _timm("eca.CecaModule")(c)),
    "channel": TimmEquivalent(
        "cbam.ChannelAttn(C, mlp_bias=True)",
        lambda c: _timm("cbam.ChannelAttn")(c, mlp_bias=True),
    ),
    "coord": TimmEquivalent(
        "coord_attn.CoordAttn(C, rd_channels=max(8, C // 32), bias=True)",
        lambda c: _timm("coord_attn.CoordAttn")(c, rd_channels=max(8, c // 32), bias=True),
    ),
    "eca": TimmEquivalent("eca.EcaModule(C)", lambda c: _timm("eca.EcaModule")(c)),
    "ese": TimmEquivalent(
        "squeeze_excite.EffectiveSEModule(C)",
        lambda c: _timm("squeeze_excite.EffectiveSEModule")(c),
    ),
    "gc": TimmEquivalent(
        "global_context.GlobalContext(C, fuse_add=True, fuse_scale=False, rd_ratio=1/16)",
        lambda c: _timm("global_context.GlobalContext")(
            c, fuse_add=True, fuse_scale=False, rd_ratio=1 / 16
        ),
    ),
    "ge": TimmEquivalent(
        "gather_excite.GatherExcite(C, use_mlp=False)",
        lambda c: _timm("gather_excite.GatherExcite")(c, use_mlp=False),
    ),
    "lcbam": TimmEquivalent("cbam.LightCbamModule(C)", lambda c: _timm("cbam.LightCbamModule")(c)),
    "nonlocal": TimmEquivalent(
        "non_local_attn.NonLocalAttn(C, use_scale=False, rd_channels=C // 2)",
        lambda c: _timm("non_local_attn.NonLocalAttn")(
            c, use_scale=False, rd_channels=max(1, c // 2)
        ),
    ),
    "se": TimmEquivalent(
        "squeeze_excite.SEModule(C, rd_ratio=1/16)",
        lambda c: _timm("squeeze_excite.SEModule")(c, rd_ratio=1 / 16),
        ours="SqueezeExcite(C)",
    ),
    "sk": TimmEquivalent(
        "selective_kernel.SelectiveKernel(C, C, groups=32, split_input=False, "
        "rd_channels=max(C // 16, 32))",
        lambda c: _timm("selective_kernel.SelectiveKernel")(
            c, c, groups=32, split_input=False, rd_channels=max(c // 16, 32)
        ),
    ),
    "spatial": TimmEquivalent(
        "cbam.SpatialAttn(7)",
        lambda c: _timm("cbam.SpatialAttn")(7),
        differs="a BatchNorm after the 7 x 7 convolution, which visattn's default (the paper's) "
        "has not; timm's SpatialAttn cannot leave it out",
    ),
}


def timm_available() -> bool:
    return importlib.util.find_spec("timm") is not None


def available_memory(device: torch.device) -> float | None:
    """Bytes free for a new allocation now (CUDA: free device memory; CPU: ``MemAvailable`` of
    /proc/meminfo), or None where it cannot be read."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def estimate_peak_bytes(
    module: nn.Module, n: int, c: int, size: int, ctx: Context, backend: str
) -> float | None:
    """Peak bytes of one forward + backward of ``module`` at batch ``n``, from one at N = 2
    scaled linearly (None when the probe fails: the timing then reports the failure)."""
    from visattn.kernels import use_backend

    probe = min(n, 2)
    x = layout(torch.randn(probe, c, size, size, device=ctx.device, dtype=ctx.dtype), ctx)
    x.requires_grad_(True)
    dy = layout(torch.randn_like(x), ctx)
    try:
        with use_backend(backend):
            peak = peak_bytes(fwd_bwd(module, x, dy), ctx.device)
    except Exception:
        return None
    finally:
        module.zero_grad(set_to_none=True)
    return peak * n / probe


def bench_mechanism(
    ctx: Context, name: str, n: int, c: int, size: int, max_bytes: float | None
) -> dict[str, str]:
    """Rows "visattn" and "timm" (where :data:`TIMM_EQUIVALENTS` has the name) for one
    registered mechanism and shape; returns what became of a candidate that has no row
    ({"visattn": "skipped (...)"}, "failed (...)")."""
    import visattn
    from visattn.kernels import get_backend

    shape = f"{n}x{c}x{size}x{size}"
    x = layout(torch.randn(n, c, size, size, device=ctx.device, dtype=ctx.dtype), ctx)
    x.requires_grad_(True)
    dy = layout(torch.randn_like(x), ctx)
    nbytes = x.numel() * x.element_size()
    makers: list[tuple[str, Callable[[], nn.Module]]] = [
        ("visattn", lambda: visattn.create_attention(name, c))
    ]
    if name in TIMM_EQUIVALENTS:
        if timm_available():
            makers.append(("timm", lambda: TIMM_EQUIVALENTS[name].build(c)))
        else:
            ctx.notes.append("timm is not installed: no timm rows")
    backend = get_backend()
    status: dict[str, str] = {}

    def fail(impl: str, err: Exception) -> None:
        message = (str(err).strip().splitlines() or [""])[0].replace("|", "/")[:160]
        status[impl] = f"failed ({type(err).__name__}: {message})"
        ctx.notes.append(f"{name} {shape} {impl}: {status[impl]}")

    candidates: list[tuple[str, Callable[[], None], str]] = []
    for impl, make in makers:
        try:
            module = make().to(ctx.device, ctx.dtype)
        except Exception as err:  # a measuring tool: report and go on
            print(f"  {name} {shape} {impl}: failed to build ({type(err).__name__}: {err})")
            fail(impl, err)
            continue
        if max_bytes:
            estimate = estimate_peak_bytes(module, n, c, size, ctx, backend)
            if estimate is not None and estimate > max_bytes:
                status[impl] = f"skipped (estimated peak {estimate / 1e9:.1f} GB)"
                note = (
                    f"{name} {shape} {impl}: skipped, its estimated peak memory "
                    f"{estimate / 1e9:.1f} GB exceeds the limit {max_bytes / 1e9:.1f} GB "
                    "(--max-memory-gb)"
                )
                print(f"  {note}", flush=True)
                ctx.notes.append(note)
                continue
        candidates.append((impl, _recording(fwd_bwd(module, x, dy), impl, fail), backend))
    rows: list[Row] = []
    for impl, _, _, seconds, best, host in time_interleaved(candidates, ctx, f"{name} {shape}"):
        rows.append(add_row(ctx, name, shape, impl, seconds, nbytes, best=best, host=host))
    timm_ms = [r.ms for r in rows if r.impl == "timm"]
    for row in rows:
        row.ratio = row.ms / timm_ms[0] if timm_ms else None
    return status


def _recording(
    step: Callable[[], None], impl: str, fail: Callable[[str, Exception], None]
) -> Callable[[], None]:
    """``step``, recording its exception (time_interleaved prints and drops a failing candidate)."""

    def run() -> None:
        try:
            step()
        except Exception as err:
            fail(impl, err)
            raise

    return run


def _cell(rows: list[Row], block: str, shape: str, impls: tuple[str, ...]) -> Row | None:
    return next(
        (r for r in rows if r.block == block and r.shape == shape and r.impl in impls), None
    )


def mechanism_table(
    rows: list[Row], runs: list[tuple[str, str]], status: dict[tuple[str, str, str], str]
) -> list[str]:
    """The "every mechanism" table: one line per (name, shape) of ``runs``, visattn's median
    time, timm's, and the ratio; "—" where timm has no such module, the reason where a
    candidate has no row; then where timm's module computes something else."""
    ours_impls = ("visattn", "visattn fast (default)")
    lines = [
        "| mechanism | shape | visattn (ms) | timm (ms) | visattn / timm | visattn layer "
        "| timm module (timm.layers.) |",
        "|---|---|---|---|---|---|---|",
    ]
    differs: dict[str, str] = {}
    for name, shape in runs:
        entry = TIMM_EQUIVALENTS.get(name)
        ours = _cell(rows, name, shape, ours_impls)
        theirs = _cell(rows, name, shape, ("timm",))
        ours_text = f"{ours.ms:.3f}" if ours else status.get((name, shape, "visattn"), "failed")
        if entry is None or not timm_available():
            timm_text = "—"
        else:
            timm_text = (
                f"{theirs.ms:.3f}" if theirs else status.get((name, shape, "timm"), "failed")
            )
        ratio = f"{ours.ms / theirs.ms:.2f}x" if ours and theirs else "—"
        layer = f"`{entry.ours}`" if entry and entry.ours else f'`create_attention("{name}", C)`'
        module = f"`{entry.module}`" if entry else "—"
        lines.append(
            f"| {name} | {shape} | {ours_text} | {timm_text} | {ratio} | {layer} | {module} |"
        )
        if entry and entry.differs:
            differs[name] = f"- {name}: timm's module has {entry.differs}."
    if differs:
        lines += ["", "Where timm's module computes something else:", "", *differs.values()]
    return lines
