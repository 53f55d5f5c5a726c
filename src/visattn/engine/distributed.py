"""Process-group helpers for DistributedDataParallel (Li et al., 2020, arXiv:2006.15704).

``torchrun --nproc-per-node N -m visattn train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` reads them and joins the
group with gloo on CPU or NCCL on CUDA. With ``WORLD_SIZE`` unset or 1 everything here is a
no-op, so the same training code runs in one process.

Tests: ``tests/engine/test_engine_distributed.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "all_reduce_sum", "barrier", "cleanup", "resolve_device", "setup"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(spec: str, info: DistInfo | None = None) -> torch.device:
    """The device of ``--device`` ``spec`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``); plain
    ``cuda`` in a distributed run is this process's GPU, ``cuda:<LOCAL_RANK>``."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device: {spec!r} requested but CUDA is not available")
        if spec == "cuda" and info is not None and info.enabled:
            spec = f"cuda:{info.local_rank}"
    return torch.device(spec)


def setup(device_kind: str) -> DistInfo:
    """Join the process group described by the torchrun environment (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, False)
    backend = "nccl" if device_kind == "cuda" else "gloo"
    if device_kind == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local, True)


def cleanup(info: DistInfo) -> None:
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(info: DistInfo, values: list[float], device: torch.device) -> list[float]:
    """Sum ``values`` over all processes (float64)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
