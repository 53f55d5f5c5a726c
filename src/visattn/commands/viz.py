"""``visattn viz``: the figures of the demo report for any trained checkpoint.

``visattn viz --checkpoint PATH (--dataset NAME | --images PATH...) --out DIR``

Draws the figures that apply to the model's attention layers and writes them with a
``report.html`` into DIR:

- spatial transformer (arXiv:1506.02025): inputs, sampling grid, outputs;
- CBAM (arXiv:1807.06521): spatial-attention maps per layer;
- SE (arXiv:1709.01507): excitation per class and depth (needs labels: ``--dataset``);
- any other mechanism (``attention.png``, :func:`visattn.viz.plot_attention_summary`): its maps
  over positions over the input, or its channel gates per class (needs labels);
- Grad-CAM (arXiv:1610.02391) of the predicted class, for every model;
- with ``--dataset``: confusion matrix and hardest misclassified test images.

With ``--dataset`` the test split is used; if the checkpoint was trained on RTS-distorted images
(its ``info["distortion"]``), the same distortion is applied, and images are resized to the
model's input otherwise. Exit code 0 on success, 1 on an error (one line on stderr), 2 for a
command-line syntax error.

Tests: ``tests/viz/test_viz_command.py``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..engine import PreparedData, evaluate
from ..viz import figures
from ..viz.capture import capture
from ..viz.gradcam import grad_cam
from ..viz.images import load_images
from ..viz.mechanisms import plot_attention_summary
from ..viz.report import Figure, write_report

__all__ = ["add_arguments", "add_parser", "dataset_images", "run", "visualise"]


def dataset_images(
    name: str, info: dict[str, Any], *, limit: int = 2000
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Test images prepared as in training (distortion, normalisation), labels and class names.

    ``info`` is the second value of ``visattn.engine.load_model``. The distortion of the
    checkpoint's training data is applied with the engine's test seed; images are converted to the
    model's channels and resized to its input size if they differ.
    """
    from ..data import load_dataset
    from ..engine import TEST_DISTORTION_SEED, Pipeline

    ds = load_dataset(name, "test")
    ds = ds.subset(limit)
    c = ds.shape[0]
    mean, std = info.get("mean") or [0.0] * c, info.get("std") or [1.0] * c
    if len(mean) != c:  # statistics of another channel count: use the average
        mean, std = [sum(mean) / len(mean)] * c, [sum(std) / len(std)] * c
    pipe = Pipeline(ds, mean=mean, std=std, distortion=info.get("distortion") or "none",
                    distortion_seed=TEST_DISTORTION_SEED)  # fmt: skip
    x, y = pipe.batch(torch.arange(len(ds)))
    in_chans, size = int(info["in_chans"]), int(info["input_size"])
    if x.shape[1] != in_chans:
        x = x.mean(1, keepdim=True) if in_chans == 1 else x.expand(-1, in_chans, -1, -1)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.contiguous(), y, list(info.get("classes") or ds.classes)


