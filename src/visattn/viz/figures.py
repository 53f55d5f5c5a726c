"""Figures that show what attention does, drawn with matplotlib (Agg, no display needed).

- training curves of several models (loss and accuracy per epoch);
- Spatial Transformer (Jaderberg et al., arXiv:1506.02025, Fig. 1 / 3): distorted inputs, the
  sampling grid T_theta(G) drawn over them, and the transformer outputs V;
- CBAM spatial attention M_s (Woo et al., arXiv:1807.06521, eq. 3) overlaid on the input, per layer;
- SE excitation s (Hu et al., arXiv:1709.01507, Fig. 6): mean activation per channel and class at
  several depths;
- Grad-CAM (arXiv:1610.02391) of several models on the same images (CBAM's Fig. 4);
- confusion matrix and the most confidently misclassified examples.

Every function takes tensors (or plain sequences), an output path, writes one PNG atomically
(temporary file, then rename) and returns the path. Figures are built with
``matplotlib.figure.Figure`` directly (Agg canvas, no pyplot), so no display is needed and the
process's matplotlib backend is left alone. Images are (N, C, H, W) with C = 1 or 3 and
are shown min-max scaled per image. The pixel size of each figure is its ``figsize`` times
``dpi`` (no tight cropping), so it is predictable.

Tests: ``tests/viz/test_viz_figures.py``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.cm
import matplotlib.colors
import matplotlib.patches
import matplotlib.ticker
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._checks import check_tensor
from ._io import atomic_write

__all__ = [
    "DPI",
    "plot_confusion_matrix",
    "plot_gradcam",
    "plot_hardest_examples",
    "plot_overlay",
    "plot_se_excitation",
    "plot_spatial_attention",
    "plot_stn",
    "plot_training_curves",
]

DPI = 100
_PANEL = 1.7  # inches per image panel
_CMAP = "jet"  # attention heat maps (as in the CBAM / Grad-CAM figures)


# -- helpers -----------------------------------------------------------------------------
def _save(fig: Figure, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"), ".png")


def _subplots(*shape: int, figsize: tuple[float, float], **kw) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(*shape, **kw)


def _images(x: torch.Tensor, name: str = "images") -> torch.Tensor:
    check_tensor(x, name, ndim=4, layout="(N, C, H, W)")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{name}: expected 1 or 3 channels, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one image, got shape {tuple(x.shape)}")
    return x.detach().float().cpu()


def _display(img: torch.Tensor) -> np.ndarray:
    """(C, H, W) -> (H, W) or (H, W, 3) in [0, 1], min-max scaled."""
    img = img.float()
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) if hi > lo else torch.zeros_like(img)
    return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()


def _show(ax: Axes, img: torch.Tensor) -> None:
    arr = _display(img)
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _names(class_names: Sequence[str] | None, k: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(k)]
    names = [str(c) for c in class_names]
    if len(names) < k:
        names += [str(i) for i in range(len(names), k)]
    return names


def _upsample(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 1, h, w) or (N, h, w) -> (N, H, W)."""
    if m.dim() == 3:
        m = m[:, None]
    return F.interpolate(m.float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def _long(t: torch.Tensor | Sequence[int], name: str) -> torch.Tensor:
    t = torch.as_tensor(t).detach().cpu().reshape(-1)
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise ValueError(f"{name}: expected integer class indices, got {t.dtype} values")
    return t.long()


# -- training curves ---------------------------------------------------------------------
def plot_training_curves(
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    path: str | os.PathLike,
    *,
    title: str = "Training curves",
) -> Path:
    """Loss (left) and accuracy (right) per epoch for every model.

    Args:
        histories: model name -> records (e.g. the lines of ``metrics.jsonl``); each record has an
            ``"epoch"`` (or ``"step"``) and any numeric keys; keys containing ``"loss"`` go to the
            left panel, keys containing ``"acc"`` to the right one. Keys starting with ``"train"``
            are drawn solid, the others (validation / test) dashed; one colour per model.
    """
    if not isinstance(histories, Mapping) or not histories:
        raise ValueError("histories: expected a non-empty mapping model name -> list of records")
    fig, axes = _subplots(1, 2, figsize=(11, 4.2))
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = [0, 0]
    xs_all: set[float] = set()
    xlabel = "epoch"
    for i, (model, records) in enumerate(histories.items()):
        records = [r for r in records if isinstance(r, Mapping)]
        xkey = "epoch" if any("epoch" in r for r in records) else "step"
        if xkey == "step":
            xlabel = "step"
        keys = sorted({k for r in records for k, v in r.items() if _is_number(v) and k != xkey})
        for key in keys:
            panel = 0 if "loss" in key else 1 if "acc" in key else None
            if panel is None:
                continue
            pts = [(r[xkey], r[key]) for r in records if xkey in r and _is_number(r.get(key))]
            if not pts:
                continue
            xs, ys = zip(*sorted(pts), strict=True)
            xs_all.update(xs)
            style = "-" if key.startswith("train") else "--"
            axes[panel].plot(
                xs,
                ys,
                style,
                marker="o",
                ms=3,
                color=colours[i % len(colours)],
                label=f"{model}: {key}",
            )
            drawn[panel] += 1
    for ax, what, n in zip(axes, ("loss", "accuracy"), drawn, strict=True):
        ax.set_xlabel(xlabel)
        if 0 < len(xs_all) <= 12:
            ax.set_xticks(sorted(xs_all))
        else:
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_ylabel(what)
        ax.set_title(f"{what} (solid: training, dashed: validation)")
        ax.grid(alpha=0.3)
        if n:
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(
                0.5, 0.5, f"no {what} recorded", ha="center", va="center", transform=ax.transAxes
            )
    fig.suptitle(title)
    return _save(fig, path)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# -- spatial transformer -----------------------------------------------------------------
def _grid_to_pixels(grid: torch.Tensor, h: int, w: int, align_corners: bool) -> np.ndarray:
    g = grid.float().numpy().copy()
    if align_corners:
        g[..., 0] = (g[..., 0] + 1) / 2 * (w - 1)
        g[..., 1] = (g[..., 1] + 1) / 2 * (h - 1)
    else:
        g[..., 0] = ((g[..., 0] + 1) * w - 1) / 2
        g[..., 1] = ((g[..., 1] + 1) * h - 1) / 2
    return g


def plot_stn(
    inputs: torch.Tensor,
    outputs: torch.Tensor,
    grids: torch.Tensor,
    path: str | os.PathLike,
    *,
    labels: torch.Tensor | Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    align_corners: bool = False,
    lines: int = 7,
    max_images: int = 8,
    title: str = "Spatial transformer: input, sampling grid, output",
) -> Path:
    """Distorted inputs U (row 1), the sampling grid T_theta(G) over them (row 2), outputs V (row 3).

    Args:
        inputs: U, (N, C, H, W).
        outputs: V, (N, C, H_out, W_out).
        grids: sampling grids (N, H_out, W_out, 2), (x, y) normalised to [-1, 1].
        lines: grid lines drawn per direction; the border of the sampled region is drawn thicker.
    """
    inputs, outputs = _images(inputs, "inputs"), _images(outputs, "outputs")
    check_tensor(grids, "grids", ndim=4, layout="(N, H_out, W_out, 2)")
    n = min(inputs.shape[0], max_images)
    if outputs.shape[0] < n or grids.shape[0] < n or grids.shape[-1] != 2:
        raise ValueError(
            f"outputs, grids: expected {n} outputs and grids (N, H_out, W_out, 2), got "
            f"{tuple(outputs.shape)} and {tuple(grids.shape)}"
        )
    grids = grids.detach().float().cpu()
    names = None if labels is None else _long(labels, "labels")
    h, w = inputs.shape[-2:]
    fig, axes = _subplots(3, n, figsize=(max(_PANEL * n, 4.5), 3 * _PANEL + 0.8), squeeze=False)
    frames = [_grid_to_pixels(grids[j], h, w, align_corners) for j in range(n)]
    # One view for the whole row: the input and every frame, also where a frame reaches outside
    # the input (zero padding there), so panels keep one size and scale.
    x0 = min(-0.5, *(float(g[..., 0].min()) for g in frames))
    x1 = max(w - 0.5, *(float(g[..., 0].max()) for g in frames))
    y0 = min(-0.5, *(float(g[..., 1].min()) for g in frames))
    y1 = max(h - 0.5, *(float(g[..., 1].max()) for g in frames))
    pad = 0.02 * max(x1 - x0, y1 - y0)
    for j in range(n):
        _show(axes[0, j], inputs[j])
        _show(axes[1, j], inputs[j])
        _show(axes[2, j], outputs[j])
        g = frames[j]
        ho, wo = g.shape[:2]
        rows = np.unique(np.linspace(0, ho - 1, lines).round().astype(int))
        cols = np.unique(np.linspace(0, wo - 1, lines).round().astype(int))
        ax = axes[1, j]
        for r in rows:
            edge = r in (0, ho - 1)
            ax.plot(g[r, :, 0], g[r, :, 1], "-", color="tab:red" if edge else "yellow",
                    lw=1.6 if edge else 0.6)  # fmt: skip
        for c in cols:
            edge = c in (0, wo - 1)
            ax.plot(g[:, c, 0], g[:, c, 1], "-", color="tab:red" if edge else "yellow",
                    lw=1.6 if edge else 0.6)  # fmt: skip
        ax.set_xlim(x0 - pad, x1 + pad)
        ax.set_ylim(y1 + pad, y0 - pad)
        ax.add_patch(matplotlib.patches.Rectangle((-0.5, -0.5), w, h, fill=False, lw=0.8,
                                                  ls=":", ec="white"))  # fmt: skip
        if names is not None and j < names.numel():
            axes[0, j].set_title(_names(class_names, int(names.max()) + 1)[names[j]], fontsize=8)
    axes[0, 0].set_ylabel("distorted input U")
    axes[1, 0].set_ylabel("sampling grid on U\n(red: output border)")
    axes[2, 0].set_ylabel("transformer output V")
    fig.suptitle(title)
    return _save(fig, path)


# -- CBAM spatial attention --------------------------------------------------------------
def _heat_colorbar(fig: Figure, axes, label: str) -> None:
    """An opaque colour bar for the (semi-transparent) heat-map overlays."""
    sm = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap=_CMAP)
    fig.colorbar(sm, ax=axes, shrink=0.6, aspect=25, label=label)


