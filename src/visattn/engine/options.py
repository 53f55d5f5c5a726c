"""Options of a training run, their defaults and their checks.

One dataclass, :class:`TrainOptions`, is the single source of truth: the command line builds its
``train`` options (names, types, defaults shown in ``--help``) from it, ``--config FILE`` files use
the same keys, and the resolved options are written to ``options.json`` in the run folder and
into every checkpoint.

Learning-rate schedules are pure functions of the global step (so a resumed run continues them
exactly): ``cosine`` lr_t = lr * (1 + cos(pi * t / T)) / 2, ``step`` lr_t = lr * 0.1^k with k the
number of milestones (50 % and 75 % of T) passed, ``constant`` lr_t = lr; T = total steps.

Tests: ``tests/engine/test_engine_options.py``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OPTIMIZERS", "SCHEDULES", "TrainOptions", "lr_at", "option_help",
           "validate_options"]  # fmt: skip

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")


@dataclass
class TrainOptions:
    """Everything that defines a training run (see ``option_help`` for each meaning)."""

    model: str = "cnn"
    attention: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    dataset: str = "fashion-mnist-small"
    distortion: str = "none"
    data_root: str | None = None
    image_size: int = 32
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adamw"
    momentum: float = 0.9
    schedule: str = "cosine"
    weight_decay: float = 1e-4
    augment: bool = False
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    seed: int = 0
    train_subset: int = 0
    val_subset: int = 0
    test_subset: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    out: str | None = None
    resume: bool = False
    device: str = "auto"
    quiet: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainOptions:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"options: unknown keys {unknown}; valid keys: {sorted(names)}")
        return cls(**values)


_HELP = {
    "model": "model name (see `visattn.models.list_models()`)",
    "attention": "attention module inserted by the model: one of {attention} (None: the model's own)",
    "model_args": "extra model keyword arguments, KEY=VALUE (VALUE parsed as JSON if it can be)",
    "dataset": "fashion-mnist-small (bundled), fashion-mnist, mnist, kmnist, cifar10 or folder:PATH",
    "distortion": "STN-paper distortion of single-channel data: none, rotated, rts, projective, "
    "elastic, cluttered",
    "data_root": "folder with one sub-folder per dataset (else $VISATTN_DATA, the user cache, "
    "/usr/share/datasets)",
    "image_size": "side in pixels that folder:PATH images are resized to",
    "epochs": "number of passes over the training set",
    "batch_size": "global batch size (split evenly over processes)",
    "lr": "peak learning rate",
    "optimizer": "sgd (with momentum, Nesterov off) or adamw",
    "momentum": "SGD momentum",
    "schedule": "learning-rate schedule over all steps: cosine, step (x0.1 at 50% and 75%), "
    "constant",
    "weight_decay": "weight decay (decoupled for adamw)",
    "augment": "random 4-pixel-shift crops and horizontal flips (CIFAR / folder data)",
    "amp": "mixed precision (bf16 where supported, else fp16 with loss scaling)",
    "channels_last": "channels_last memory format for model and inputs",
    "compile": "torch.compile the model",
    "sync_bn": "several processes (torchrun): BatchNorm statistics over the whole global batch, "
    "as in one process, instead of each process's shard",
    "seed": "seed of data order, distortions and initialisation",
    "train_subset": "use only the first N training images (0: all)",
    "val_subset": "hold out the last N training images for per-epoch validation (0: none)",
    "test_subset": "evaluate on the first N test images only (0: all)",
    "checkpoint_every": "also checkpoint every N optimiser steps (0: only at epoch ends)",
    "keep_checkpoints": "number of most recent checkpoints kept",
    "out": "run folder (default: runs/MODEL-DATASET[-DISTORTION])",
    "resume": "continue the run in --out from its latest checkpoint",
    "device": "auto, cpu, cuda or cuda:N",
    "quiet": "no progress bars",
}


def option_help(name: str) -> str:
    """The ``--help`` text of option ``name``; the attention names come from the registry."""
    if name == "attention":
        from ..layers.registry import list_attention

        return _HELP[name].format(attention=", ".join(list_attention()))
    return _HELP[name]


def _fail(name: str, expected: str, got: Any) -> None:
    raise ValueError(f"--{name.replace('_', '-')}: expected {expected}, got {got!r}")


def validate_options(opts: TrainOptions) -> TrainOptions:
    """Check every value that can be checked without loading data or models."""
    from ..data.distortions import DISTORTIONS

    for name in ("epochs", "train_subset", "val_subset", "test_subset", "checkpoint_every"):
        value = getattr(opts, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            _fail(name, "an integer >= 0", value)
    for name in ("batch_size", "image_size", "keep_checkpoints"):
        value = getattr(opts, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            _fail(name, "an integer >= 1", value)
    if isinstance(opts.seed, bool) or not isinstance(opts.seed, int):
        _fail("seed", "an integer", opts.seed)
    for name, low_ok in (("lr", False), ("weight_decay", True), ("momentum", True)):
        value = getattr(opts, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            _fail(name, "a finite number", value)
        if value < 0 or (value == 0 and not low_ok):
            _fail(name, "a number > 0" if not low_ok else "a number >= 0", value)
    if opts.momentum >= 1:
        _fail("momentum", "a number in [0, 1)", opts.momentum)
    for name, choices in (
        ("optimizer", OPTIMIZERS),
        ("schedule", SCHEDULES),
        ("distortion", DISTORTIONS),
    ):
        if getattr(opts, name) not in choices:
            _fail(name, f"one of {', '.join(choices)}", getattr(opts, name))
    if not isinstance(opts.model_args, dict):
        _fail("model_args", "a mapping of keyword arguments", opts.model_args)
    if not isinstance(opts.device, str) or not (
        opts.device in ("auto", "cpu", "cuda") or opts.device.startswith("cuda:")
    ):
        _fail("device", "auto, cpu, cuda or cuda:N", opts.device)
    return opts


def lr_at(schedule: str, base_lr: float, step: int, total_steps: int) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of ``total_steps``."""
    if schedule == "constant" or total_steps <= 0:
        return base_lr
    progress = min(step, total_steps) / total_steps
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return base_lr * 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    raise ValueError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {schedule!r}")
