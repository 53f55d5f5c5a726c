"""The fused channel gate ``visattn::channel_gate`` against the plain formula, one run.

An ECA-like excitation (Wang et al., arXiv:1910.03151, eq. 2: s = sigmoid(conv1d_k(GAP(x))),
k = psi(C) of eq. 12) at ResNet-50's stage shapes, forward + backward (gradients of x and of
the convolution's weight), CPU, float32, NCHW and channels_last. Candidates, timed round-robin
(each repeat runs every candidate once, so a load spike on a shared machine hits all alike):

- fused: :func:`visattn.functional.channel_gate` on the C++ kernels (backend ``cpu``);
- reference: the same call on backend ``reference``, the plain formula x * E(pool(x));
- timm: ``timm.layers.EcaModule`` with the same weight, when timm is installed.

glibc is asked to keep freed memory (as ``visattn bench`` does), so that every candidate
reuses its memory the way the fused kernels' output pool does. Prints the median milliseconds
and the ratio fused / reference.

Usage: ``python benchmarks/channel_gate.py [--repeats 15] [--warmup 3] [--batch 8]``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch
import torch.nn.functional as F

from visattn.commands._bench_timing import Context, keep_freed_memory, time_interleaved
from visattn.functional import channel_gate, register_excitation

STAGES = ((256, 56), (512, 28), (1024, 14), (2048, 7))


def eca_kernel_size(c: int, gamma: float = 2, b: float = 1) -> int:
    """ECA's eq. 12: k = psi(C) = |log2(C) / gamma + b / gamma|, made odd."""
    t = int(abs(math.log2(c) / gamma + b / gamma))
    return t if t % 2 else t + 1


def _eca(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(F.conv1d(z.unsqueeze(1), w, padding=w.shape[-1] // 2)).squeeze(1)


register_excitation("bench_eca", _eca)


def _step(fn, x: torch.Tensor, w: torch.Tensor, dy: torch.Tensor):
    def step() -> None:
        x.grad = w.grad = None
        fn(x, w).backward(dy)

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    try:
        from timm.layers import EcaModule
    except ImportError:
        EcaModule = None
    kept = keep_freed_memory()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, freed memory kept: "
          f"{kept}")  # fmt: skip
    print(
        "| layout | shape | k | fused (ms) | reference (ms) | timm EcaModule (ms) | fused / reference |"
    )
    print("|---|---|---|---|---|---|---|")
    for channels_last in (False, True):
        ctx = Context(torch.device("cpu"), torch.float32, channels_last, args.repeats, args.warmup)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for c, size in STAGES:
            k = eca_kernel_size(c)
            x = torch.randn(args.batch, c, size, size).contiguous(memory_format=fmt)
            x.requires_grad_(True)
            dy = torch.randn_like(x)
            w = torch.nn.Parameter(torch.randn(1, 1, k) / k**0.5)
            gate = _step(lambda u, v: channel_gate(u, "bench_eca", [v]), x, w, dy)
            candidates = [("fused", gate, "cpu"), ("reference", gate, "reference")]
            if EcaModule is not None:
                timm_eca = EcaModule(c, kernel_size=k)
                timm_eca.conv.weight = w  # the same parameter
                candidates.append(
                    ("timm", _step(lambda u, v, m=timm_eca: m(u), x, w, dy), "reference")
                )
            ms = {r[0]: r[3] * 1e3 for r in time_interleaved(candidates, ctx, f"{c}x{size}")}
            timm_ms = f"{ms['timm']:.2f}" if "timm" in ms else "-"
            print(f"| {'channels_last' if channels_last else 'NCHW'} "
                  f"| {args.batch}x{c}x{size}x{size} | {k} | {ms['fused']:.2f} "
                  f"| {ms['reference']:.2f} | {timm_ms} | {ms['fused'] / ms['reference']:.2f} |",
                  flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
