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

Settings (``--preset``): ``default`` (about 10 minutes on 2 CPU cores), ``quick`` (about 2
minutes), ``tiny`` (seconds; for tests, numbers are not meaningful) and ``full`` (the whole
bundled subset, wider nets, more epochs). Every value of a preset can be overridden by a flag.

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
from ..models.scan import attention_modules
from ..viz import (
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
from ..viz._io import public_mode

__all__ = ["PRESETS", "DemoConfig", "add_arguments", "add_parser", "run", "run_demo"]

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
}  # fmt: skip


def _label(kind: str, transform: str = "affine") -> str:
    return {"cnn": "CNN", "se": "CNN+SE", "cbam": "CNN+CBAM"}.get(kind, f"ST-CNN ({transform})")


def _model_specs(cfg: DemoConfig) -> list[tuple[str, str, str | None, dict[str, Any]]]:
    """(label, registry name, attention, model_args) of every model to train."""
    base: dict[str, Any] = {"channels": list(cfg.channels), "kernel_sizes": list(cfg.kernel_sizes)}
    specs: list[tuple[str, str, str | None, dict[str, Any]]] = []
    for kind in cfg.models:
        if kind == "stn":
            for t in cfg.transforms:
                specs.append((_label("stn", t), "stcnn", None, {**base, "transform": t}))
        elif kind == "cnn":
            specs.append((_label(kind), "cnn", None, dict(base)))
        else:
            kw = {**base, "attention_kw": {"reduction": cfg.reduction}}
            specs.append((_label(kind), "cnn", kind, kw))
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
    out: Path, runs: dict[tuple[str, str], dict[str, Any]], tests: dict[str, PreparedData],
    classes: list[str], cfg: DemoConfig,
) -> list[Figure]:  # fmt: skip
    figs: list[Figure] = []
    curves: list[Figure] = []  # shown after the attention figures
    for ds in cfg.datasets:
        hist = {label: r["history"] for (d, label), r in runs.items() if d == ds}
        if hist:
            name = f"curves_{ds}.png"
            plot_training_curves(hist, out / name, title=f"Training curves, {_ds_title(ds)}")
            curves.append(Figure(name, f"Training curves: {_ds_title(ds)}",
                                 "Loss and accuracy per epoch; solid lines on the training "
                                 "images, dashed lines on held-out validation images."))  # fmt: skip
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
                           "(red: the border of its output; dotted white: the input's edge). "
                           "Bottom: the transformer's output, which the classifier sees: the "
                           "object is moved to the centre and rescaled; rotation is undone "
                           "only in part."))  # fmt: skip
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
                           "(shallow left, deep right); below, each class's difference from the "
                           "mean over all classes. The SE paper finds early layers weigh channels "
                           "alike for all classes and deep ones class-specifically; in this "
                           "shallow two-layer net the differences stay small (see the scale of "
                           "the lower row)."))  # fmt: skip
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
    figs += curves
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
    return "plain 28x28" if ds == "plain" else "RTS 42x42"


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
                log(f"  [{_ds_title(ds)}] {label}")
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
                                   "logits": logits, "label": label}  # fmt: skip
        log("drawing figures ...")
        figures = _figures(work, runs, tests, classes, cfg)
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
                "data": _ds_title(r["data"]), "model": r["model"],
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
                        "full: all bundled images, wider nets")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="same as --preset quick")
    parser.add_argument("--models", type=_csv, help=f"subset of {','.join(MODEL_KINDS)}")
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
