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
``--out``): ``report.html``, the PNG figures of ``visattn.viz``, ``metrics.json`` and one checkpoint
per model (``checkpoints/*.pt``, readable by ``visattn predict`` / ``visattn viz``).

Settings (``--preset``): ``default`` (about 10 minutes on 2 CPU cores), ``quick`` (about 2
minutes), ``tiny`` (seconds; for tests, numbers are not meaningful) and ``full`` (the whole
bundled subset, wider nets, more epochs). Every value of a preset can be overridden by a flag.

Measurements: FLOPs are counted with ``torch.utils.flop_counter`` for one image (2 per multiply-
add; convolutions and matrix products only). Training images/s is the number of training images
seen divided by the time of the training steps (no evaluation). Inference images/s is measured in
eval mode without autograd on the test set. The attention share is the time inside the attention
modules (forward hooks around each outermost ``SqueezeExcite`` / ``CBAM`` / ``SpatialTransformer``)
divided by the model's forward time, in a separate inference pass.

Tests: ``tests/viz/test_viz_demo.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .data import Distorter, ImageSet, distorted_size, load_dataset
from .layers import CBAM, ChannelAttention, SpatialAttention, SpatialTransformer, SqueezeExcite
from .models import create_model
from .viz import (
    Figure,
    capture,
    grad_cam,
    plot_confusion_matrix,
    plot_gradcam,
    plot_hardest_examples,
    plot_se_excitation,
    plot_spatial_attention,
    plot_stn,
    plot_training_curves,
    write_report,
)
from .viz._io import public_mode
from .viz.checkpoint import save_checkpoint

__all__ = ["PRESETS", "DemoConfig", "add_arguments", "main", "run", "run_demo"]

MODEL_KINDS = ("cnn", "se", "cbam", "stn")
DATASETS = ("plain", "rts")


@dataclass
class DemoConfig:
    """Every setting of the demo (see ``PRESETS``)."""

    out: str = "runs/demo"
    dataset: str = "fashion-mnist-small"
    train_size: int = 12000
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
    save_checkpoints: bool = True
    preset: str = "default"
    extra: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "quick": {"train_size": 4000, "test_size": 1000, "epochs": 3},
    "tiny": {
        "train_size": 256, "test_size": 128, "epochs": 1, "batch_size": 64,
        "channels": (4, 8), "kernel_sizes": (5, 3), "figure_images": 4,
    },
    "full": {"train_size": 0, "test_size": 0, "epochs": 12, "channels": (32, 32)},
}  # fmt: skip


def _label(kind: str, transform: str = "affine") -> str:
    return {"cnn": "CNN", "se": "CNN+SE", "cbam": "CNN+CBAM"}.get(kind, f"ST-CNN ({transform})")


def _model_specs(cfg: DemoConfig) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, registry name, kwargs) of every model to train."""
    base = {"channels": cfg.channels, "kernel_sizes": cfg.kernel_sizes}
    specs = []
    for kind in cfg.models:
        if kind == "stn":
            for t in cfg.transforms:
                specs.append((_label("stn", t), "stcnn", {**base, "transform": t}))
        elif kind == "cnn":
            specs.append((_label(kind), "cnn", dict(base)))
        else:
            kw = {**base, "attention": kind, "attention_kw": {"reduction": cfg.reduction}}
            specs.append((_label(kind), "cnn", kw))
    return specs


# -- data ----------------------------------------------------------------------------------
@dataclass
class _Split:
    images: torch.Tensor  # float (N, 1, S, S) in [0, 1], distorted for the test split
    labels: torch.Tensor
    distorter: Distorter | None = None  # train split: distortion drawn per (epoch seed, index)


def _load(cfg: DemoConfig) -> tuple[ImageSet, ImageSet]:
    train = load_dataset(cfg.dataset, "train")
    test = load_dataset(cfg.dataset, "test")
    g = torch.Generator().manual_seed(cfg.seed)
    # Random (but seeded) subsets, so every class is present even in tiny settings.
    tr = torch.randperm(len(train), generator=g)[: cfg.train_size or len(train)]
    te = torch.randperm(len(test), generator=g)[: cfg.test_size or len(test)]
    train = ImageSet(train.images[tr], train.labels[tr], train.classes, train.name)
    test = ImageSet(test.images[te], test.labels[te], test.classes, test.name)
    return train, test


def _splits(train: ImageSet, test: ImageSet, dataset: str, seed: int) -> tuple[_Split, _Split]:
    xtr = train.images.float() / 255
    xte = test.images.float() / 255
    if dataset == "plain":
        return _Split(xtr, train.labels), _Split(xte, test.labels)
    distorted = Distorter("rts", xte, seed=10_000 + seed)(xte, torch.arange(len(test)))
    return (
        _Split(xtr, train.labels, Distorter("rts", xtr, seed=seed)),
        _Split(distorted, test.labels),
    )


# -- measurements --------------------------------------------------------------------------
def count_flops(model: nn.Module, shape: Sequence[int]) -> int:
    """FLOPs of one forward pass on a (1, *shape) input (2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    model.train(was)
    return int(counter.get_total_flops())


_ATTENTION = (SqueezeExcite, CBAM, ChannelAttention, SpatialAttention, SpatialTransformer)


def _outermost_attention(model: nn.Module) -> list[nn.Module]:
    found, inside = [], set()
    for name, m in model.named_modules():
        if isinstance(m, _ATTENTION) and not any(name.startswith(p + ".") for p in inside):
            found.append(m)
            inside.add(name)
    return found


@torch.no_grad()
def measure_inference(
    model: nn.Module, x: torch.Tensor, batch_size: int = 256
) -> tuple[float, float]:
    """(images/s, share of forward time spent in attention modules) on ``x``, eval mode."""
    model.eval()
    model(x[:batch_size])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(x), batch_size):
        model(x[i : i + batch_size])
    ips = len(x) / max(time.perf_counter() - start, 1e-9)
    layers = _outermost_attention(model)
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
        total = 0.0
        for i in range(0, len(x), batch_size):
            t = time.perf_counter()
            model(x[i : i + batch_size])
            total += time.perf_counter() - t
    finally:
        for h in handles:
            h.remove()
    return ips, spent[0] / max(total, 1e-9)


@torch.no_grad()
def evaluate(
    model: nn.Module, split: _Split, batch_size: int = 500
) -> tuple[float, float, torch.Tensor]:
    """(mean loss, accuracy, logits (N, K)) on a prepared split, eval mode."""
    model.eval()
    logits = torch.cat(
        [model(split.images[i : i + batch_size]) for i in range(0, len(split.labels), batch_size)]
    )
    loss = float(F.cross_entropy(logits, split.labels))
    acc = float((logits.argmax(1) == split.labels).float().mean())
    return loss, acc, logits


def train_model(
    model: nn.Module, train: _Split, test: _Split, cfg: DemoConfig, *, log=print
) -> tuple[list[dict[str, float]], float]:
    """Adam with a cosine learning-rate schedule; returns (per-epoch records, train images/s)."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps = cfg.epochs * math.ceil(len(train.labels) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.15
    )
    g = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    seen, train_time = 0, 0.0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(len(train.labels), generator=g)
        distorter = None
        if train.distorter is not None:  # a fresh distortion of every image each epoch
            distorter = Distorter("rts", train.images, seed=cfg.seed * 1000 + epoch)
        loss_sum, correct = 0.0, 0
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            x, y = train.images[idx], train.labels[idx]
            if distorter is not None:
                x = distorter(x, idx)
            t = time.perf_counter()
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            train_time += time.perf_counter() - t
            seen += len(idx)
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == y).sum())
        test_loss, test_acc, _ = evaluate(model, test)
        rec = {
            "epoch": epoch,
            "train_loss": loss_sum / len(order),
            "train_acc": correct / len(order),
            "test_loss": test_loss,
            "test_acc": test_acc,
        }
        history.append(rec)
        log(
            f"    epoch {epoch}/{cfg.epochs}: train loss {rec['train_loss']:.3f} "
            f"acc {rec['train_acc']:.1%} | test loss {test_loss:.3f} acc {test_acc:.1%}"
        )
    return history, seen / max(train_time, 1e-9)


# -- figures -------------------------------------------------------------------------------
def _pick(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of up to ``n`` images of distinct classes (then any), in a fixed order."""
    chosen: list[int] = []
    classes: set[int] = set()
    for i, c in enumerate(labels.tolist()):
        if c not in classes:
            chosen.append(i)
            classes.add(c)
        if len(chosen) == n:
            break
    rest = [i for i in range(len(labels)) if i not in chosen]
    return torch.tensor((chosen + rest)[:n], dtype=torch.long)


def _figures(
    out: Path, runs: dict[tuple[str, str], dict[str, Any]], tests: dict[str, _Split],
    classes: list[str], cfg: DemoConfig,
) -> list[Figure]:  # fmt: skip
    figs: list[Figure] = []
    for ds in cfg.datasets:
        hist = {label: r["history"] for (d, label), r in runs.items() if d == ds}
        if hist:
            name = f"curves_{ds}.png"
            plot_training_curves(hist, out / name, title=f"Training curves, {_ds_title(ds)}")
            figs.append(Figure(name, f"Training curves: {_ds_title(ds)}",
                               "Loss and accuracy per epoch; solid lines on the training images, "
                               "dashed lines on the held-out test images."))  # fmt: skip
    ds = "rts" if "rts" in cfg.datasets else cfg.datasets[0]
    test = tests[ds]
    idx = _pick(test.labels, cfg.figure_images)
    x, y = test.images[idx], test.labels[idx]
    for (d, label), r in runs.items():
        if d != ds or not label.startswith("ST-CNN"):
            continue
        maps = capture(r["model"].eval(), x)
        (name_stn,) = list(maps.grid)[:1]
        fname = f"stn_{label.split('(')[-1].rstrip(')')}.png"
        plot_stn(maps.stn_input[name_stn], maps.stn_output[name_stn], maps.grid[name_stn],
                 out / fname, labels=y, class_names=classes,
                 title=f"{label} on {_ds_title(ds)}: input, sampling grid, output")  # fmt: skip
        figs.append(Figure(fname, f"Spatial transformer: {label}",
                           "Top: distorted test images. Middle: where the transformer samples "
                           "(the red frame is the border of its output). Bottom: the "
                           "transformer's output, which the classifier sees: rotation, scale "
                           "and position are largely undone."))  # fmt: skip
    if (ds, "CNN+CBAM") in runs:
        maps = capture(runs[ds, "CNN+CBAM"]["model"].eval(), x)
        plot_spatial_attention(x, maps.spatial, out / "cbam_spatial.png",
                               title=f"CBAM spatial attention $M_s$ per layer, {_ds_title(ds)}")  # fmt: skip
        figs.append(Figure("cbam_spatial.png", "CBAM spatial attention per layer",
                           "The spatial attention map M_s of each CBAM layer, upsampled and laid "
                           "over the input: red regions are kept, blue regions damped."))  # fmt: skip
    se_ds = "plain" if ("plain", "CNN+SE") in runs else ds
    if (se_ds, "CNN+SE") in runs:
        maps = capture(runs[se_ds, "CNN+SE"]["model"].eval(), tests[se_ds].images)
        plot_se_excitation(maps.se, tests[se_ds].labels, out / "se_excitation.png",
                           class_names=classes,
                           title=f"SE excitation per class, {_ds_title(se_ds)}")  # fmt: skip
        figs.append(Figure("se_excitation.png", "Squeeze-and-Excitation: excitation per class",
                           "Mean gate value s_c of every channel, per class, for each SE layer "
                           "(shallow left, deep right). As in the SE paper, early layers weigh "
                           "channels alike for all classes; deeper ones become class-specific."))  # fmt: skip
    cams, preds = {}, {}
    for label in ("CNN", "CNN+SE", "CNN+CBAM"):
        if (ds, label) in runs:
            cams[label], logits = grad_cam(runs[ds, label]["model"].eval(), x)
            preds[label] = logits.argmax(1)
    if cams:
        plot_gradcam(x, cams, out / "gradcam.png", labels=y, preds=preds, class_names=classes,
                     title=f"Grad-CAM of the predicted class, {_ds_title(ds)}")  # fmt: skip
        figs.append(Figure("gradcam.png", "Grad-CAM: baseline vs SE vs CBAM",
                           "Where each model looks for its prediction (Grad-CAM on the last "
                           "convolution stage), on the same test images; green: correct, "
                           "red: wrong."))  # fmt: skip
    best = max((r for (d, _), r in runs.items() if d == ds), key=lambda r: r["test_acc"])
    probs = best["logits"].softmax(1)
    plot_confusion_matrix(test.labels, probs.argmax(1), out / "confusion.png",
                          class_names=classes, num_classes=len(classes),
                          title=f"Confusion matrix of {best['label']}, {_ds_title(ds)}")  # fmt: skip
    figs.append(Figure("confusion.png", f"Confusion matrix: {best['label']} (best on "
                       f"{_ds_title(ds)})", "Rows: true class, columns: predicted class; the "
                       "colour is the share of the row, the number the count."))  # fmt: skip
    plot_hardest_examples(test.images, test.labels, probs, out / "hardest.png",
                          class_names=classes, k=12,
                          title=f"Hardest misclassified test images of {best['label']}")  # fmt: skip
    figs.append(Figure("hardest.png", "Hardest misclassified examples",
                       "The misclassified test images to which the best model gave the lowest "
                       "probability for the true class."))  # fmt: skip
    return figs


def _ds_title(ds: str) -> str:
    return "plain 28x28" if ds == "plain" else "RTS-distorted 42x42"


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
    for kind in cfg.models:
        if kind not in MODEL_KINDS:
            raise ValueError(f"models: expected names from {', '.join(MODEL_KINDS)}, got {kind!r}")
    for ds in cfg.datasets:
        if ds not in DATASETS:
            raise ValueError(f"datasets: expected names from {', '.join(DATASETS)}, got {ds!r}")
    if not cfg.models or not cfg.datasets:
        raise ValueError("models, datasets: expected at least one of each")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    started = time.perf_counter()
    train_set, test_set = _load(cfg)
    classes = train_set.classes
    log(f"visattn demo: {len(train_set)} training / {len(test_set)} test images of "
        f"{cfg.dataset}, {cfg.epochs} epochs, {torch.get_num_threads()} threads, "
        f"preset {cfg.preset!r}")  # fmt: skip
    # Everything is written to a temporary directory first and moved into place at the end,
    # so an interrupted run never leaves a half-written report.
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        runs: dict[tuple[str, str], dict[str, Any]] = {}
        tests: dict[str, _Split] = {}
        rows = []
        for ds in cfg.datasets:
            train, test = _splits(train_set, test_set, ds, cfg.seed)
            tests[ds] = test
            size = 28 if ds == "plain" else distorted_size("rts", 28)
            for label, name, kw in _model_specs(cfg):
                torch.manual_seed(cfg.seed)
                kwargs = {"num_classes": len(classes), "in_chans": 1, "input_size": size, **kw}
                model = create_model(name, **kwargs)
                log(f"  [{_ds_title(ds)}] {label}")
                t0 = time.perf_counter()
                history, train_ips = train_model(model, train, test, cfg, log=log)
                seconds = time.perf_counter() - t0
                _, acc, logits = evaluate(model, test)
                infer_ips, share = measure_inference(model, test.images)
                row = {
                    "data": ds,
                    "model": label,
                    "test_accuracy": acc,
                    "params": sum(p.numel() for p in model.parameters()),
                    "mflops": count_flops(model, (1, size, size)) / 1e6,
                    "train_images_per_s": train_ips,
                    "inference_images_per_s": infer_ips,
                    "attention_time_share": share,
                    "train_seconds": seconds,
                }
                rows.append(row)
                runs[ds, label] = {"model": model, "history": history, "test_acc": acc,
                                   "logits": logits, "label": label}  # fmt: skip
                if cfg.save_checkpoints:
                    ckpt = work / "checkpoints" / f"{ds}-{_slug(label)}.pt"
                    save_checkpoint(
                        ckpt, model, name=name, kwargs=kwargs, classes=classes,
                        input_size=(size, size), in_chans=1,
                        info={"dataset": cfg.dataset, "distortion": "none" if ds == "plain" else "rts",
                              "test_accuracy": acc, "epochs": cfg.epochs},
                    )  # fmt: skip
        log("drawing figures ...")
        figures = _figures(work, runs, tests, classes, cfg)
        elapsed = time.perf_counter() - started
        metrics = {
            "visattn_version": __version__,
            "settings": {k: v for k, v in asdict(cfg).items() if k != "extra"},
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
                "data": _ds_title(r["data"]), "model": r["model"],
                "test accuracy": f"{r['test_accuracy']:.1%}", "parameters": r["params"],
                "MFLOPs / image": r["mflops"], "train images/s": r["train_images_per_s"],
                "inference images/s": r["inference_images_per_s"],
                "attention share of inference time": f"{r['attention_time_share']:.0%}",
            }
            for r in rows
        ]  # fmt: skip
        write_report(
            work,
            title="visattn demo: what attention does",
            intro=(
                f"{len(train_set)} training and {len(test_set)} test images of {cfg.dataset} "
                f"({len(classes)} classes), plain and RTS-distorted (rotation ±45°, scale "
                f"0.7-1.2, translation in a 42x42 canvas); {cfg.epochs} epochs per model."
            ),
            tables={"Comparison": report_rows},
            figures=figures,
            notes=[
                f"visattn {__version__}, torch {torch.__version__}, {torch.get_num_threads()} "
                f"CPU threads, {elapsed:.0f} s in all. Preset {cfg.preset!r}; seed {cfg.seed}.",
                "FLOPs: convolutions and matrix products of one forward pass (2 per "
                "multiply-add). Attention share: time inside SE / CBAM / spatial-transformer "
                "modules over the forward time, eval mode.",
                "Checkpoints of every model are in checkpoints/; try "
                "'visattn viz --checkpoint checkpoints/rts-st-cnn-affine.pt --dataset "
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


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).replace("--", "-").strip("-")


# -- command line --------------------------------------------------------------------------
def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``visattn demo``."""
    parser.add_argument("--out", default="runs/demo", help="report directory (default runs/demo)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="default: ~10 min on 2 cores; quick: ~2 min; tiny: seconds (tests); "
                        "full: all bundled images, wider nets")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="same as --preset quick")
    parser.add_argument("--models", type=_csv, help=f"subset of {','.join(MODEL_KINDS)}")
    parser.add_argument("--transforms", type=_csv,
                        help="spatial-transformer families, e.g. affine,projective,tps")  # fmt: skip
    parser.add_argument("--datasets", type=_csv, help="subset of plain,rts")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--train-size", type=int, help="training images (0: all)")
    parser.add_argument("--test-size", type=int, help="test images (0: all)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    parser.add_argument("--no-checkpoints", action="store_true", help="do not save checkpoints")


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    preset = "quick" if args.quick and args.preset == "default" else args.preset
    cfg = replace(DemoConfig(), preset=preset, out=args.out, **PRESETS[preset])
    for key in ("models", "transforms", "datasets", "epochs", "train_size", "test_size",
                "batch_size", "lr", "seed", "threads"):  # fmt: skip
        value = getattr(args, key, None)
        if value is not None:
            setattr(cfg, key, value)
    if args.no_checkpoints:
        cfg.save_checkpoints = False
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m visattn.demo [options]``: the same as ``visattn demo``."""
    parser = argparse.ArgumentParser(prog="visattn demo", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"visattn demo: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
