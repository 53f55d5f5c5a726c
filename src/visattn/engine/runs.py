"""The run folder of ``visattn train``: where it is, what ``--resume`` finds in it, and the
metrics files written into it (see docs/training.md for the layout).

Tests: ``tests/engine/test_engine_resume.py``, ``tests/engine/test_engine_trainer.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text
from .options import TrainOptions, validate_options

__all__ = ["RESUMABLE_OVERRIDES", "absolute_data_paths", "default_out", "json_safe",
           "latest_checkpoint", "prepare_run", "write_metrics"]  # fmt: skip

#: Options that ``--resume`` may change; any other option must match the run's.
RESUMABLE_OVERRIDES = ("epochs", "quiet", "checkpoint_every", "keep_checkpoints", "device")


def default_out(opts: TrainOptions) -> Path:
    """``runs/<model>-<dataset>[-<distortion>]``: the run folder when ``--out`` is not given."""
    name = opts.dataset.split(":", 1)[0]
    parts = [opts.model, name] + ([opts.distortion] if opts.distortion != "none" else [])
    return Path("runs") / "-".join(parts)


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in ``folder`` (temporary files are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted(folder.glob("step-*.safetensors"))
    return found[-1] if found else None


def absolute_data_paths(opts: TrainOptions) -> TrainOptions:
    """Absolute data paths, so that ``visattn eval`` finds the data from any working directory."""
    if opts.dataset.startswith("folder:"):
        folder = Path(opts.dataset[len("folder:") :]).expanduser().resolve()
        opts = dataclasses.replace(opts, dataset=f"folder:{folder}")
    if opts.data_root:
        opts = dataclasses.replace(opts, data_root=str(Path(opts.data_root).expanduser().resolve()))
    return opts


def prepare_run(opts: TrainOptions, explicit: set[str]) -> tuple[TrainOptions, Path, Path | None]:
    """Resolve the run folder and, for ``--resume``, the saved options and latest checkpoint.

    Returns (options of the run, run folder, checkpoint to resume from or None). A new run needs
    an absent or empty folder; a resumed run keeps its saved options except
    :data:`RESUMABLE_OVERRIDES`, and an option in ``explicit`` that differs is an error.
    """
    out = Path(opts.out) if opts.out else default_out(opts)
    if not opts.resume:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ValueError(
                f"--out: {out} already exists and is not empty; pass --resume to continue that "
                "run or choose another --out"
            )
        return opts, out, None
    options_file = out / "options.json"
    if not options_file.is_file():
        raise ValueError(f"--resume: {out} holds no run (no options.json); nothing to resume")
    try:
        saved = json.loads(options_file.read_text())
        saved_opts = TrainOptions.from_dict(saved)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"--resume: cannot read {options_file} ({exc})") from None
    merged = saved_opts.to_dict()
    for name in explicit:
        if name in ("resume", "out", "config"):
            continue
        value = getattr(opts, name)
        if name in RESUMABLE_OVERRIDES:
            merged[name] = value
        elif value != merged.get(name):
            raise ValueError(
                f"--{name.replace('_', '-')}: the run in {out} was started with "
                f"{merged.get(name)!r}, got {value!r} (a resumed run keeps its options; only "
                f"{', '.join('--' + n.replace('_', '-') for n in RESUMABLE_OVERRIDES)} may change)"
            )
    merged.update(resume=True, out=str(out))
    # killed before its first checkpoint: the run starts again from step 0 with its options,
    # which gives the same result as a run never interrupted
    ckpt = latest_checkpoint(out / "checkpoints")
    return validate_options(TrainOptions.from_dict(merged)), out, ckpt


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (strict JSON has no NaN / inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl`` (one record per epoch) and ``metrics.csv`` (the same as a table)."""
    lines = "".join(json.dumps(json_safe(r)) + "\n" for r in history)
    atomic_write_text(out / "metrics.jsonl", lines)
    keys: list[str] = []
    for record in history:
        keys += [k for k in record if k not in keys]
    rows = [",".join(keys)]
    for record in history:
        rows.append(",".join("" if record.get(k) is None else str(record.get(k)) for k in keys))
    atomic_write_text(out / "metrics.csv", "\n".join(rows) + "\n")
