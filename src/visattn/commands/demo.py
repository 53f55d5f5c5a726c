"""``visattn demo``: train and compare a plain CNN, SE, CBAM and a spatial-transformer CNN.

The project's main job, in one command and without a download. On the bundled Fashion-MNIST
subset, plain (28 x 28) and distorted by the Spatial Transformer paper's RTS distortion
(rotation U(-45°, 45°), scale U(0.7, 1.2), translation inside a 42 x 42 canvas; Jaderberg et al.,
arXiv:1506.02025, §4.1), it trains

- ``CNN``: the ST paper's baseline CNN (``visattn.models.create_model("cnn")``);
- ``CNN+SE``: the same with Squeeze-and-Excitation after each convolution (Hu et al.,
  arXiv:1709.01507);
- ``CNN+CBAM``: the same with CBAM (Woo et al., arXiv:1807.06521);
- ``ST-CNN (affine)``: a spatial transformer in front of the CNN (more families with
  ``--transforms affine,projective,tps``),

prints a comparison table (test accuracy, parameters, FLOPs, training and inference images/s and
the share of inference time spent in the attention layers) and writes ``runs/demo/`` (or
``--out``): ``report.html``, the PNG figures of ``visattn.viz``, ``metrics.json`` and the run folder
of every model (``models/<data>-<model>/``, from ``visattn.engine.train``; readable by
``visattn predict`` / ``visattn viz`` / ``visattn eval``).

``--models`` takes any attention name of ``visattn.list_attention()`` (``CNN+<name>``: the
mechanism after each convolution; the demo's ``reduction`` goes to those that have one) and
``all``; every mechanism other than SE and CBAM gets a summary figure of its maps
(:func:`visattn.viz.plot_attention_summary`).

Settings (``--preset``): ``default`` (about 10 minutes on 2 CPU cores), ``quick`` (about 2
minutes), ``tiny`` (seconds; for tests, numbers are not meaningful), ``full`` (the whole
bundled subset, wider nets, more epochs) and ``family`` (every registered mechanism on the RTS
data at the quick preset's size). Every value of a preset can be overridden by a flag.

Every model is trained by ``visattn.engine.train`` (AdamW, cosine schedule, the same seed, data
order and distortions for all models). Measurements: FLOPs are counted by the engine with
``torch.utils.flop_counter`` for one image (2 per multiply-add; convolutions and matrix products
only); training images/s is the median over epochs of the engine's per-epoch rate (input
pipeline included).
Test accuracy comes from the engine's ``evaluate`` on the prepared test set. Inference images/s is
measured here in eval mode without autograd on the same images. The attention share is the time
inside the attention modules (forward hooks around each outermost ``SqueezeExcite`` / ``CBAM`` /
``SpatialTransformer``, found by ``visattn.models.scan.attention_modules``) divided by the model's
forward time, in a separate inference pass.

Tests: ``tests/viz/test_viz_demo.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..data import load_dataset
from ..engine import (
    TEST_DISTORTION_SEED,
    Pipeline,
    PreparedData,
    TrainOptions,
    evaluate,
    load_model,
    train,
)
from ..layers.registry import attention_options, list_attention
from ..models.scan import attention_modules
from ..viz import write_report
from ..viz._io import public_mode
from ._demo_figures import demo_figures, ds_title

__all__ = ["PRESETS", "DemoConfig", "add_arguments", "add_parser", "run", "run_demo"]

#: The default models: the baseline, the seed's three mechanisms. ``--models`` also takes every
#: name of ``visattn.list_attention()`` (a CNN with that mechanism after each convolution) and
#: ``all`` (the baseline, every registered mechanism and the spatial transformer).
MODEL_KINDS = ("cnn", "se", "cbam", "stn")
DATASETS = ("plain", "rts")


@dataclass
class DemoConfig:
    """Every setting of the demo (see ``PRESETS``)."""

    out: str = "runs/demo"
    dataset: str = "fashion-mnist-small"
    train_size: int = 11000
    val_size: int = 1000
    test_size: int = 2000
    epochs: int = 6
    batch_size: int = 128
    lr: float = 2e-3
    channels: tuple[int, int] = (16, 32)
    kernel_sizes: tuple[int, int] = (9, 7)
    reduction: int = 4
    models: tuple[str, ...] = MODEL_KINDS
    transforms: tuple[str, ...] = ("affine",)
    datasets: tuple[str, ...] = DATASETS
    seed: int = 0
    threads: int = 0
    figure_images: int = 6
    preset: str = "default"


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "quick": {"train_size": 4000, "val_size": 500, "test_size": 1000, "epochs": 3},
    "tiny": {
        "train_size": 256, "val_size": 64, "test_size": 128, "epochs": 1, "batch_size": 64,
        "channels": (4, 8), "kernel_sizes": (5, 3), "figure_images": 4,
    },
    "full": {"train_size": 0, "val_size": 1000, "test_size": 0, "epochs": 12,
             "channels": (32, 32)},
    # every mechanism on the RTS data, at the quick preset's size
    "family": {"models": ("all",), "datasets": ("rts",), "train_size": 4000, "val_size": 500,
               "test_size": 1000, "epochs": 3},
}  # fmt: skip

#: How the report names a CNN with each mechanism (others: CNN+<name>).
_LABELS = {"se": "SE", "cbam": "CBAM", "eca": "ECA", "ceca": "CECA", "ese": "eSE", "ge": "GE",
           "gc": "GC", "bam": "BAM", "coord": "CoordAtt", "triplet": "Triplet", "simam": "SimAM",
           "nonlocal": "Non-local", "lcbam": "LightCBAM", "sk": "SK",
           "channel": "CBAM-channel", "spatial": "CBAM-spatial"}  # fmt: skip


def model_kinds(models: tuple[str, ...]) -> tuple[str, ...]:
    """``models`` with ``all`` expanded and every name checked: ``cnn``, ``stn`` or a registered
    attention name."""
    names = list_attention()
    valid = ("cnn", *names, "stn")
    out: list[str] = []
    for kind in models:
        if kind == "all":
            out += [k for k in valid if k not in out]
        elif kind not in valid:
            raise ValueError(f"models: expected names from {', '.join(valid)} or all, got {kind!r}")
        elif kind not in out:
            out.append(kind)
    return tuple(out)


def _label(kind: str, transform: str = "affine") -> str:
    if kind == "cnn":
        return "CNN"
    if kind == "stn":
        return f"ST-CNN ({transform})"
    return f"CNN+{_LABELS.get(kind, kind)}"


def _model_specs(cfg: DemoConfig) -> list[tuple[str, str, str | None, dict[str, Any]]]:
    """(label, registry name, attention, model_args) of every model to train."""
    base: dict[str, Any] = {"channels": list(cfg.channels), "kernel_sizes": list(cfg.kernel_sizes)}
    specs: list[tuple[str, str, str | None, dict[str, Any]]] = []
    for kind in model_kinds(cfg.models):
        if kind == "stn":
            for t in cfg.transforms:
                specs.append((_label("stn", t), "stcnn", None, {**base, "transform": t}))
        elif kind == "cnn":
            specs.append((_label(kind), "cnn", None, dict(base)))
        else:
            # the demo's reduction goes to the mechanisms that have one (SE-style bottlenecks)
            akw = {"reduction": cfg.reduction} if "reduction" in attention_options(kind) else {}
            specs.append((_label(kind), "cnn", kind, {**base, "attention_kw": akw}))
    return specs


def _test_split(cfg: DemoConfig, ds: str, info: dict[str, Any]) -> PreparedData:
    """The test images, prepared (distorted, normalised) as in training, and labels."""
    test = load_dataset(cfg.dataset, "test").subset(cfg.test_size)
    pipe = Pipeline(test, mean=info["mean"], std=info["std"],
                    distortion="none" if ds == "plain" else "rts",
                    distortion_seed=TEST_DISTORTION_SEED)  # fmt: skip
    x, y = pipe.batch(torch.arange(len(test)))
    return PreparedData(x, y)


# -- measurements --------------------------------------------------------------------------


@torch.no_grad()
def measure_inference(
    model: nn.Module, x: torch.Tensor, batch_size: int = 256, min_time: float = 0.5
) -> tuple[float, float]:
    """(images/s, share of forward time spent in attention modules) on ``x``, eval mode.

    Passes over ``x`` are repeated until ``min_time`` seconds have passed (at least one pass).
    """
    model.eval()
    model(x[:batch_size])  # warm-up

    def passes() -> tuple[int, float]:
        images, start = 0, time.perf_counter()
        while True:
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size])
            images += len(x)
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                return images, elapsed

    images, elapsed = passes()
    ips = images / max(elapsed, 1e-9)
    layers = list(attention_modules(model).values())
    if not layers:
        return ips, 0.0
    spent = [0.0]
    opened: dict[int, float] = {}

    def pre(m, _a):
        opened[id(m)] = time.perf_counter()

    def post(m, _a, _o):
        spent[0] += time.perf_counter() - opened.pop(id(m))

    handles = [h for m in layers for h in (m.register_forward_pre_hook(pre),
                                          m.register_forward_hook(post))]  # fmt: skip
    try:
        _, total = passes()
    finally:
        for h in handles:
            h.remove()
    return ips, min(spent[0] / max(total, 1e-9), 1.0)


# -- orchestration -------------------------------------------------------------------------
def _table(rows: list[dict[str, Any]]) -> str:
    cols = [
        "data",
        "model",
        "test acc",
        "params",
        "MFLOPs",
        "train img/s",
        "infer img/s",
        "attn time",
    ]
    body = [
        [
            r["data"], r["model"], f"{r['test_accuracy']:.1%}", f"{r['params']:,}",
            f"{r['mflops']:.2f}", f"{r['train_images_per_s']:,.0f}",
            f"{r['inference_images_per_s']:,.0f}", f"{r['attention_time_share']:.0%}",
        ]
        for r in rows
    ]  # fmt: skip
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i < 2 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    return "\n".join([line(cols), line(["-" * w for w in widths]), *(line(b) for b in body)])


def run_demo(cfg: DemoConfig, *, log=print) -> dict[str, Any]:
    """Train, measure, draw and write the report; returns the content of ``metrics.json``."""
    model_kinds(cfg.models)  # checks the names
    for ds in cfg.datasets:
        if ds not in DATASETS:
            raise ValueError(f"datasets: expected names from {', '.join(DATASETS)}, got {ds!r}")
    if not cfg.models or not cfg.datasets:
        raise ValueError("models, datasets: expected at least one of each")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    _check_out(out)
    started = time.perf_counter()
    classes = load_dataset(cfg.dataset, "test").classes
    log(f"visattn demo: {cfg.train_size or 'all'} training / {cfg.test_size or 'all'} test "
        f"images of {cfg.dataset}, {cfg.epochs} epochs per model, "
        f"{torch.get_num_threads()} threads, preset {cfg.preset!r}")  # fmt: skip
    # Everything is written to a temporary directory first and moved into place at the end,
    # so an interrupted run never leaves a half-written report.
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        runs: dict[tuple[str, str], dict[str, Any]] = {}
        tests: dict[str, PreparedData] = {}
        rows = []
        for ds in cfg.datasets:
            for label, name, attention, model_args in _model_specs(cfg):
                log(f"  [{ds_title(ds)}] {label}")
                run_dir = work / "models" / f"{ds}-{_slug(label)}"
                opts = TrainOptions(
                    model=name, attention=attention, model_args=model_args,
                    dataset=cfg.dataset, distortion="none" if ds == "plain" else "rts",
                    epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                    train_subset=cfg.train_size, val_subset=cfg.val_size,
                    test_subset=cfg.test_size, out=str(run_dir), device="cpu",
                    keep_checkpoints=1,
                )  # fmt: skip
                final = train(opts)
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # keep final weights
                model, info = load_model(run_dir)
                if ds not in tests:
                    tests[ds] = _test_split(cfg, ds, info)
                test = tests[ds]
                result = evaluate(model, test, batch_size=500, logits=True)
                acc, logits = result["accuracy"], result["logits"]
                infer_ips, share = measure_inference(model, test.images)
                history = [
                    json.loads(line)
                    for line in (run_dir / "metrics.jsonl").read_text().splitlines()
                ]
                size = int(info["input_size"])
                row = {
                    "data": ds,
                    "model": label,
                    "test_accuracy": acc,
                    "params": int(final["params"]),
                    "mflops": (final["flops_per_image"] or 0) / 1e6,
                    "train_images_per_s": _median_rate(history, final),
                    "inference_images_per_s": infer_ips,
                    "attention_time_share": share,
                    "train_seconds": float(final["elapsed_s"]),
                    "input_size": size,
                    "run": str(run_dir.relative_to(work)),
                }
                rows.append(row)
                runs[ds, label] = {"model": model, "history": history, "test_acc": acc,
                                   "logits": logits, "label": label,
                                   "attention": attention}  # fmt: skip
        log("drawing figures ...")
        figures = demo_figures(work, runs, tests, classes, cfg)
        elapsed = time.perf_counter() - started
        metrics = {
            "visattn_version": __version__,
            "settings": asdict(cfg),
            "environment": {
                "torch": torch.__version__,
                "python": platform.python_version(),
                "threads": torch.get_num_threads(),
                "machine": platform.machine(),
                "device": "cpu",
            },
            "results": rows,
            "history": {f"{d}/{label}": r["history"] for (d, label), r in runs.items()},
            "figures": [f.file for f in figures],
            "seconds": elapsed,
        }
        (work / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        table = _table(rows)
        report_rows = [
            {
                "data": ds_title(r["data"]), "model": r["model"],
                "test accuracy": f"{r['test_accuracy']:.1%}", "parameters": r["params"],
                "MFLOPs / image": f"{r['mflops']:.2f}",
                "train images/s": f"{r['train_images_per_s']:,.0f}",
                "inference images/s": f"{r['inference_images_per_s']:,.0f}",
                "attention share of inference time": f"{r['attention_time_share']:.0%}",
            }
            for r in rows
        ]  # fmt: skip
        write_report(
            work,
            title="visattn demo: what attention does",
            intro=(
                f"{cfg.train_size or 'All'} training and {len(tests[cfg.datasets[0]].labels)} "
                f"test images of {cfg.dataset} ({len(classes)} classes), plain and RTS-distorted "
                f"(rotation ±45°, scale 0.7-1.2, translation in a 42x42 canvas); {cfg.epochs} "
                "epochs per model. Validation curves use held-out training images."
            ),
            tables={"Comparison": report_rows},
            figures=figures,
            notes=[
                f"visattn {__version__}, torch {torch.__version__}, {torch.get_num_threads()} "
                f"CPU threads, {elapsed:.0f} s in all. Preset {cfg.preset!r}; seed {cfg.seed}.",
                "FLOPs: convolutions and matrix products of one forward pass (2 per "
                "multiply-add). Attention share: time inside SE / CBAM / spatial-transformer "
                "modules over the forward time, eval mode.",
                "The trained weights of every model are in models/ (visattn run folders); try "
                "'visattn viz --checkpoint models/rts-st-cnn-affine --dataset "
                "fashion-mnist-small --out viz'.",
            ],
        )
        public_mode(work, directory=True)
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log("")
    log(table)
    log("")
    log(f"report: {out / 'report.html'}  ({elapsed:.0f} s)")
    return metrics


def _median_rate(history: list[dict[str, Any]], final: dict[str, Any]) -> float:
    """Median training images/s over the epochs (robust to one slow epoch on a busy machine)."""
    rates = sorted(float(r["train_images_per_s"]) for r in history if r.get("train_images_per_s"))
    if not rates:
        return float(final.get("train_images_per_s") or 0.0)
    mid = len(rates) // 2
    return rates[mid] if len(rates) % 2 else (rates[mid - 1] + rates[mid]) / 2


def _check_out(out: Path) -> None:
    """Refuse to replace anything but an empty folder or an earlier demo report."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out: expected a directory, got the file {out}")
    if any(out.iterdir()) and not (
        (out / "report.html").is_file() and (out / "metrics.json").is_file()
    ):
        raise ValueError(
            f"--out: {out} is not empty and holds no earlier demo report (report.html and "
            "metrics.json); choose another folder"
        )


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).replace("--", "-").strip("-")


