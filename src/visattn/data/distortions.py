"""The distorted-MNIST benchmarks of the Spatial Transformer paper, as batched tensor ops.

Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015, arXiv:1506.02025, §4.1: rotated
(R), rotated-translated-scaled (RTS), projective (P), elastic (E) and translated-cluttered (TC)
versions of a single-channel set. The paper fixes the ranges named below; where it leaves a value
open (the size of the corner / control-point noise, the clutter patches) our choice is marked
(*) and documented in ``docs/data.md``. For an input of H x W = 28 x 28 pixels:

=============  ======  ==========================================================================
name           output  per-image parameters (all i.i.d. per image)
=============  ======  ==========================================================================
``rotated``    28      angle a ~ U(-90°, 90°)
``rts``        42      a ~ U(-45°, 45°), scale s ~ U(0.7, 1.2), centre t ~ U(-m, m)^2 with
                       m = (42 - 28 s) / 42 (normalised canvas units): the scaled digit's box
                       lies inside the 42 x 42 canvas
``projective`` 28      s ~ U(0.75, 1.0); corner k (±1, ±1) goes to s (±1, ±1) + e_k,
                       e_k ~ N(0, 0.1^2 I) (*) normalised units
``elastic``    28      s ~ U(0.75, 1.0) (*); thin-plate spline through the 4 x 4 control points
                       P_k whose source points are P_k / s + e_k, e_k ~ N(0, 0.1^2 I) (*)
``cluttered``  60      digit pasted at an integer offset ~ U{0..32}^2 of a 60 x 60 canvas; 6 (*)
                       clutter patches of 6 x 6 (*) pixels, each cut at a random place of a random
                       *other* image of the same set and pasted at a random place; pixel-wise max
=============  ======  ==========================================================================

Other input sizes scale the canvas (42/28, 60/28) and the patch size (6/28) with H.

Mechanics: ``sample_params`` draws every parameter from a ``torch.Generator`` seeded with
``seed`` (CPU, float64, in a fixed order), so the distortion of image i is a function of
(seed, i) only. ``apply_distortion`` turns a batch of parameters into sampling grids with
``visattn.functional`` (``rts_matrix``/``affine_grid``, ``projective_grid``, ``tps_grid``) and
samples with ``torch.nn.functional.grid_sample`` (bilinear, zero padding, align_corners=False),
which computes the same values as ``visattn.functional.bilinear_sample`` (eq. 5) without the
autograd bookkeeping; the grid maps output pixels to input pixels. Everything runs on the
images' device, a batch at a time.

Tests: ``tests/data/test_data_distortions.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._checks import check_choice, check_int, check_tensor
from ..functional.grids import (
    affine_grid,
    projective_grid,
    rts_matrix,
    tps_control_points,
    tps_grid,
)

__all__ = [
    "DISTORTIONS",
    "Distorter",
    "apply_distortion",
    "distort",
    "distorted_size",
    "sample_params",
]

DISTORTIONS = ("none", "rotated", "rts", "projective", "elastic", "cluttered")

CORNER_STD = 0.1
TPS_STD = 0.1
CLUTTER_PATCHES = 6


def distorted_size(name: str, size: int) -> int:
    """Side of the output image of distortion ``name`` for a ``size`` x ``size`` input."""
    check_choice(name, "distortion", DISTORTIONS)
    if name == "rts":
        return round(size * 42 / 28)
    if name == "cluttered":
        return round(size * 60 / 28)
    return size


def _patch_size(size: int) -> int:
    return max(2, round(size * 6 / 28))


def _uniform(gen: torch.Generator, n: int, low: float, high: float, *shape: int) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, *shape, generator=gen, dtype=torch.float64)


def sample_params(
    name: str,
    n: int,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    image_size: int = 28,
    pool_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Draw the parameters of ``n`` distortions (CPU tensors, one row per image).

    Args:
        name: one of ``DISTORTIONS``.
        n: number of images.
        seed / generator: source of randomness (exactly one; the same seed gives the same
            parameters).
        image_size: side H of the (square) input images.
        pool_size: for ``cluttered``, the number of images the clutter is cut from (default
            ``n``); image i never gets clutter from itself when the pool is its own set.

    Returns:
        dict of tensors; see the module docstring for their meaning.
    """
    check_choice(name, "distortion", DISTORTIONS)
    check_int(n, "n", minimum=0)
    check_int(image_size, "image_size", minimum=2)
    if (seed is None) == (generator is None):
        raise ValueError("seed / generator: expected exactly one of them")
    if generator is None:
        generator = torch.Generator().manual_seed(int(seed))
    gen = generator
    if name == "none":
        return {}
    if name == "rotated":
        return {"angle": _uniform(gen, n, -math.pi / 2, math.pi / 2)}
    if name == "rts":
        angle = _uniform(gen, n, -math.pi / 4, math.pi / 4)
        scale = _uniform(gen, n, 0.7, 1.2)
        canvas = distorted_size("rts", image_size)
        margin = ((canvas - image_size * scale) / canvas).clamp_min(0)
        centre = (2 * torch.rand(n, 2, generator=gen, dtype=torch.float64) - 1) * margin[:, None]
        return {"angle": angle, "scale": scale, "centre": centre}
    if name == "projective":
        scale = _uniform(gen, n, 0.75, 1.0)
        noise = CORNER_STD * torch.randn(n, 4, 2, generator=gen, dtype=torch.float64)
        return {"scale": scale, "corner_noise": noise}
    if name == "elastic":
        scale = _uniform(gen, n, 0.75, 1.0)
        noise = TPS_STD * torch.randn(n, 16, 2, generator=gen, dtype=torch.float64)
        return {"scale": scale, "control_noise": noise}
    # cluttered
    pool = n if pool_size is None else check_int(pool_size, "pool_size", minimum=1)
    canvas = distorted_size("cluttered", image_size)
    patch = _patch_size(image_size)
    offset = torch.randint(0, canvas - image_size + 1, (n, 2), generator=gen)
    if pool_size is None and n > 1:
        shift = torch.randint(1, n, (n, CLUTTER_PATCHES), generator=gen)
        source = (torch.arange(n)[:, None] + shift) % n
    else:
        source = torch.randint(0, pool, (n, CLUTTER_PATCHES), generator=gen)
    crop = torch.randint(0, image_size - patch + 1, (n, CLUTTER_PATCHES, 2), generator=gen)
    paste = torch.randint(0, canvas - patch + 1, (n, CLUTTER_PATCHES, 2), generator=gen)
    return {"offset": offset, "source": source, "crop": crop, "paste": paste}