def _overlay(ax: Axes, img: torch.Tensor, heat: torch.Tensor, alpha: float = 0.5):
    _show(ax, img)
    return ax.imshow(
        heat.numpy(), cmap=_CMAP, vmin=0, vmax=1, alpha=alpha, interpolation="bilinear"
    )


def plot_spatial_attention(
    images: torch.Tensor,
    maps: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    max_images: int = 6,
    title: str = "CBAM spatial attention $M_s$ overlaid on the input, per layer",
    colorbar_label: str = "attention weight (0 = suppressed, 1 = kept)",
) -> Path:
    """Each row an image; columns: the input, then M_s of every layer upsampled onto it.

    Args:
        images: (N, C, H, W).
        maps: layer name -> M_s (N, 1, h, w) with values in [0, 1] (from :func:`capture`).
        colorbar_label: what the colours mean (scaled maps are relative weights).
    """
    images = _images(images)
    if not isinstance(maps, Mapping) or not maps:
        raise ValueError("maps: expected a non-empty mapping layer name -> (N, 1, h, w) tensor")
    n = min(images.shape[0], max_images)
    cols = 1 + len(maps)
    fig, axes = _subplots(
        n,
        cols,
        figsize=(_PANEL * cols + 1.0, _PANEL * n + 0.7),
        squeeze=False,
    )
    for c, (name, m) in enumerate(maps.items(), start=1):
        check_tensor(m, f"maps[{name!r}]", floating=True)
        up = _upsample(m.detach().float().cpu()[:n], tuple(images.shape[-2:]))
        axes[0, c].set_title(f"{name}\n({m.shape[-2]}x{m.shape[-1]})", fontsize=8)
        for r in range(n):
            _overlay(axes[r, c], images[r], up[r])
    for r in range(n):
        _show(axes[r, 0], images[r])
    axes[0, 0].set_title("input", fontsize=8)
    _heat_colorbar(fig, axes, colorbar_label)
    fig.suptitle(title)
    return _save(fig, path)


