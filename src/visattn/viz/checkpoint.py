"""Self-describing model checkpoints for ``visattn predict`` / ``visattn viz``.

A checkpoint is a ``torch.save`` dict that holds everything needed to rebuild the model and feed it:

    {"format": "visattn-model", "version": 1,
     "model": registry name (visattn.models.create_model), "model_kwargs": {...},
     "state_dict": {...}, "classes": [...],
     "input": {"in_chans": C, "size": [H, W], "range": [0.0, 1.0]},  # pixels scaled to [0, 1]
     "info": {...}}                                                   # free-form (dataset, accuracy)

It contains only tensors and plain Python values, so it is loaded with
``torch.load(weights_only=True)`` (no arbitrary code runs on load).

Tests: ``tests/viz/test_viz_predict.py``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import atomic_write

__all__ = ["FORMAT", "ModelCard", "load_checkpoint", "save_checkpoint"]

FORMAT = "visattn-model"


@dataclass
class ModelCard:
    """What a checkpoint says about its model's input and output."""

    name: str
    kwargs: dict[str, Any]
    classes: list[str]
    in_chans: int
    input_size: tuple[int, int]
    info: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    name: str,
    kwargs: Mapping[str, Any],
    classes: Sequence[str],
    input_size: tuple[int, int],
    in_chans: int,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint of ``model`` = ``create_model(name, **kwargs)`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": 1,
        "model": name,
        "model_kwargs": dict(kwargs),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "classes": [str(c) for c in classes],
        "input": {
            "in_chans": int(in_chans),
            "size": [int(s) for s in input_size],
            "range": [0.0, 1.0],
        },
        "info": dict(info or {}),
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp), ".pt")
    return path


def load_checkpoint(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model of a checkpoint (eval mode) and return it with its :class:`ModelCard`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a visattn model checkpoint, or its weights do not fit.
    """
    from ..models import create_model  # models depend on viz's siblings only, import lazily

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint: cannot read {path} as a torch checkpoint ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"checkpoint: expected a visattn model checkpoint (format {FORMAT!r}), got "
            f"{type(payload).__name__} from {path}"
        )
    kwargs = dict(payload.get("model_kwargs", {}))
    for key in ("channels", "kernel_sizes"):  # tuples come back as lists
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    model = create_model(payload["model"], **kwargs)
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint: weights do not fit {payload['model']!r}: {exc}") from None
    inp = payload.get("input", {})
    card = ModelCard(
        name=payload["model"],
        kwargs=kwargs,
        classes=list(payload.get("classes", [])),
        in_chans=int(inp.get("in_chans", 1)),
        input_size=tuple(inp.get("size", (28, 28))),
        info=dict(payload.get("info", {})),
    )
    return model.eval(), card