def _sample(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(
        images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
    )


def _homography(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """H (N, 3, 3) with H(dst_k) = src_k for the 4 point pairs of (N, 4, 2) (DLT, h_33 = 1)."""
    x, y = dst[..., 0], dst[..., 1]
    u, v = src[..., 0], src[..., 1]
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack((x, y, one, zero, zero, zero, -u * x, -u * y), dim=-1)
    rows_v = torch.stack((zero, zero, zero, x, y, one, -v * x, -v * y), dim=-1)
    a = torch.cat((rows_u, rows_v), dim=1)  # (N, 8, 8)
    b = torch.cat((u, v), dim=1)  # (N, 8)
    h = torch.linalg.solve(a, b)
    return torch.cat((h, torch.ones_like(h[:, :1])), dim=1).reshape(-1, 3, 3)


def _paste(canvas: torch.Tensor, patch: torch.Tensor, top_left: torch.Tensor) -> torch.Tensor:
    """canvas[n, :, y:y+h, x:x+w] = max(canvas, patch) for each n; canvas (N, C, S, S)."""
    n, _, h, w = patch.shape
    batch = torch.arange(n, device=canvas.device)[:, None, None]
    rows = (top_left[:, 1, None] + torch.arange(h, device=canvas.device))[:, :, None]
    cols = (top_left[:, 0, None] + torch.arange(w, device=canvas.device))[:, None, :]
    c_last = canvas.permute(0, 2, 3, 1)  # a view: writes go to canvas
    region = c_last[batch, rows, cols]  # (N, h, w, C)
    c_last[batch, rows, cols] = torch.maximum(region, patch.permute(0, 2, 3, 1))
    return canvas


def apply_distortion(
    name: str,
    images: torch.Tensor,
    params: dict[str, torch.Tensor],
    *,
    clutter_source: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distort a batch with the parameters of :func:`sample_params` (rows matching ``images``).

    Args:
        name: one of ``DISTORTIONS``.
        images: float tensor (N, C, H, H), values in [0, 1] (background 0).
        params: the rows of ``sample_params`` for these images.
        clutter_source: for ``cluttered``: the pool images ``params['source']`` indexes,
            (P, C, H, H), uint8 (scaled by 1/255) or float.

    Returns:
        (N, C, S, S) with S = ``distorted_size(name, H)``, in ``images``' dtype and device.
    """
    check_choice(name, "distortion", DISTORTIONS)
    check_tensor(images, "images", ndim=4, layout="(N, C, H, W)")
    n, c, h, w = images.shape
    if h != w:
        raise ValueError(f"images: expected square images, got {h} x {w}")
    if name == "none":
        return images
    device = images.device
    p = {k: v.to(device) for k, v in params.items()}
    if name == "rotated":
        zeros = torch.zeros_like(p["angle"])
        theta = rts_matrix(torch.stack((p["angle"], torch.ones_like(zeros), zeros, zeros), -1))
        return _sample(images, affine_grid(theta.float(), (h, w)))
    if name == "rts":
        canvas = distorted_size("rts", h)
        # output (canvas) coordinate g -> digit coordinate (canvas / H) / s * R(-a) (g - t)
        zoom = (canvas / h) / p["scale"]
        a = -p["angle"]
        cos, sin = torch.cos(a) * zoom, torch.sin(a) * zoom
        lin = torch.stack((cos, -sin, sin, cos), -1).reshape(-1, 2, 2)
        trans = -(lin @ p["centre"][..., None])
        theta = torch.cat((lin, trans), dim=2)
        return _sample(images, affine_grid(theta.float(), (canvas, canvas)))
    if name == "projective":
        corners = torch.tensor(
            [[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64, device=device
        ).expand(n, 4, 2)
        dst = corners * p["scale"][:, None, None] + p["corner_noise"]
        hom = _homography(dst, corners)
        return _sample(images, projective_grid(hom.float(), (h, w)))
    if name == "elastic":
        target = tps_control_points(4, device=device, dtype=torch.float64)
        source = target / p["scale"][:, None, None] + p["control_noise"]
        grid = tps_grid(source.float(), (h, w), control_points_target=target.float())
        return _sample(images, grid)
    # cluttered
    if clutter_source is None:
        raise ValueError("clutter_source: the 'cluttered' distortion needs the pool images")
    size = distorted_size("cluttered", h)
    patch = _patch_size(h)
    out = images.new_zeros(n, c, size, size)
    scale = 1 / 255 if clutter_source.dtype == torch.uint8 else 1.0
    for k in range(p["source"].shape[1]):
        src = clutter_source[p["source"][:, k].cpu()].to(device=device)
        rows = (p["crop"][:, k, 1, None] + torch.arange(patch, device=device))[:, None, :, None]
        cols = (p["crop"][:, k, 0, None] + torch.arange(patch, device=device))[:, None, None, :]
        batch = torch.arange(n, device=device)[:, None, None, None]
        chans = torch.arange(c, device=device)[None, :, None, None]
        piece = src[batch, chans, rows, cols].to(images.dtype) * scale
        _paste(out, piece, p["paste"][:, k])
    _paste(out, images, p["offset"])
    return out


def distort(
    images: torch.Tensor, name: str, *, seed: int = 0, clutter_source: torch.Tensor | None = None
) -> torch.Tensor:
    """Distort ``images`` (N, C, H, H) in [0, 1]; clutter comes from the batch itself by default."""
    check_tensor(images, "images", ndim=4, layout="(N, C, H, W)")
    pool = clutter_source if clutter_source is not None else images
    params = sample_params(
        name,
        images.shape[0],
        seed=seed,
        image_size=images.shape[-1],
        pool_size=None if clutter_source is None else pool.shape[0],
    )
    return apply_distortion(name, images, params, clutter_source=pool)


class Distorter:
    """Per-image distortions of a whole dataset, fixed by (seed, image index).

    ``Distorter(name, images, seed)(batch, indices)`` distorts ``batch`` (the float images
    ``images[indices]``, on any device) with the parameters of those indices, so the result does
    not depend on how the dataset is batched or shuffled. Clutter is cut from ``images``.
    """

    def __init__(self, name: str, images: torch.Tensor, seed: int) -> None:
        check_choice(name, "distortion", DISTORTIONS)
        self.name = name
        self.images = images
        self.params = sample_params(name, images.shape[0], seed=seed, image_size=images.shape[-1])

    def output_size(self) -> int:
        return distorted_size(self.name, int(self.images.shape[-1]))

    def __call__(self, batch: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if self.name == "none":
            return batch
        rows = {k: v[indices.cpu()] for k, v in self.params.items()}
        return apply_distortion(self.name, batch, rows, clutter_source=self.images)
