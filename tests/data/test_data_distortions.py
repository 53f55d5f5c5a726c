"""Tests of visattn.data.distortions (STN paper, arXiv:1506.02025, §4.1)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from visattn.data import (
    DISTORTIONS,
    Distorter,
    apply_distortion,
    distort,
    distorted_size,
    sample_params,
)

SIZES = {"none": 28, "rotated": 28, "rts": 42, "projective": 28, "elastic": 28, "cluttered": 60}


def _images(n=5, size=28, channels=1):
    x = torch.zeros(n, channels, size, size)
    x[:, :, 6:22, 9:19] = torch.rand(n, channels, 16, 10) * 0.5 + 0.5
    return x


@pytest.mark.parametrize("name", DISTORTIONS)
def test_shapes_range_and_determinism(name):
    x = _images(n=int(torch.randint(1, 6, ()).item()))
    seed = int(torch.randint(0, 2**31, ()).item())
    a = distort(x, name, seed=seed)
    assert a.shape == (x.shape[0], 1, SIZES[name], SIZES[name]) and a.dtype == x.dtype
    assert distorted_size(name, 28) == SIZES[name]
    assert float(a.min()) >= 0 and float(a.max()) <= 1 + 1e-6
    assert torch.equal(a, distort(x, name, seed=seed))
    if name != "none" and x.shape[0] > 1:
        assert not torch.equal(a, distort(x, name, seed=seed + 1))


@pytest.mark.parametrize("name", DISTORTIONS)
def test_per_image_parameters_do_not_depend_on_batching(name):
    pool = (torch.rand(9, 1, 28, 28) * 255).to(torch.uint8)
    d = Distorter(name, pool, seed=3)
    full = d(pool.float() / 255, torch.arange(9))
    idx = torch.tensor([7, 2, 2])
    part = d(pool[idx].float() / 255, idx)
    # The same parameters per image give the same pixels up to float32 rounding of the batched
    # grid arithmetic (measured: at most 3.8e-6 over 40 seeds); other parameters move pixels by
    # whole fractions of their range.
    torch.testing.assert_close(part, full[idx], rtol=0, atol=2e-5)


def test_multichannel_and_odd_size():
    x = _images(n=2, size=33, channels=3)
    for name in DISTORTIONS:
        out = distort(x, name, seed=1)
        assert out.shape[:2] == (2, 3) and out.shape[-1] == distorted_size(name, 33)


def test_rotation_by_quarter_turn_is_rot90():
    x = torch.rand(3, 2, 6, 6)
    angle = torch.full((3,), math.pi / 2, dtype=torch.float64)
    out = apply_distortion("rotated", x, {"angle": angle})
    torch.testing.assert_close(out, torch.rot90(x, 1, (2, 3)), rtol=0, atol=1e-5)


def test_rts_identity_is_centred_padding():
    x = torch.rand(2, 1, 28, 28)
    params = {
        "angle": torch.zeros(2, dtype=torch.float64),
        "scale": torch.ones(2, dtype=torch.float64),
        "centre": torch.zeros(2, 2, dtype=torch.float64),
    }
    out = apply_distortion("rts", x, params)
    torch.testing.assert_close(out, F.pad(x, (7, 7, 7, 7)), rtol=0, atol=1e-5)


def test_rts_parameter_ranges():
    p = sample_params("rts", 2000, seed=0)
    assert p["angle"].abs().max() <= math.pi / 4 and p["angle"].abs().max() > 0.95 * math.pi / 4
    assert p["scale"].min() >= 0.7 and p["scale"].max() <= 1.2
    margin = (42 - 28 * p["scale"]) / 42
    assert (p["centre"].abs() <= margin[:, None] + 1e-12).all()


@pytest.mark.parametrize(
    ("name", "key"), [("projective", "corner_noise"), ("elastic", "control_noise")]
)
def test_zero_noise_unit_scale_is_identity(name, key):
    x = torch.rand(2, 1, 28, 28)
    params = sample_params(name, 2, seed=0)
    params["scale"] = torch.ones(2, dtype=torch.float64)
    params[key] = torch.zeros_like(params[key])
    torch.testing.assert_close(apply_distortion(name, x, params), x, rtol=0, atol=1e-4)


def test_projective_maps_corners():
    """The homography maps the perturbed output corners to the input corners."""
    from visattn.data.distortions import _homography

    src = torch.tensor([[-1.0, -1], [1, -1], [1, 1], [-1, 1]], dtype=torch.float64)[None]
    dst = src * 0.8 + 0.05 * torch.randn(1, 4, 2, dtype=torch.float64)
    h = _homography(dst, src)
    mapped = torch.cat((dst, torch.ones(1, 4, 1, dtype=torch.float64)), -1) @ h[0].T
    torch.testing.assert_close(mapped[..., :2] / mapped[..., 2:], src)


def test_cluttered_places_digit_and_clutter_from_other_images():
    x = torch.rand(4, 1, 28, 28)
    params = sample_params("cluttered", 4, seed=5)
    assert (params["source"] != torch.arange(4)[:, None]).all()
    blank = apply_distortion("cluttered", x, params, clutter_source=torch.zeros(4, 1, 28, 28))
    for i in range(4):
        ox, oy = params["offset"][i].tolist()
        torch.testing.assert_close(blank[i, :, oy : oy + 28, ox : ox + 28], x[i])
        assert blank[i].sum() == pytest.approx(float(x[i].sum()), rel=1e-5)
    full = apply_distortion("cluttered", x, params, clutter_source=x)
    assert (full >= blank).all() and (full > blank).any()
    with pytest.raises(ValueError, match="clutter_source"):
        apply_distortion("cluttered", x, params)


def test_bad_arguments():
    with pytest.raises(ValueError, match="distortion: expected one of"):
        distort(_images(), "shear")
    with pytest.raises(ValueError, match="exactly one"):
        sample_params("rts", 2)
    with pytest.raises(ValueError, match="square"):
        distort(torch.rand(1, 1, 8, 9), "rotated")
    with pytest.raises(TypeError, match="images"):
        distort([1, 2], "rotated")