# -- command line --------------------------------------------------------------------------
def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``visattn demo``."""
    parser.add_argument("--out", default="runs/demo", help="report directory")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="default: ~10 min on 2 cores; quick: ~2 min; tiny: seconds (tests); "
                        "full: all bundled images, wider nets; family: every mechanism on RTS")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="same as --preset quick")
    parser.add_argument("--models", type=_csv,
                        help=f"comma list of cnn, stn and attention names (visattn.list_attention"
                        f"()), or all (default: {','.join(MODEL_KINDS)})")  # fmt: skip
    parser.add_argument("--transforms", type=_csv,
                        help="spatial-transformer families, e.g. affine,projective,tps")  # fmt: skip
    parser.add_argument("--datasets", type=_csv, help="subset of plain,rts")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--train-size", type=int, help="training images (0: all)")
    parser.add_argument("--val-size", type=int, help="held-out training images for curves")
    parser.add_argument("--test-size", type=int, help="test images (0: all)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    preset = "quick" if args.quick and args.preset == "default" else args.preset
    cfg = replace(DemoConfig(), preset=preset, out=args.out, **PRESETS[preset])
    for key in ("models", "transforms", "datasets", "epochs", "train_size", "val_size", "test_size",
                "batch_size", "lr", "seed", "threads"):  # fmt: skip
        value = getattr(args, key, None)
        if value is not None:
            setattr(cfg, key, value)
    for key in ("epochs", "batch_size"):
        if getattr(cfg, key) < 1:
            raise ValueError(
                f"--{key.replace('_', '-')}: expected an int >= 1, got {getattr(cfg, key)}"
            )
    return cfg


def run(args: argparse.Namespace) -> int:
    """Entry point of the ``demo`` sub-command; returns the exit code."""
    run_demo(config_from_args(args))
    return 0


DESCRIPTION = """Train and compare a plain CNN, CNN+SE, CNN+CBAM and an ST-CNN on the bundled
Fashion-MNIST subset, plain and RTS-distorted; print a comparison table and write a report
directory (report.html, PNG figures, metrics.json, the trained models).

examples:
  visattn demo                       # about 10 minutes on 2 CPU cores
  visattn demo --quick               # about 2 minutes
  visattn demo --transforms affine,tps --out runs/demo-tps"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``visattn demo`` (see ``visattn.cli``)."""
    from ..cli import add_command

    help = "train and compare CNN, SE, CBAM and ST-CNN on bundled data; write a report"
    return add_command(subparsers, "demo", help, DESCRIPTION, arguments=add_arguments)
