"""One figure for any attention mechanism: its captured maps reduced to what can be drawn.

:func:`visattn.viz.capture` records each layer's ``attention(x)`` under its map kind
(``visattn.layers._common.MAP_KINDS``). Two kinds of picture cover them all:

- **where** (:func:`position_maps`): a map over positions, (N, 1, h, w) in [0, 1], from
  ``spatial`` maps as they are (CBAM's M_s), ``mixed`` maps averaged over the channels
  (coordinate attention, SimAM, BAM, triplet, gather-excite with a finite extent) and
  ``residual`` terms as the channel-wise L2 norm of what the layer adds (global context,
  non-local). Mixed and residual maps are min-max scaled per image, so they show *relative*
  weight (the scale of a mixed map differs by mechanism: BAM's 1 + M lies in (1, 2), SimAM's
  in (0.5, 1)).
- **which channels** (:func:`channel_gates`): gates (N, C) per layer, from ``se`` and
  ``channel`` gates (SE, ECA, effective SE, CBAM's channel part) and, for ``select`` weights
  (N, M, C) of a Selective Kernel layer, the weight of its last (largest) kernel per channel,
  the quantity the SK paper relates to the object's scale.

:func:`plot_attention_summary` draws the first over the input images when a model has one,
else the second per class (the SE paper's Fig. 6), through :mod:`visattn.viz.figures`.

Tests: ``tests/viz/test_viz_mechanisms.py``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .capture import AttentionMaps
from .figures import plot_se_excitation, plot_spatial_attention

__all__ = ["channel_gates", "plot_attention_summary", "position_maps"]


def _scaled(m: torch.Tensor) -> torch.Tensor:
    """Min-max scale each image's map (N, 1, h, w) to [0, 1]; a constant map becomes 0.5."""
    flat = m.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = (hi - lo).clamp_min(torch.finfo(m.dtype).tiny)
    out = (flat - lo[:, None]) / span[:, None]
    out[hi == lo] = 0.5
    return out.view_as(m)


def position_maps(maps: AttentionMaps) -> dict[str, torch.Tensor]:
    """Layer name -> a map over positions (N, 1, h, w) in [0, 1], for every recorded layer whose
    kind has one (``spatial`` as recorded; ``mixed`` averaged over C and ``residual`` as the L2
    norm over C, both min-max scaled per image), in recording order."""
    out: dict[str, torch.Tensor] = dict(maps.spatial)
    for name, m in maps.mixed.items():
        out[name] = _scaled(m.float().mean(1, keepdim=True))
    for name, m in maps.residual.items():
        out[name] = _scaled(m.float().norm(dim=1, keepdim=True))
    return out


def channel_gates(maps: AttentionMaps) -> dict[str, torch.Tensor]:
    """Layer name -> gates (N, C): ``se`` and ``channel`` gates as recorded, and for ``select``
    weights (N, M, C) the weight of the last branch (the largest kernel)."""
    out: dict[str, torch.Tensor] = {**maps.se, **maps.channel}
    for name, a in maps.select.items():
        out[name] = a[:, -1, :]
    return out


def plot_attention_summary(
    maps: AttentionMaps,
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    path: str | os.PathLike,
    *,
    mechanism: str,
    class_names: Sequence[str] | None = None,
    max_images: int = 6,
) -> tuple[Path, str]:
    """Draw ``maps`` (captured on ``images``) of a model with one mechanism; returns the path and
    a caption saying what is drawn.

    Position maps (see :func:`position_maps`) are laid over the first ``max_images`` images;
    a model with gates only gets its mean gate per channel and class over all images.

    Raises:
        ValueError: nothing drawable was recorded (the model has no attention layer).
    """
    where = position_maps(maps)
    if where:
        n = min(int(images.shape[0]), max_images)
        title = f"{mechanism}: where the attention weighs, per layer"
        kinds = sorted(k for k in ("spatial", "mixed", "residual") if getattr(maps, k))
        label = (
            "attention weight (0 = suppressed, 1 = kept)"
            if kinds == ["spatial"]
            else "weight relative to the image's own range (scaled to [0, 1])"
        )
        plot_spatial_attention(images[:n], where, path, max_images=n, title=title,
                               colorbar_label=label)  # fmt: skip
        how = {
            "spatial": "spatial maps as they are",
            "mixed": "maps over channels and positions averaged over the channels, then scaled "
            "per image to [0, 1]",
            "residual": "the L2 norm over channels of the term the layer adds, scaled per image "
            "to [0, 1]",
        }
        return Path(path), f"{mechanism}: " + "; ".join(how[k] for k in kinds) + "."
    gates = channel_gates(maps)
    if not gates:
        raise ValueError(f"maps: expected recorded attention of {mechanism!r}, got none")
    title = f"{mechanism}: channel gates per class"
    plot_se_excitation(gates, labels, path, class_names=class_names, title=title)
    what = (
        "the softmax weight of the largest kernel per channel"
        if maps.select
        else "the channel gate"
    )
    return Path(path), f"{mechanism}: mean of {what}, per class and layer (shallow left)."
