"""The demo's figures (``visattn demo``, :mod:`visattn.commands.demo`): spatial transformer grids,
CBAM's spatial maps, SE's excitation per class, one summary per other mechanism
(:func:`visattn.viz.plot_attention_summary`), Grad-CAM, training curves, the confusion matrix and
the hardest examples, drawn from the trained runs.

Tests: ``tests/viz/test_viz_demo.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..engine import PreparedData
from ..viz import (
    AttentionMaps,
    AttentionRecorder,
    Figure,
    attention_layers,
    capture,
    grad_cam,
    plot_attention_summary,
    plot_confusion_matrix,
    plot_gradcam,
    plot_hardest_examples,
    plot_se_excitation,
    plot_spatial_attention,
    plot_stn,
    plot_training_curves,
)

if TYPE_CHECKING:
    from .demo import DemoConfig

__all__ = ["demo_figures", "ds_title"]

#: Mechanisms with figures of their own in the demo (CBAM's M_s, SE's excitation per class).
_OWN_FIGURES = ("se", "cbam")


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


def demo_figures(
    out: Path, runs: dict[tuple[str, str], dict[str, Any]], tests: dict[str, PreparedData],
    classes: list[str], cfg: DemoConfig,
) -> list[Figure]:  # fmt: skip
    figs: list[Figure] = []
    curves: list[Figure] = []  # shown after the attention figures
    for ds in cfg.datasets:
        hist = {label: r["history"] for (d, label), r in runs.items() if d == ds}
        if hist:
            name = f"curves_{ds}.png"
            plot_training_curves(hist, out / name, title=f"Training curves, {ds_title(ds)}")
            curves.append(Figure(name, f"Training curves: {ds_title(ds)}",
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
                 title=f"{label} on {ds_title(ds)}: input, sampling grid, output")  # fmt: skip
        figs.append(Figure(fname, f"Spatial transformer: {label}",
                           "Top: distorted test images. Middle: where the transformer samples "
                           "(red: the border of its output; dotted white: the input's edge). "
                           "Bottom: the transformer's output, which the classifier sees: the "
                           "object is moved to the centre and rescaled; rotation is undone "
                           "only in part."))  # fmt: skip
    if (ds, "CNN+CBAM") in runs:
        maps = capture(runs[ds, "CNN+CBAM"]["model"].eval(), x)
        plot_spatial_attention(x, maps.spatial, out / "cbam_spatial.png",
                               title=f"CBAM spatial attention $M_s$ per layer, {ds_title(ds)}")  # fmt: skip
        figs.append(Figure("cbam_spatial.png", "CBAM spatial attention per layer",
                           "The spatial attention map M_s of each CBAM layer, upsampled and laid "
                           "over the input: red regions are kept, blue regions damped."))  # fmt: skip
    se_ds = "plain" if ("plain", "CNN+SE") in runs else ds
    if (se_ds, "CNN+SE") in runs:
        maps = capture(runs[se_ds, "CNN+SE"]["model"].eval(), tests[se_ds].images)
        plot_se_excitation(maps.se, tests[se_ds].labels, out / "se_excitation.png",
                           class_names=classes,
                           title=f"SE excitation per class, {ds_title(se_ds)}")  # fmt: skip
        figs.append(Figure("se_excitation.png", "Squeeze-and-Excitation: excitation per class",
                           "Mean gate value s_c of every channel, per class, for each SE layer "
                           "(shallow left, deep right); below, each class's difference from the "
                           "mean over all classes. The SE paper finds early layers weigh channels "
                           "alike for all classes and deep ones class-specifically; in this "
                           "shallow two-layer net the differences stay small (see the scale of "
                           "the lower row)."))  # fmt: skip
    for (d, label), r in runs.items():
        name = r.get("attention")
        if d != ds or name is None or name in _OWN_FIGURES:
            continue
        fname = f"attention_{name}.png"
        maps, images, labels = _maps_for_summary(r["model"].eval(), x, y, test)
        _, caption = plot_attention_summary(maps, images, labels, out / fname, mechanism=label,
                                            class_names=classes)  # fmt: skip
        figs.append(Figure(fname, f"{label}: its attention", caption))
    cams, preds = {}, {}
    for label in ("CNN", "CNN+SE", "CNN+CBAM"):
        if (ds, label) in runs:
            cams[label], logits = grad_cam(runs[ds, label]["model"].eval(), x)
            preds[label] = logits.argmax(1)
    if cams:
        plot_gradcam(x, cams, out / "gradcam.png", labels=y, preds=preds, class_names=classes,
                     title=f"Grad-CAM of the predicted class, {ds_title(ds)}")  # fmt: skip
        figs.append(Figure("gradcam.png", "Grad-CAM: baseline vs SE vs CBAM",
                           "Where each model looks for its prediction (Grad-CAM on the last "
                           "convolution stage), on the same test images; green: correct, "
                           "red: wrong."))  # fmt: skip
    figs += curves
    best = max((r for (d, _), r in runs.items() if d == ds), key=lambda r: r["test_acc"])
    probs = best["logits"].softmax(1)
    plot_confusion_matrix(test.labels, probs.argmax(1), out / "confusion.png",
                          class_names=classes, num_classes=len(classes),
                          title=f"Confusion matrix of {best['label']}, {ds_title(ds)}")  # fmt: skip
    figs.append(Figure("confusion.png", f"Confusion matrix: {best['label']} (best on "
                       f"{ds_title(ds)})", "Rows: true class, columns: predicted class; the "
                       "colour is the share of the row, the number the count."))  # fmt: skip
    plot_hardest_examples(test.images, test.labels, probs, out / "hardest.png",
                          class_names=classes, k=12,
                          title=f"Hardest misclassified test images of {best['label']}")  # fmt: skip
    figs.append(Figure("hardest.png", "Hardest misclassified examples",
                       "The misclassified test images to which the best model gave the lowest "
                       "probability for the true class."))  # fmt: skip
    return figs


def ds_title(ds: str) -> str:
    return "plain 28x28" if ds == "plain" else "RTS 42x42"


@torch.no_grad()
def _maps_for_summary(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, test: PreparedData
) -> tuple[AttentionMaps, torch.Tensor, torch.Tensor]:
    """The maps to summarise a model's mechanism: on the figure's few images when it has maps
    over positions (drawn over them), else gates over the whole test set (means per class),
    captured in batches."""
    kinds = set(attention_layers(model).values())
    if kinds & {"spatial", "mixed", "residual"}:
        return capture(model, x), x, y
    with AttentionRecorder(model) as rec:
        for batch in test.images.split(250):
            model(batch)
        return rec.maps(), test.images, test.labels
