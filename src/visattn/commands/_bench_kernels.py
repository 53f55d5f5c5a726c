"""The kernel tables of ``visattn bench`` (see :mod:`visattn.commands.bench`): every SE / CBAM
kernel timed alone (``--kernels``) and what backend "auto" measured in the run.

Test: ``tests/kernels/test_kernels_bench.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._bench_timing import Context, layout, time_median


def bench_kernels(ctx: Context, n: int, c: int, size: int) -> list[str]:
    """Every SE / CBAM kernel alone at one shape (the C++ ones on CPU, the Triton ones on CUDA):
    median time, the full-size passes it makes and the share of the measured copy bandwidth it
    reaches at that (a kernel at 100% moves its bytes as fast as ``copy_``). The small kernels
    (the MLP, the folded BatchNorm's steps) make no full-size pass: time only. Inputs are random
    stand-ins of the right shapes (the kernels' speed does not depend on the values)."""
    from visattn.kernels import select_impl, use_backend
    from visattn.kernels.ops import block_kernels

    dev = ctx.device
    x = layout(torch.randn(n, c, size, size, device=dev, dtype=ctx.dtype), ctx)
    with use_backend("triton" if dev.type == "cuda" else "cpu"):
        impl = select_impl(x)
    if impl is None:
        return [f"no fused kernels for {dev.type} here: kernel rows skipped"]
    k = block_kernels(impl)
    p, hid = size * size, max(1, c // 16)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, dtype=torch.float32, device=dev)

    dy, a, b = layout(torch.randn_like(x), ctx), rand(n, c), rand(n, p)
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
        seconds = time_median(fn, ctx)
        share = f"{passes * nbytes / seconds / ctx.bandwidth:.0%}" if passes else "-"
        lines.append(f"| {name} | {shape} | {seconds * 1e3:.3f} | {passes or '-'} | {share} |")
        print(lines[-1], flush=True)
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
