"""Training engine: options, input pipeline, loop, evaluation, checkpoints and distributed helpers.

Modules: ``options`` (``TrainOptions``, schedules), ``pipeline`` (batches), ``trainer``
(``Trainer`` / ``train``), ``evaluation`` (``evaluate``), ``model_io`` (build, measure and load
models), ``runs`` (the run folder, ``--resume``, metrics files), ``checkpoint`` (safetensors
files), ``distributed`` and ``syncbn``.

Trains the attention models of ``visattn.models`` (STN, arXiv:1506.02025; SE, arXiv:1709.01507;
CBAM, arXiv:1807.06521) with crash-safe, code-free checkpoints and exact resume.

Tests: ``tests/engine/``.
"""

from .checkpoint import CheckpointError, atomic_write_bytes, read_safetensors, write_safetensors
from .distributed import resolve_device
from .evaluation import PreparedData, evaluate
from .model_io import build_model, count_flops, count_params, load_model
from .options import TrainOptions, lr_at, validate_options
from .pipeline import Pipeline, channel_stats, derive_seed, epoch_permutation, preprocess
from .runs import latest_checkpoint
from .syncbn import SyncBatchNorm, convert_sync_batchnorm
from .trainer import TEST_DISTORTION_SEED, Trainer, train

__all__ = [
    "TEST_DISTORTION_SEED",
    "CheckpointError",
    "Pipeline",
    "PreparedData",
    "SyncBatchNorm",
    "TrainOptions",
    "Trainer",
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
    "resolve_device",
    "train",
    "validate_options",
    "write_safetensors",
]
