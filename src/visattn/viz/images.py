"""Read image files for a model: any size, PNG / JPEG / ..., resized to the model's input.

Pixels are scaled to [0, 1] (the range the bundled data and the demo train on), converted to the
model's number of channels (``"L"`` for 1 channel, ``"RGB"`` for 3) and resized with bilinear
interpolation to (H, W). Unreadable files are returned as failures, never raised.

Tests: ``tests/viz/test_viz_predict.py``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["load_image", "load_images"]


def load_image(path: str | os.PathLike, in_chans: int, size: tuple[int, int]) -> torch.Tensor:
    """One file as a float tensor (in_chans, H, W) in [0, 1].

    Raises:
        ValueError: the file is missing, not an image, truncated or corrupt (message says which).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans: expected 1 or 3, got {in_chans}")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: truncated / corrupt data fails here
            mode = "L" if in_chans == 1 else "RGB"
            im = im.convert(mode).resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory") from None
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not a readable image file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{path}: corrupt or truncated image ({exc})") from None
    t = torch.from_numpy(arr)
    return t[None] if in_chans == 1 else t.permute(2, 0, 1).contiguous()


def load_images(
    paths: Sequence[str | os.PathLike], in_chans: int, size: tuple[int, int]
) -> tuple[torch.Tensor, list[str], list[tuple[str, str]]]:
    """Read many files: (images (N, C, H, W), paths read, [(path, error message)] of failures)."""
    ok, good, failed = [], [], []
    for p in paths:
        try:
            ok.append(load_image(p, in_chans, size))
            good.append(str(p))
        except ValueError as exc:
            failed.append((str(p), str(exc)))
    images = torch.stack(ok) if ok else torch.zeros(0, in_chans, *size)
    return images, good, failed
