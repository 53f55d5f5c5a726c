"""Models for the engine: build one from the training options, measure it, load a trained one.

Tests: ``tests/engine/test_engine_trainer.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import create_model, list_models
from ..models.summary import forward_flops
from .checkpoint import CHECKPOINT_FORMAT, MODEL_FORMAT, CheckpointError, read_safetensors
from .options import TrainOptions
from .runs import latest_checkpoint

__all__ = ["build_model", "count_flops", "count_params", "load_model"]


def build_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int,
    input_size: int,
    attention: str | None = None,
    model_args: dict[str, Any] | None = None,
) -> nn.Module:
    """``visattn.models.create_model`` with the data's classes, channels and input size.

    ``input_size`` is passed to models that take it (the STN-paper nets) and dropped for the
    others (the ResNets are size-agnostic).
    """
    if name not in list_models():
        raise ValueError(f"--model: expected one of {', '.join(list_models())}, got {name!r}")
    kw = dict(model_args or {})
    common = {"num_classes": num_classes, "in_chans": in_chans, "attention": attention}
    if "input_size" not in kw:
        try:
            return create_model(name, input_size=input_size, **common, **kw)
        except TypeError as exc:
            if "input_size" not in str(exc):
                raise
    return create_model(name, **common, **kw)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, shape: tuple[int, ...], device: torch.device) -> int | None:
    """FLOPs of one forward pass of one image of ``shape`` (C, H, W), by
    :func:`visattn.models.summary.forward_flops`; None for a model the counter cannot trace."""
    try:
        return forward_flops(model, torch.zeros(1, *shape, device=device))
    except Exception:  # report None, do not fail the run
        return None


def load_model(
    path: str | os.PathLike, *, device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from a run folder, ``model.safetensors`` or a checkpoint file.

    Returns:
        (model in eval mode on ``device``, info) where info holds ``options`` (the training
        options), ``classes``, ``mean`` / ``std`` (input normalisation), ``in_chans``,
        ``input_size`` and ``distortion``.

    Raises:
        CheckpointError: unreadable, corrupt, truncated, foreign or pickled file.
    """
    path = Path(path)
    if path.is_dir():
        candidate = path / "model.safetensors"
        if not candidate.is_file():
            candidate = latest_checkpoint(path / "checkpoints") or candidate
        path = candidate
    tensors, state, fmt = read_safetensors(path, expect=(MODEL_FORMAT, CHECKPOINT_FORMAT))
    try:
        opts = TrainOptions.from_dict(state["options"])
        data = state["data"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: incomplete visattn metadata ({exc})") from None
    if fmt == CHECKPOINT_FORMAT:
        tensors = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    model = build_model(
        opts.model,
        num_classes=len(data["classes"]),
        in_chans=data["in_chans"],
        input_size=data["input_size"],
        attention=opts.attention,
        model_args=opts.model_args,
    )
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit model {opts.model!r}: {first}") from None
    info = dict(data)
    info["options"] = opts.to_dict()
    return model.to(device).eval(), info