# -- SE excitation -----------------------------------------------------------------------
def plot_se_excitation(
    gates: Mapping[str, torch.Tensor],
    labels: torch.Tensor | Sequence[int],
    path: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    max_layers: int = 4,
    max_classes: int = 10,
    title: str = "SE excitation per class at increasing depth",
) -> Path:
    """Mean excitation s_c per channel, one line per class, one column per depth (SE paper Fig. 6).

    Top row: the class means; bottom row: each class mean minus the mean over all classes, on one
    scale for every depth, which shows how class-specific each depth is.

    Args:
        gates: layer name -> s (N, C), in network order (shallow first).
        labels: class of each image (N,).
        max_layers: panels drawn, spread evenly from the first to the last layer.
    """
    if not isinstance(gates, Mapping) or not gates:
        raise ValueError("gates: expected a non-empty mapping layer name -> (N, C) tensor")
    labels = _long(labels, "labels")
    names = list(gates)
    if len(names) > max_layers:
        idx = np.unique(np.linspace(0, len(names) - 1, max_layers).round().astype(int))
        names = [names[i] for i in idx]
    classes = sorted(set(labels.tolist()))[:max_classes]
    cls_names = _names(class_names, max(classes) + 1 if classes else 1)
    fig, axes = _subplots(
        2, len(names), figsize=(3.6 * len(names) + 1.6, 6.2), squeeze=False, sharex="col"
    )
    cmap = matplotlib.colormaps["tab10"]
    spread = 0.0
    for col, name in enumerate(names):
        s = gates[name].detach().float().cpu()
        s = s.reshape(s.shape[0], -1)
        if s.shape[0] != labels.numel():
            raise ValueError(
                f"gates[{name!r}]: expected {labels.numel()} rows (one per label), got "
                f"{tuple(s.shape)}"
            )
        ch = np.arange(s.shape[1])
        mean_all = s.mean(0)
        top, bottom = axes[0, col], axes[1, col]
        for i, c in enumerate(classes):
            per_class = s[labels == c].mean(0)
            top.plot(ch, per_class.numpy(), lw=1, color=cmap(i % 10), label=cls_names[c])
            diff = (per_class - mean_all).numpy()
            bottom.plot(ch, diff, lw=1, color=cmap(i % 10))
            spread = max(spread, float(np.abs(diff).max()))
        top.plot(ch, mean_all.numpy(), lw=1.8, color="black", ls="--", label="all classes")
        bottom.axhline(0, color="black", lw=1.2, ls="--")
        top.set_title(f"{name} ({s.shape[1]} channels)", fontsize=9)
        bottom.set_xlabel("channel index")
        bottom.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        top.set_ylim(-0.02, 1.02 if float(s.max()) <= 1 else None)
        top.grid(alpha=0.3)
        bottom.grid(alpha=0.3)
    lim = 1.1 * spread if spread > 0 else 0.05
    for ax in axes[1]:
        ax.set_ylim(-lim, lim)  # one scale for every depth, so their spread compares
    axes[0, 0].set_ylabel("mean excitation $s_c$ per class")
    axes[1, 0].set_ylabel("class mean minus\nmean over all classes")
    handles, leg = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, leg, loc="outside right center", fontsize=7, title="class")
    fig.suptitle(title)
    return _save(fig, path)


