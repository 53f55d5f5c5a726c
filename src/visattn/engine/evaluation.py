"""``evaluate``: loss, accuracy and speed of a model on a data source; the one evaluation loop
of visattn (training, ``visattn eval``, ``visattn demo`` and ``visattn viz`` use it).

A data source is a :class:`~visattn.engine.pipeline.Pipeline` (images prepared batch by batch) or
a :class:`PreparedData` (images already prepared in memory); anything with ``len()``, ``device``
and ``batch(indices) -> (x, y)`` works.

Tests: ``tests/engine/test_engine_trainer.py``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed as vdist

__all__ = ["DataSource", "PreparedData", "amp_context", "evaluate"]


class DataSource(Protocol):
    device: torch.device

    def __len__(self) -> int: ...

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class PreparedData:
    """Images already prepared as the model expects them (normalised, distorted) and labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[indices], self.labels[indices]


def amp_context(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def evaluate(
    model: nn.Module,
    pipe: DataSource,
    *,
    batch_size: int = 256,
    info: vdist.DistInfo | None = None,
    amp_dtype: torch.dtype | None = None,
    logits: bool = False,
) -> dict[str, Any]:
    """Mean cross-entropy, accuracy and images/s of ``model`` on all images of ``pipe``.

    The model runs in eval mode without autograd; its mode is restored. In a distributed run
    each process evaluates every W-th image and the sums are all-reduced. With ``logits=True``
    the result also holds ``"logits"``: the float32 outputs (N, K) for this process's images, in
    order, on ``pipe``'s device.
    """
    info = info or vdist.DistInfo()
    was_training = model.training
    model.eval()
    indices = torch.arange(len(pipe))[info.rank :: info.world_size]
    loss_sum = correct = count = 0.0
    outputs: list[torch.Tensor] = []
    start = time.perf_counter()
    with torch.no_grad(), amp_context(pipe.device, amp_dtype):
        for begin in range(0, len(indices), batch_size):
            x, y = pipe.batch(indices[begin : begin + batch_size])
            out = model(x).float()
            loss_sum += float(F.cross_entropy(out, y, reduction="sum"))
            correct += float((out.argmax(1) == y).sum())
            count += len(y)
            if logits:
                outputs.append(out)
    elapsed = time.perf_counter() - start
    loss_sum, correct, count = vdist.all_reduce_sum(info, [loss_sum, correct, count], pipe.device)
    model.train(was_training)
    result: dict[str, Any] = {
        "loss": loss_sum / max(count, 1),
        "accuracy": correct / max(count, 1),
        "images": int(count),
        "images_per_s": count / elapsed if elapsed > 0 else float("nan"),
    }
    if logits:
        result["logits"] = torch.cat(outputs) if outputs else torch.empty(0, 0)
    return result
