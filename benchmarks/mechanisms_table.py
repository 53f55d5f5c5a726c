"""The measured columns of ``docs/mechanisms.md``: what each mechanism adds to ResNet-50, and its
CPU time relative to timm's module.

For every name of ``visattn.list_attention()``:

- parameters and GFLOPs added to ResNet-50 (224 x 224, one image; ``visattn.summary``, which
  counts convolutions and matrix products, 2 FLOPs per multiply-add): the mechanism in every
  residual block (``create_model("resnet50", attention=name)``), and, where the paper places it
  otherwise and the model zoo has that network (``<name>_resnet50``, e.g. BAM after stages 1-3),
  that network too;
- visattn / timm: the geometric mean over the shapes of the ratios in the "Every mechanism
  against timm" table of a ``visattn bench --blocks all --output FILE`` report (same run, same
  machine for both; SE and CBAM from the main table's fused row), when ``--bench FILE`` is given.

Prints a markdown table. Usage::

    visattn bench --device cpu --threads 2 --batch 8 --blocks all --no-models --output b.md
    python benchmarks/mechanisms_table.py --bench b.md
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

import visattn
from visattn.models import list_models, summary


def _ratios(report: str) -> dict[str, list[float]]:
    """mechanism -> visattn/timm ratios of a bench report (its per-mechanism table, and the
    main table's best visattn row of SE and CBAM against their timm row)."""
    out: dict[str, list[float]] = {}
    section = report.split("### Every mechanism against timm", 1)
    if len(section) == 2:
        for line in section[1].splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 5 and re.fullmatch(r"[\d.]+x", cells[4]):
                out.setdefault(cells[0], []).append(float(cells[4][:-1]))
    main: dict[tuple[str, str], dict[str, float]] = {}
    for line in section[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0] in ("se", "cbam") and re.fullmatch(r"[\d.]+", cells[3]):
            main.setdefault((cells[0], cells[1]), {})[cells[2]] = float(cells[3])
    for (block, _), times in main.items():
        ours = [t for impl, t in times.items() if impl in ("fused", "auto", "reference")]
        if "timm" in times and ours:
            out.setdefault(block, []).append(min(ours) / times["timm"])
    return out


def _added(model: torch.nn.Module, plain) -> tuple[int, float]:
    s = summary(model.eval(), (1, 3, 224, 224), verbose=False)
    return s.params - plain.params, (s.flops - plain.flops) / 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", type=Path, help="a visattn bench --blocks all report (markdown)")
    args = p.parse_args(argv)
    ratios = _ratios(args.bench.read_text()) if args.bench else {}
    torch.manual_seed(0)
    plain = summary(visattn.create_model("resnet50").eval(), (1, 3, 224, 224), verbose=False)
    print(f"ResNet-50: {plain.params:,} parameters, {plain.flops / 1e9:.3f} GFLOPs\n")
    print("| name | params added (every block) | GFLOPs added | paper's network | "
          "params added | GFLOPs added | visattn / timm (CPU, geo. mean) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    zoo = set(list_models())
    for name in visattn.list_attention():
        per_block = _added(visattn.create_model("resnet50", attention=name), plain)
        paper = f"{name}_resnet50"
        cells = ["—", "—", "—"]
        if paper in zoo:
            model = visattn.create_model(paper)
            placed = _added(model, plain)
            if placed != per_block:
                cells = [f"`{paper}`", f"{placed[0]:,}", f"{placed[1]:.4f}"]
        r = ratios.get(name)
        ratio = f"{math.exp(sum(map(math.log, r)) / len(r)):.2f}x" if r else "—"
        print(f"| `{name}` | {per_block[0]:,} | {per_block[1]:.4f} | {' | '.join(cells)} | "
              f"{ratio} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