# -- Grad-CAM ----------------------------------------------------------------------------
def plot_gradcam(
    images: torch.Tensor,
    cams: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    labels: torch.Tensor | Sequence[int] | None = None,
    preds: Mapping[str, torch.Tensor | Sequence[int]] | None = None,
    class_names: Sequence[str] | None = None,
    max_images: int = 6,
    title: str = "Grad-CAM of the predicted class, same images for every model",
) -> Path:
    """Rows: images; columns: the input, then each model's Grad-CAM map over it.

    Args:
        images: (N, C, H, W).
        cams: model name -> maps (N, H, W) in [0, 1] (from :func:`grad_cam`).
        labels: true classes (N,), shown on the input.
        preds: model name -> predicted classes (N,), shown with each map (green right, red wrong).
    """
    images = _images(images)
    if not isinstance(cams, Mapping) or not cams:
        raise ValueError("cams: expected a non-empty mapping model name -> (N, H, W) tensor")
    n = min(images.shape[0], max_images)
    lab = None if labels is None else _long(labels, "labels")
    k = 1 + max([int(lab.max())] if lab is not None else [0])
    if preds:
        k = max(k, 1 + max(int(_long(p, "preds").max()) for p in preds.values()))
    names = _names(class_names, k)
    cols = 1 + len(cams)
    fig, axes = _subplots(
        n,
        cols,
        figsize=(_PANEL * cols + 1.0, _PANEL * n + 0.8),
        squeeze=False,
    )
    for r in range(n):
        _show(axes[r, 0], images[r])
        if lab is not None:
            axes[r, 0].set_title(f"true: {names[lab[r]]}", fontsize=8)
    for c, (model, cam) in enumerate(cams.items(), start=1):
        up = _upsample(cam.detach().float().cpu()[:n], tuple(images.shape[-2:]))
        p = None if not preds or model not in preds else _long(preds[model], "preds")
        for r in range(n):
            _overlay(axes[r, c], images[r], up[r])
            text = model if r == 0 else ""
            if p is not None:
                ok = lab is None or p[r] == lab[r]
                text = (text + "\n" if text else "") + f"pred: {names[p[r]]}"
                axes[r, c].set_title(text, fontsize=8, color="green" if ok else "red")
            else:
                axes[r, c].set_title(text, fontsize=8)
    _heat_colorbar(fig, axes, "Grad-CAM importance (0 = none, 1 = most)")
    fig.suptitle(title)
    return _save(fig, path)


