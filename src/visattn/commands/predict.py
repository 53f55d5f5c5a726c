"""``visattn predict``: classify image files with a trained checkpoint, write a CSV.

``visattn predict --checkpoint PATH IMAGES... [--out predictions.csv] [--overlay DIR]``

``--checkpoint`` is anything ``visattn.engine.load_model`` reads: a run folder of ``visattn train``
(or of ``visattn demo``: ``runs/demo/models/...``), its ``model.safetensors`` or a training
checkpoint. Every file (PNG, JPEG, ... of any size) is converted to the model's channels, resized
to its input size (see ``visattn.viz.images``) and normalised with the training mean and std. The CSV has one row per file, in the given order::

    file,status,class_index,class_name,probability,top3,error

``status`` is ``ok`` or ``error`` (with the reason in ``error``); unreadable or corrupt files are
also reported on stderr and skipped, the others processed. Exit code: 0 when every file was
classified, 1 when at least one failed or the command could not run (an unreadable checkpoint:
one line on stderr, no CSV written), 2 for a command-line syntax error.

``--overlay DIR`` saves one PNG per image showing the model's attention: for a model with a
spatial transformer its sampling grid and output (Jaderberg et al., arXiv:1506.02025); with CBAM
(Woo et al., arXiv:1807.06521) the spatial attention M_s of its first CBAM layer; otherwise
Grad-CAM (Selvaraju et al., arXiv:1610.02391) of the predicted class.

Tests: ``tests/viz/test_viz_predict.py``.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..engine import load_model
from ..viz._io import atomic_write
from ..viz.capture import capture
from ..viz.figures import plot_overlay, plot_stn
from ..viz.gradcam import grad_cam
from ..viz.images import load_images

__all__ = ["COLUMNS", "add_arguments", "add_parser", "normalise", "predict_files", "run"]

COLUMNS = ("file", "status", "class_index", "class_name", "probability", "top3", "error")


def normalise(images: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
    """x' = (x - mean_c) / std_c with the training statistics of a checkpoint's ``info``."""
    c = images.shape[1]
    mean = torch.tensor(info.get("mean") or [0.0] * c, dtype=images.dtype).view(1, c, 1, 1)
    std = torch.tensor(info.get("std") or [1.0] * c, dtype=images.dtype).view(1, c, 1, 1)
    return (images - mean) / std


def predict_files(
    checkpoint: str | Path,
    files: Sequence[str | Path],
    *,
    out: str | Path = "predictions.csv",
    overlay: str | Path | None = None,
    batch_size: int = 64,
    err=None,
) -> tuple[list[dict[str, Any]], int]:
    """Classify ``files``; write the CSV ``out`` (and overlays); return (rows, number failed)."""
    err = err or sys.stderr
    if not files:
        raise ValueError("images: expected at least one image file, got none")
    model, info = load_model(checkpoint)
    size = int(info["input_size"])
    images, good, failed = load_images(files, int(info["in_chans"]), (size, size))
    images = normalise(images, info)
    for _, msg in failed:
        print(f"visattn predict: skipped {msg}", file=err)
    probs = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            probs.append(model(images[i : i + batch_size]).softmax(1))
    classes = list(info.get("classes") or [])
    probs_t = torch.cat(probs) if probs else torch.zeros(0, len(classes) or 1)
    names = classes or [str(i) for i in range(probs_t.shape[1])]
    result: dict[str, dict[str, Any]] = {}
    for path, p in zip(good, probs_t, strict=True):
        top = p.topk(min(3, p.numel()))
        result[path] = {
            "file": path, "status": "ok", "class_index": int(top.indices[0]),
            "class_name": names[int(top.indices[0])], "probability": f"{float(top.values[0]):.4f}",
            "top3": ";".join(f"{names[int(i)]}:{float(v):.3f}"
                             for v, i in zip(top.values, top.indices, strict=True)),
            "error": "",
        }  # fmt: skip
    for path, msg in failed:
        result[path] = {"file": path, "status": "error", "error": msg}
    rows = [result[str(f)] for f in files]

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out, lambda tmp: Path(tmp).write_text(buf.getvalue(), encoding="utf-8"), ".csv")
    if overlay is not None and len(good):
        _overlays(model, images, good, probs_t, names, Path(overlay))
    return rows, len(failed)


def _overlays(model, images, paths, probs, names, folder: Path) -> None:
    maps = capture(model, images)
    stems: dict[str, int] = {}
    for i, path in enumerate(paths):
        stem = Path(path).stem
        stems[stem] = stems.get(stem, 0) + 1
        name = stem if stems[stem] == 1 else f"{stem}-{stems[stem]}"
        pred = int(probs[i].argmax())
        title = f"{Path(path).name}: {names[pred]} (p={float(probs[i, pred]):.2f})"
        target = folder / f"{name}.png"
        if maps.grid:
            layer = next(iter(maps.grid))
            plot_stn(maps.stn_input[layer][i : i + 1], maps.stn_output[layer][i : i + 1],
                     maps.grid[layer][i : i + 1], target, title=title)  # fmt: skip
        elif maps.spatial:
            layer = next(iter(maps.spatial))
            plot_overlay(images[i], maps.spatial[layer][i, 0], target, title=title,
                         label=f"CBAM spatial attention ({layer})")  # fmt: skip
        else:
            cam, _ = grad_cam(model, images[i : i + 1], target=pred)
            plot_overlay(images[i], cam[0], target, title=title, label="Grad-CAM (0 to 1)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``visattn predict``."""
    parser.add_argument("--checkpoint", required=True,
                        help="run folder, model.safetensors or a training checkpoint")  # fmt: skip
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...; any size)")
    parser.add_argument("--out", default="predictions.csv", help="CSV file to write")
    parser.add_argument("--overlay", metavar="DIR", help="also save attention overlays here")
    parser.add_argument("--batch-size", type=int, default=64)


def run(args: argparse.Namespace) -> int:
    """Entry point of the ``predict`` sub-command; returns the exit code."""
    rows, failed = predict_files(
        args.checkpoint, args.images, out=args.out, overlay=args.overlay,
        batch_size=args.batch_size,
    )  # fmt: skip
    print(f"{len(rows) - failed} of {len(rows)} images classified; predictions in {args.out}")
    return 1 if failed else 0


DESCRIPTION = """Classify image files (PNG, JPEG, ...; any size) with a trained model and write a CSV
(file,status,class_index,class_name,probability,top3,error). Unreadable files are reported in the
CSV and on stderr and skipped. Exit status 0 if every file was classified, 1 otherwise.

example:
  visattn predict --checkpoint runs/demo/models/rts-st-cnn-affine a.png b.jpg --overlay overlays/"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``visattn predict`` (see ``visattn.cli``)."""
    from ..cli import add_command

    help = "classify image files with a trained model; write a CSV"
    return add_command(subparsers, "predict", help, DESCRIPTION, arguments=add_arguments)