def visualise(
    model: torch.nn.Module,
    images: torch.Tensor,
    out: str | Path,
    *,
    labels: torch.Tensor | None = None,
    class_names: Sequence[str] | None = None,
    title: str = "visattn viz",
    max_images: int = 6,
) -> Path:
    """Write every figure that applies to ``model`` and a report into ``out``; return the report."""
    out = Path(out)
    model.eval()
    x = images[:max_images]
    y = None if labels is None else labels[:max_images]
    figs: list[Figure] = []
    maps = capture(model, x)
    for i, layer in enumerate(maps.grid):
        name = f"stn_{i}.png"
        figures.plot_stn(maps.stn_input[layer], maps.stn_output[layer], maps.grid[layer],
                         out / name, labels=y, class_names=class_names,
                         title=f"Spatial transformer {layer!r}: input, sampling grid, output")  # fmt: skip
        figs.append(Figure(name, f"Spatial transformer {layer}",
                           "Top: inputs; middle: the sampling grid (red: its border); bottom: "
                           "the transformer's output."))  # fmt: skip
    if maps.spatial:
        figures.plot_spatial_attention(x, maps.spatial, out / "cbam_spatial.png")
        figs.append(Figure("cbam_spatial.png", "CBAM spatial attention per layer",
                           "M_s of each CBAM layer over the input (red: kept, blue: damped)."))  # fmt: skip
    if maps.se and labels is not None:
        gates = capture(model, images).se
        figures.plot_se_excitation(
            gates, labels, out / "se_excitation.png", class_names=class_names
        )
        figs.append(Figure("se_excitation.png", "SE excitation per class",
                           "Mean gate value per channel and class, shallow to deep layers."))  # fmt: skip
    # any other mechanism: its maps over positions, or its channel gates per class
    where = bool(maps.mixed or maps.residual)
    if (where or maps.select or (maps.channel and not maps.spatial)) and (
        where or labels is not None
    ):
        m, imgs, labs = (maps, x, y) if where else (capture(model, images), images, labels)
        labs = torch.zeros(len(imgs), dtype=torch.long) if labs is None else labs
        _, caption = plot_attention_summary(m, imgs, labs, out / "attention.png",
                                            mechanism="model", class_names=class_names)  # fmt: skip
        figs.append(Figure("attention.png", "Attention maps", caption))
    cam, logits = grad_cam(model, x)
    # Behind a spatial transformer the last convolution stage sees the transformer's output, so
    # the map is drawn over that output (same size as the map's frame), not over the input.
    base, column, where = x, "model", "over the input"
    if maps.stn_output:
        last = list(maps.stn_output)[-1]
        v = maps.stn_output[last]
        if v.shape[1] in (1, 3):
            base, column, where = v, "model (on ST output)", "over the spatial transformer's output"
    figures.plot_gradcam(base, {column: cam}, out / "gradcam.png", labels=y,
                         preds={column: logits.argmax(1)}, class_names=class_names)  # fmt: skip
    figs.append(Figure("gradcam.png", "Grad-CAM of the predicted class",
                       f"Where the model looks for its prediction (last convolution stage), "
                       f"drawn {where}."))  # fmt: skip
    rows = []
    if labels is not None:
        result = evaluate(model, PreparedData(images, labels), batch_size=500, logits=True)
        probs = result["logits"].softmax(1)
        pred = probs.argmax(1)
        k = probs.shape[1]
        figures.plot_confusion_matrix(labels, pred, out / "confusion.png", class_names=class_names,
                                      num_classes=k)  # fmt: skip
        figures.plot_hardest_examples(
            images, labels, probs, out / "hardest.png", class_names=class_names
        )
        figs += [
            Figure("confusion.png", "Confusion matrix", "Rows: true class; columns: predicted."),
            Figure("hardest.png", "Hardest misclassified examples",
                   "Lowest probability of the true class among the misclassified images."),
        ]  # fmt: skip
        rows.append({"images": len(labels), "accuracy": f"{result['accuracy']:.1%}"})
    return write_report(out, title=title, tables={"Evaluation": rows} if rows else None,
                        figures=figs)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``visattn viz``."""
    parser.add_argument("--checkpoint", required=True,
                        help="run folder, model.safetensors or a training checkpoint")  # fmt: skip
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="dataset name (its test split), e.g. fashion-mnist-small")
    src.add_argument("--images", nargs="+", metavar="PATH", help="image files")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--num-images", type=int, default=6, help="images per figure")
    parser.add_argument("--limit", type=int, default=2000, help="dataset images to evaluate")


def run(args: argparse.Namespace) -> int:
    """Entry point of the ``viz`` sub-command; returns the exit code."""
    from ..engine import load_model
    from .predict import normalise

    model, info = load_model(args.checkpoint)
    if args.num_images < 1:
        raise ValueError(f"--num-images: expected an int >= 1, got {args.num_images}")
    if args.dataset:
        x, y, names = dataset_images(args.dataset, info, limit=args.limit)
    else:
        size = int(info["input_size"])
        x, good, failed = load_images(args.images, int(info["in_chans"]), (size, size))
        for _, msg in failed:
            print(f"visattn viz: skipped {msg}", file=sys.stderr)
        if not good:
            raise ValueError("images: none of the files could be read")
        x = normalise(x, info)
        y, names = None, list(info.get("classes") or [])
    title = f"visattn viz: {Path(args.checkpoint).name} ({info['options']['model']})"
    path = visualise(model, x, args.out, labels=y, class_names=names, title=title,
                     max_images=args.num_images)  # fmt: skip
    print(f"report: {path}")
    return 0


DESCRIPTION = """Draw the attention figures that apply to a trained model (spatial-transformer grids,
CBAM maps, SE excitation per class, Grad-CAM, confusion matrix, hardest examples) and a report.html.

examples:
  visattn viz --checkpoint runs/demo/models/rts-cnn-cbam --dataset fashion-mnist-small --out viz/
  visattn viz --checkpoint runs/my-run --images a.png b.png --out viz/"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``visattn viz`` (see ``visattn.cli``)."""
    from ..cli import add_command

    help = "draw the attention figures and a report for a trained model"
    return add_command(subparsers, "viz", help, DESCRIPTION, arguments=add_arguments)
