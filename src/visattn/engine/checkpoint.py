"""Crash-safe checkpoints and weight files that load without executing code.

A checkpoint is ONE safetensors file (``checkpoints/step-00000120.safetensors``):

- tensors: ``model.<name>`` (the state dict, buffers included), ``optimizer.<i>.<key>`` (the
  per-parameter optimiser state, e.g. momentum buffers, Adam moments and step counts),
  ``rng.torch`` (CPU generator state) and, on CUDA, ``rng.cuda`` (the run device's generator);
- metadata (strings): ``format = visattn-checkpoint``, ``version`` and ``state``, a JSON document
  with the epoch / step counters, the optimiser's parameter groups and non-tensor state, the
  learning-rate schedule, the running training sums, the metrics history and the run's options.

The final weights ``model.safetensors`` hold the state dict with ``format = visattn-model`` and a
JSON ``state`` (options, classes, input shape, normalisation) so ``visattn eval`` and
``visattn.engine.load_model`` need nothing else.

Writes are atomic: the bytes go to a temporary file in the destination folder, are flushed and
fsync'ed, renamed over the destination with ``os.replace`` and the folder is fsync'ed. A process
killed at any moment leaves either the old file or the new one, never a torn one.

Neither format is a pickle: safetensors is a JSON header plus raw tensor bytes, and the rest is
JSON. A pickle (``torch.save`` output) is refused by default; ``allow_pickle=True`` loads it only
through ``torch.load(weights_only=True)``, whose restricted unpickler refuses code-executing
payloads, and we turn that refusal into a :class:`CheckpointError`.

Tests: ``tests/engine/test_engine_checkpoint.py``.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKPOINT_FORMAT", "MODEL_FORMAT", "CheckpointError", "atomic_write_bytes",
           "atomic_write_text", "optimizer_from_tensors", "optimizer_to_tensors",
           "read_safetensors", "write_safetensors"]  # fmt: skip

CHECKPOINT_FORMAT = "visattn-checkpoint"
MODEL_FORMAT = "visattn-model"
_VERSION = "1"


class CheckpointError(ValueError):
    """A checkpoint or weight file is missing, truncated, corrupt, foreign or unsafe."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename, fsync folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_safetensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], fmt: str, state: dict[str, Any]
) -> Path:
    """Atomically write ``tensors`` with metadata ``format=fmt`` and JSON ``state``."""
    from safetensors.torch import save

    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    meta = {"format": fmt, "version": _VERSION, "state": json.dumps(state, allow_nan=True)}
    return atomic_write_bytes(path, save(plain, metadata=meta))


def _looks_like_pickle(head: bytes) -> str | None:
    if head[:4] == b"PK\x03\x04":
        return "a zip archive (torch.save format, which contains a pickle)"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return f"a pickle (protocol {head[1]})"
    return None


def _load_pickle_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused: the pickle wants to load objects other than tensors "
            f"(loading it could execute code): {first}"
        ) from None
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot load ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(f"{path}: expected a mapping of names to tensors")
    return dict(obj), {}


def read_safetensors(
    path: str | os.PathLike,
    *,
    expect: str | tuple[str, ...] | None = None,
    allow_pickle: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """Load a safetensors file: (tensors on CPU, decoded JSON ``state``, format string).

    Args:
        path: the file.
        expect: accepted ``format`` metadata value(s); None accepts any safetensors file
            (format ``""`` when the file has no visattn metadata).
        allow_pickle: load ``torch.save`` files through ``torch.load(weights_only=True)``
            (tensors only; anything that would run code is refused).

    Raises:
        CheckpointError: missing, truncated, corrupt, foreign or unsafe file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, expected a .safetensors file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    kind = _looks_like_pickle(data[:8])
    if kind is not None:
        if not allow_pickle:
            raise CheckpointError(
                f"{path}: is {kind}; visattn does not unpickle checkpoints because unpickling "
                "can execute code (expected a .safetensors file)"
            )
        tensors, state = _load_pickle_weights(path)
        return tensors, state, ""
    if len(data) < 8:
        raise CheckpointError(f"{path}: truncated ({len(data)} bytes), not a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise CheckpointError(
            f"{path}: truncated or not a safetensors file (header of {header_len} bytes "
            f"announced, {len(data) - 8} present)"
        )
    try:
        header = json.loads(data[8 : 8 + header_len])
        tensors = load(data)
    except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({exc})") from None
    meta = header.get("__metadata__") or {}
    fmt = meta.get("format", "")
    if expect is not None:
        allowed = (expect,) if isinstance(expect, str) else expect
        if fmt not in allowed:
            raise CheckpointError(
                f"{path}: expected a {' or '.join(allowed)} file, got "
                f"{fmt or 'a safetensors file without visattn metadata'}"
            )
    try:
        state = json.loads(meta["state"]) if "state" in meta else {}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt metadata ({exc})") from None
    return tensors, state, fmt


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimiser's state as checkpoint tensors ``optimizer.<i>.<key>`` and a JSON part
    (parameter groups and non-tensor per-parameter values)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], saved: dict
) -> None:
    """Load what :func:`optimizer_to_tensors` wrote into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in saved["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
