"""Reuse of the memory behind the fused CPU kernels' full-size outputs.

Every SE / CBAM block returns two full-size tensors per training step: y forward, dx backward.
On CPU, PyTorch allocates through ``malloc``, and glibc maps blocks of 32 MiB and more freshly
from the operating system each time; the kernel zeroes each new page on its first write. On a
small CPU that costs more than the fused kernel itself (docs/benchmarks.md: about 6-10 ms per
51 MB output on 2 cores, against 2.5 ms for writing into memory already mapped).

:class:`OutputPool` keeps the storages of those outputs once PyTorch no longer uses them and
hands them out again for the next output of the same size, the way the CUDA caching allocator
(or jemalloc / tcmalloc) does. A storage is free when nothing but the pool holds it
(``torch._C._storage_Use_Count`` is 1): the pool never hands out memory that a live tensor, a
view, an autograd graph or a NumPy array still refers to, nor memory moved to shared memory
(which another process may read). The outputs are ordinary tensors that
own a reference to their storage, so the memory stays valid as long as anybody holds them.

Limits: outputs under ``MIN_BYTES`` bypass the pool (malloc caches small blocks itself); the pool
manages at most ``VISATTN_CPU_POOL_MB`` MiB (default 2048, read when the pool is created; 0 turns
it off) in use and free together, evicting free storages of other sizes first when full.
:func:`empty_cache` returns the free storages to the system, :func:`pool_stats` reports. Thread
safe. Tests: ``tests/kernels/test_kernels_pool.py``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import torch

__all__ = ["MIN_BYTES", "OutputPool", "empty_cache", "output_pool", "pool_stats"]

MIN_BYTES = 4 * 2**20

_use_count: Callable[[int], int] | None = getattr(torch._C, "_storage_Use_Count", None)


class OutputPool:
    """Size-keyed cache of CPU storages for large kernel outputs.

    Args:
        limit_bytes: most bytes of storage (in use and free) the pool manages; 0 disables it.
        on_new: called with each new large storage, pooled or not (the CPU kernels use it to
            advise huge pages).
    """

    def __init__(
        self, limit_bytes: int, on_new: Callable[[torch.UntypedStorage], None] | None = None
    ) -> None:
        if limit_bytes < 0:
            raise ValueError(f"limit_bytes: expected >= 0, got {limit_bytes}")
        self.limit_bytes = int(limit_bytes)
        self._on_new = on_new
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):  # a child forked while another thread held the lock
            os.register_at_fork(after_in_child=self._new_lock)
        self._storages: list[torch.UntypedStorage] = []
        self.hits = 0
        self.misses = 0

    def _new_lock(self) -> None:
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.limit_bytes > 0 and _use_count is not None

    @staticmethod
    def _free(storage: torch.UntypedStorage) -> bool:
        # Memory moved to shared memory (``share_memory_``) may be read by another process:
        # it is never free for reuse (it leaves the pool with its last tensor).
        return _use_count(storage._cdata) == 1 and not storage.is_shared()  # type: ignore[misc]

    def empty(
        self,
        shape: torch.Size | tuple[int, ...],
        dtype: torch.dtype,
        memory_format: torch.memory_format,
    ) -> torch.Tensor:
        """An uninitialised CPU tensor like ``torch.empty(shape, dtype=dtype,
        memory_format=memory_format)``, on reused memory where the pool has a free storage of
        exactly its size."""
        numel = 1
        for size in shape:
            numel *= int(size)
        nbytes = numel * dtype.itemsize
        if nbytes < MIN_BYTES:
            return torch.empty(shape, dtype=dtype, memory_format=memory_format)
        like = torch.empty(shape, dtype=dtype, device="meta", memory_format=memory_format)
        out = self._take(nbytes, like) if self.enabled else None
        if out is None:  # off, or full of storages in use: a plain allocation
            out = torch.empty(shape, dtype=dtype, memory_format=memory_format)
            if self._on_new is not None:
                self._on_new(out.untyped_storage())
        return out

    def _take(self, nbytes: int, like: torch.Tensor) -> torch.Tensor | None:
        # The tensor is made under the lock: until it exists, the storage still looks free.
        def on(storage: torch.UntypedStorage) -> torch.Tensor:
            return torch.empty(0, dtype=like.dtype).set_(storage, 0, like.shape, like.stride())

        with self._lock:
            for st in self._storages:
                if st.nbytes() == nbytes and self._free(st):
                    self.hits += 1
                    return on(st)
            self.misses += 1
            # Forget shared-memory storages that nobody here holds any more.
            self._storages = [
                st
                for st in self._storages
                if not (st.is_shared() and _use_count(st._cdata) == 1)  # type: ignore[misc]
            ]
            total = sum(st.nbytes() for st in self._storages)
            if total + nbytes > self.limit_bytes:
                # Evict free storages (their memory goes back to the system) until it fits.
                keep = []
                for st in self._storages:
                    if total + nbytes > self.limit_bytes and self._free(st):
                        total -= st.nbytes()
                    else:
                        keep.append(st)
                self._storages = keep
                if total + nbytes > self.limit_bytes:
                    return None
            storage = torch.UntypedStorage(nbytes)
            if self._on_new is not None:
                self._on_new(storage)
            self._storages.append(storage)
            return on(storage)

    def empty_cache(self) -> int:
        """Forget every free storage (the memory goes back to the system); returns its bytes."""
        freed = 0
        with self._lock:
            keep = []
            for st in self._storages:
                if self._free(st):
                    freed += st.nbytes()
                else:
                    keep.append(st)
            self._storages = keep
        return freed

    def stats(self) -> dict[str, int]:
        """``{"held_bytes", "free_bytes", "storages", "hits", "misses", "limit_bytes"}``."""
        with self._lock:
            held = sum(st.nbytes() for st in self._storages)
            free = sum(st.nbytes() for st in self._storages if self._free(st))
            return {
                "held_bytes": held,
                "free_bytes": free,
                "storages": len(self._storages),
                "hits": self.hits,
                "misses": self.misses,
                "limit_bytes": self.limit_bytes,
            }


_POOL: list[OutputPool] = []


def _limit_from_env() -> int:
    raw = os.environ.get("VISATTN_CPU_POOL_MB", "2048").strip() or "2048"
    try:
        mb = int(raw)
    except ValueError:
        raise ValueError(
            f"VISATTN_CPU_POOL_MB: expected a whole number of MiB, got {raw!r}"
        ) from None
    if mb < 0:
        raise ValueError(f"VISATTN_CPU_POOL_MB: expected >= 0, got {mb}")
    return mb * 2**20


def output_pool(on_new: Callable[[torch.UntypedStorage], None] | None = None) -> OutputPool:
    """The process-wide pool of the CPU kernels (created at first use)."""
    if not _POOL:
        _POOL.append(OutputPool(_limit_from_env(), on_new))
    return _POOL[0]


def empty_cache() -> int:
    """Return the free storages of the CPU kernels' output pool to the system; returns bytes."""
    return _POOL[0].empty_cache() if _POOL else 0


def pool_stats() -> dict[str, int]:
    """Bytes held / free, storages, hits and misses of the CPU kernels' output pool."""
    if not _POOL:
        return {"held_bytes": 0, "free_bytes": 0, "storages": 0, "hits": 0, "misses": 0,
                "limit_bytes": _limit_from_env()}  # fmt: skip
    return _POOL[0].stats()
