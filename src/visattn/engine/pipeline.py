"""Input pipeline: uint8 images in memory -> distorted, augmented, normalised float batches.

A batch is ``images[indices]`` moved to the device, scaled to [0, 1], distorted with
``visattn.data.Distorter`` (parameters fixed by (seed, image index)), optionally augmented
(random shift by up to 4 pixels with zero padding and horizontal flip, drawn from a generator
seeded by (seed, epoch, step)), and normalised per channel, x' = (x - mean_c) / std_c, with the
mean and standard deviation of the undistorted training images.

Everything the pipeline draws is derived from integers with :func:`derive_seed` (BLAKE2b of the
values), so the data of optimiser step (epoch, step) is the same in an uninterrupted run, in a
resumed run and in every process of a distributed run.

Tests: ``tests/engine/test_engine_options.py`` (seeds, batches, normalisation),
``tests/engine/test_engine_resume.py`` (the same data after a resume).
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from ..data.datasets import ImageSet
from ..data.distortions import Distorter

__all__ = ["Pipeline", "channel_stats", "derive_seed", "epoch_permutation", "preprocess"]


def derive_seed(*values: int | str) -> int:
    """A 63-bit seed that depends on every value (order matters)."""
    digest = hashlib.blake2b(repr(values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the training images in ``epoch`` (a function of (seed, epoch) only)."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
    return torch.randperm(n, generator=gen)


def channel_stats(images: torch.Tensor, limit: int = 20000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W) scaled to [0, 1] (first ``limit``)."""
    x = images[:limit].to(torch.float64) / 255
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


class Pipeline:
    """Batches of one :class:`ImageSet` (see the module docstring)."""

    def __init__(
        self,
        data: ImageSet,
        *,
        mean: list[float],
        std: list[float],
        distortion: str = "none",
        distortion_seed: int = 0,
        augment: bool = False,
        device: torch.device | str = "cpu",
        channels_last: bool = False,
    ) -> None:
        self.data = data
        self.device = torch.device(device)
        self.distorter = Distorter(distortion, data.images, distortion_seed)
        self.augment = augment
        self.channels_last = channels_last
        c = data.images.shape[1]
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, c, 1, 1)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def input_size(self) -> int:
        return self.distorter.output_size()

    def _augment(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        n, _, h, w = x.shape
        gen = torch.Generator().manual_seed(seed)
        shift = torch.randint(-4, 5, (n, 2), generator=gen)
        flip = torch.rand(n, generator=gen) < 0.5
        padded = F.pad(x, (4, 4, 4, 4))
        rows = (4 + shift[:, 1, None] + torch.arange(h))[:, None, :, None].to(x.device)
        cols = (4 + shift[:, 0, None] + torch.arange(w))[:, None, None, :]
        cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols).to(x.device)
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        return padded[batch, chans, rows, cols]

    def batch(
        self, indices: torch.Tensor, *, augment_seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs float32 (B, C, S, S) on the device, labels int64 (B,)) for ``indices``."""
        x = self.data.images[indices].to(self.device, non_blocking=True).float().div_(255)
        x = self.distorter(x, indices)
        if self.augment and augment_seed is not None:
            x = self._augment(x, augment_seed)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self.data.labels[indices].to(self.device, non_blocking=True)
        return x, y


def preprocess(
    images: torch.Tensor, info: dict, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """Turn user images into the inputs a trained model expects (for predict / demo / viz).

    Args:
        images: (N, C, H, W) or (C, H, W), uint8 in [0, 255] or float in [0, 1].
        info: the ``info`` dict of ``visattn.engine.load_model`` (``in_chans``, ``input_size``,
            ``mean``, ``std``).

    Returns:
        float32 (N, in_chans, S, S) on ``device``: channels matched (RGB -> grey as the mean of
        the channels, grey -> RGB by repetition), resized to S = ``input_size`` (bilinear,
        antialiased) when the size differs, and normalised with the training statistics.
    """
    if not isinstance(images, torch.Tensor) or images.dim() not in (3, 4):
        raise ValueError(
            f"images: expected a tensor (N, C, H, W) or (C, H, W), got {type(images).__name__} "
            f"of shape {tuple(getattr(images, 'shape', ()))}"
        )
    x = images if images.dim() == 4 else images.unsqueeze(0)
    if device is not None:
        x = x.to(device)
    x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    want, have = int(info["in_chans"]), x.shape[1]
    if have != want:
        if want == 1:
            x = x.mean(dim=1, keepdim=True)
        elif have == 1:
            x = x.expand(-1, want, -1, -1)
        else:
            raise ValueError(f"images: expected 1 or {want} channels, got {have}")
    size = int(info["input_size"])
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    mean = torch.tensor(info["mean"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(info["std"], dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std
