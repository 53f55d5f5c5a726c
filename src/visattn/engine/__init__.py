"""Training engine: options, input pipeline, loop, checkpoints and distributed helpers.

Trains the attention models of ``visattn.models`` (STN, arXiv:1506.02025; SE, arXiv:1709.01507;
CBAM, arXiv:1807.06521) with crash-safe, code-free checkpoints and exact resume.

Tests: ``tests/engine/``.
"""

from .checkpoint import CheckpointError, atomic_write_bytes, read_safetensors, write_safetensors
from .options import TrainOptions, lr_at, validate_options
from .pipeline import Pipeline, channel_stats, derive_seed, epoch_permutation, preprocess
from .syncbn import SyncBatchNorm, convert_sync_batchnorm
from .trainer import (
    TEST_DISTORTION_SEED,
    build_model,
    count_flops,
    count_params,
    evaluate,
    latest_checkpoint,
    load_model,
    train,
)

__all__ = [
    "TEST_DISTORTION_SEED",
    "CheckpointError",
    "Pipeline",
    "SyncBatchNorm",
    "TrainOptions",
    "atomic_write_bytes",
    "build_model",
    "channel_stats",
    "convert_sync_batchnorm",
    "count_flops",
    "count_params",
    "derive_seed",
    "epoch_permutation",
    "evaluate",
    "latest_checkpoint",
    "load_model",
    "lr_at",
    "preprocess",
    "read_safetensors",
    "train",
    "validate_options",
    "write_safetensors",
]