# -- evaluation figures ------------------------------------------------------------------
def plot_confusion_matrix(
    targets: torch.Tensor | Sequence[int],
    preds: torch.Tensor | Sequence[int],
    path: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    title: str = "Confusion matrix",
) -> Path:
    """Row-normalised confusion matrix (share of each true class), with counts in the cells."""
    t, p = _long(targets, "targets"), _long(preds, "preds")
    if t.numel() != p.numel() or t.numel() == 0:
        raise ValueError(
            f"targets, preds: expected the same non-zero length, got {t.numel()} and {p.numel()}"
        )
    if (t < 0).any() or (p < 0).any():
        raise ValueError("targets, preds: expected class indices >= 0")
    k = num_classes or int(max(t.max(), p.max())) + 1
    counts = torch.zeros(k, k, dtype=torch.long)
    counts.index_put_((t, p), torch.ones_like(t), accumulate=True)
    share = counts.float() / counts.sum(1, keepdim=True).clamp_min(1)
    names = _names(class_names, k)
    side = min(max(3.5, 0.55 * k + 2.5), 12)
    fig, ax = _subplots(figsize=(side + 1.2, side))
    im = ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if counts[i, j]:
                ax.text(
                    j,
                    i,
                    str(int(counts[i, j])),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    acc = float((t == p).float().mean())
    ax.set_title(f"{title} (accuracy {acc:.1%}, {t.numel()} images)")
    fig.colorbar(im, ax=ax, label="share of the true class (row)")
    return _save(fig, path)


def _p(value: torch.Tensor | float) -> str:
    """A probability for a title: 0.86, or 3e-04 when it would round to 0.00."""
    v = float(value)
    return f"{v:.2f}" if v >= 0.005 or v == 0 else f"{v:.0e}"


def plot_hardest_examples(
    images: torch.Tensor,
    targets: torch.Tensor | Sequence[int],
    probs: torch.Tensor,
    path: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    k: int = 12,
    title: str = "Hardest misclassified examples (lowest probability of the true class)",
) -> Path:
    """The ``k`` misclassified images with the lowest probability of their true class.

    Args:
        images: (N, C, H, W); targets: (N,); probs: class probabilities (N, K).
    """
    images = _images(images)
    t = _long(targets, "targets")
    check_tensor(probs, "probs", ndim=2, layout="(N, K)")
    probs = probs.detach().float().cpu()
    if probs.shape[0] != images.shape[0] or t.numel() != images.shape[0]:
        raise ValueError(
            f"targets, probs: expected {images.shape[0]} rows, got {t.numel()} and "
            f"{tuple(probs.shape)}"
        )
    pred = probs.argmax(1)
    wrong = (pred != t).nonzero().flatten()
    p_true = probs.gather(1, t.clamp(0, probs.shape[1] - 1)[:, None])[:, 0]
    order = wrong[p_true[wrong].argsort()][:k]
    names = _names(class_names, probs.shape[1])
    n = max(order.numel(), 1)
    cols = min(n, 6)
    rows = math.ceil(n / cols)
    fig, axes = _subplots(
        rows,
        cols,
        figsize=(max(_PANEL * 1.15 * cols, 4.5), (_PANEL + 0.45) * rows + 0.6),
        squeeze=False,
    )
    for ax in axes.flat:
        ax.axis("off")
    if order.numel() == 0:
        axes[0, 0].text(
            0.5,
            0.5,
            "no misclassified examples",
            ha="center",
            va="center",
            transform=axes[0, 0].transAxes,
        )
    for ax, i in zip(axes.flat, order.tolist(), strict=False):
        ax.axis("on")
        _show(ax, images[i])
        ax.set_title(
            f"true: {names[t[i]]} (p={_p(p_true[i])})\npred: {names[pred[i]]} "
            f"(p={_p(probs[i, pred[i]])})",
            fontsize=7,
        )
    fig.suptitle(title)
    return _save(fig, path)


def plot_overlay(
    image: torch.Tensor,
    heat: torch.Tensor,
    path: str | os.PathLike,
    *,
    title: str = "",
    label: str = "attention (0 to 1)",
) -> Path:
    """One image (C, H, W) with a heat map (h, w) in [0, 1] upsampled over it, and a colour bar."""
    image = _images(image[None] if image.dim() == 3 else image)[0]
    heat = heat.detach().float().cpu()
    heat = heat.reshape(1, 1, *heat.shape[-2:])
    up = _upsample(heat, tuple(image.shape[-2:]))[0]
    fig, axes = _subplots(1, 2, figsize=(6.0, 3.0))
    _show(axes[0], image)
    axes[0].set_title("input", fontsize=9)
    _overlay(axes[1], image, up)
    axes[1].set_title("attention overlay", fontsize=9)
    _heat_colorbar(fig, axes[1], label)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
