"""Tests of visattn.engine.checkpoint: atomic writes, safetensors round trips, refused pickles."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from visattn.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    MODEL_FORMAT,
    CheckpointError,
    atomic_write_bytes,
    read_safetensors,
    write_safetensors,
)


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    path = atomic_write_bytes(tmp_path / "f.bin", b"old")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_round_trip_with_state(tmp_path):
    tensors = {
        "model.w": torch.randn(3, 5),
        "model.b": torch.randint(0, 9, (4,)),
        "rng.torch": torch.get_rng_state(),
        "view": torch.randn(6, 6)[:, 1],  # non-contiguous views are stored as copies
    }
    state = {"counters": {"epoch": 1, "step": 3}, "lr": 0.1, "nan": float("nan"), "none": None}
    path = write_safetensors(tmp_path / "c.safetensors", tensors, CHECKPOINT_FORMAT, state)
    back, back_state, fmt = read_safetensors(path, expect=CHECKPOINT_FORMAT)
    assert fmt == CHECKPOINT_FORMAT and back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert torch.equal(back[k], v)
    assert back_state["counters"] == state["counters"] and back_state["none"] is None
    with pytest.raises(CheckpointError, match="expected a visattn-model file"):
        read_safetensors(path, expect=MODEL_FORMAT)


def test_truncated_and_corrupt_files(tmp_path):
    path = write_safetensors(tmp_path / "c.safetensors", {"w": torch.randn(50)}, MODEL_FORMAT, {})
    data = path.read_bytes()
    for cut in (0, 5, 8, 40, len(data) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"truncated|corrupt"):
            read_safetensors(bad)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + bytes(40))
    with pytest.raises(CheckpointError, match="corrupt"):
        read_safetensors(garbage)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_safetensors(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="folder"):
        read_safetensors(tmp_path)


class _Payload:
    """Unpickling this object would create a file (it calls os.system)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("allow_pickle", [False, True])
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused(tmp_path, allow_pickle, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    obj = {"state_dict": {"w": torch.zeros(2)}, "x": _Payload(marker)}
    if writer == "torch.save":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(CheckpointError) as info:
        read_safetensors(path, allow_pickle=allow_pickle)
    message = str(info.value)
    assert ("execute code" in message) and "\n" not in message
    assert not marker.exists()


def test_plain_tensor_pickle_loads_only_when_allowed(tmp_path):
    path = tmp_path / "ok.pt"
    weights = {"w": torch.randn(3)}
    torch.save(weights, path)
    with pytest.raises(CheckpointError, match="does not unpickle"):
        read_safetensors(path)
    back, state, fmt = read_safetensors(path, allow_pickle=True)
    assert torch.equal(back["w"], weights["w"]) and state == {} and fmt == ""
