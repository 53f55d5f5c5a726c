"""Tests of the grid generators (STN paper §3.2, eq. 1; src/visattn/functional/grids.py).

Groups: smoke, exception, cardinality, feature (against F.affine_grid and NumPy formulas written
here), gradcheck (theta through every family and the sampler), identity, compile.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from visattn.functional import (
    TRANSFORMS,
    affine_grid,
    bilinear_sample,
    identity_params,
    num_params,
    params_to_grid,
    params_to_matrix,
    projective_grid,
    tps_control_points,
    tps_grid,
)


def target_points(h: int, w: int, align_corners: bool) -> np.ndarray:
    """Normalised (x^t, y^t) of every output pixel, (H, W, 2), written independently."""

    def lin(n):
        if align_corners:
            return np.linspace(-1, 1, n) if n > 1 else np.zeros(1)
        return (np.arange(n) + 0.5) * 2 / n - 1

    xs, ys = np.meshgrid(lin(w), lin(h))
    return np.stack((xs, ys), -1)


def random_params(transform: str, n: int, dtype=torch.float64) -> torch.Tensor:
    """Identity plus a moderate random perturbation (keeps projective denominators away from 0)."""
    base = identity_params(transform, dtype=dtype)
    scale = 0.05 if transform == "projective" else 0.2
    return base + scale * torch.randn(n, base.numel(), dtype=dtype)


class TestSmoke:
    @pytest.mark.parametrize("transform", TRANSFORMS)
    def test_shapes(self, transform):
        p = random_params(transform, 3, torch.float32)
        assert params_to_grid(transform, p, (5, 7)).shape == (3, 5, 7, 2)
        assert p.shape[1] == num_params(transform)

    def test_size_as_nchw(self):
        theta = torch.randn(2, 2, 3)
        assert affine_grid(theta, (2, 3, 4, 6)).shape == (2, 4, 6, 2)
        assert affine_grid(theta, 5).shape == (2, 5, 5, 2)


class TestException:
    def test_theta_shape(self):
        with pytest.raises(ValueError, match=r"theta: expected shape \(N, 2, 3\), got \(2, 3, 3\)"):
            affine_grid(torch.zeros(2, 3, 3), (4, 4))
        with pytest.raises(ValueError, match=r"theta: expected a 3-D tensor"):
            affine_grid(torch.zeros(6), (4, 4))

    def test_homography_shape(self):
        with pytest.raises(ValueError, match=r"h: expected shape \(N, 3, 3\), got \(1, 2, 3\)"):
            projective_grid(torch.zeros(1, 2, 3), (4, 4))

    def test_params_count(self):
        with pytest.raises(
            ValueError, match=r"params: expected shape \(N, 4\) for transform 'rts', got \(2, 6\)"
        ):
            params_to_matrix("rts", torch.zeros(2, 6))

    def test_unknown_transform(self):
        with pytest.raises(ValueError, match=r"transform: expected one of .*got 'shear'"):
            num_params("shear")

    def test_size(self):
        with pytest.raises(ValueError, match=r"size: expected ints >= 1, got \(0, 4\)"):
            affine_grid(torch.zeros(1, 2, 3), (0, 4))
        with pytest.raises(TypeError, match=r"size: expected an int or a pair"):
            affine_grid(torch.zeros(1, 2, 3), "4x4")

    def test_tps_point_count(self):
        with pytest.raises(
            ValueError, match=r"control_points_source: expected shape \(N, K, 2\) with K = 16"
        ):
            tps_grid(torch.zeros(1, 9, 2), (4, 4))


class TestFeature:
    @pytest.mark.parametrize("align_corners", [False, True])
    @pytest.mark.parametrize("size", [(5, 7), (1, 4), (6, 1)])
    @pytest.mark.filterwarnings("ignore:Since version 1.3.0")
    def test_affine_matches_torch(self, align_corners, size):
        theta = torch.randn(3, 2, 3, dtype=torch.float64)
        ours = affine_grid(theta, size, align_corners)
        ref = F.affine_grid(theta, (3, 1, *size), align_corners=align_corners)
        torch.testing.assert_close(ours, ref)

    def test_constrained_matrices(self):
        a, s, tx, ty = 0.3, 0.8, 0.1, -0.2
        rts = params_to_matrix("rts", torch.tensor([[a, s, tx, ty]], dtype=torch.float64))[0]
        expected = np.array(
            [[s * math.cos(a), -s * math.sin(a), tx], [s * math.sin(a), s * math.cos(a), ty]]
        )
        np.testing.assert_allclose(rts.numpy(), expected)
        st = params_to_matrix("scale_translation", torch.tensor([[s, tx, ty]]))[0]
        np.testing.assert_allclose(st.numpy(), [[s, 0, tx], [0, s, ty]], rtol=1e-6)
        tr = params_to_matrix("translation", torch.tensor([[tx, ty]]))[0]
        np.testing.assert_allclose(tr.numpy(), [[1, 0, tx], [0, 1, ty]], rtol=1e-6)
        pr = params_to_matrix("projective", torch.arange(8.0)[None])[0]
        np.testing.assert_allclose(pr.numpy(), [[0, 1, 2], [3, 4, 5], [6, 7, 1]])

    @pytest.mark.parametrize("align_corners", [False, True])
    def test_projective_formula(self, align_corners):
        hmat = params_to_matrix("projective", random_params("projective", 2))
        grid = projective_grid(hmat, (4, 6), align_corners).numpy()
        pts = target_points(4, 6, align_corners)
        for b in range(2):
            hm = hmat[b].numpy()
            for i in range(4):
                for j in range(6):
                    xp, yp, wp = hm @ np.array([pts[i, j, 0], pts[i, j, 1], 1.0])
                    np.testing.assert_allclose(grid[b, i, j], [xp / wp, yp / wp], rtol=1e-10)

    def test_tps_interpolates_control_points(self):
        """The spline maps each target control point exactly onto its source point."""
        target = tps_control_points(4, dtype=torch.float64)
        # with align_corners=True and a 4 x 4 output, output pixels sit on the control points
        src = target[None] + 0.15 * torch.randn(2, 16, 2, dtype=torch.float64)
        grid = tps_grid(src, (4, 4), align_corners=True)
        torch.testing.assert_close(grid.reshape(2, 16, 2), src)

    def test_tps_formula(self):
        """T(g) = a0 + a_x x + a_y y + sum_k w_k r^2 log r^2, solved here with NumPy."""
        target = tps_control_points((3, 4), dtype=torch.float64).numpy()
        src = target + 0.2 * np.random.randn(*target.shape)
        k = target.shape[0]

        def u(r2):
            return np.where(r2 == 0, 0.0, r2 * np.log(np.where(r2 == 0, 1.0, r2)))

        d2 = ((target[:, None] - target[None]) ** 2).sum(-1)
        p = np.concatenate([np.ones((k, 1)), target], 1)
        lmat = np.block([[u(d2), p], [p.T, np.zeros((3, 3))]])
        coef = np.linalg.solve(lmat, np.concatenate([src, np.zeros((3, 2))]))
        pts = target_points(5, 6, False).reshape(-1, 2)
        r2 = ((pts[:, None] - target[None]) ** 2).sum(-1)
        expected = u(r2) @ coef[:k] + coef[k] + pts[:, :1] * coef[k + 1] + pts[:, 1:] * coef[k + 2]
        grid = tps_grid(
            torch.from_numpy(src)[None], (5, 6), control_points_target=torch.from_numpy(target)
        )
        np.testing.assert_allclose(grid.reshape(-1, 2).numpy(), expected, atol=1e-10)


class TestIdentity:
    @pytest.mark.parametrize("transform", TRANSFORMS)
    @pytest.mark.parametrize("align_corners", [False, True])
    def test_identity_params_give_identity_grid(self, transform, align_corners):
        p = identity_params(transform, dtype=torch.float64)[None].expand(2, -1)
        grid = params_to_grid(transform, p, (5, 7), align_corners)
        expected = torch.from_numpy(target_points(5, 7, align_corners))
        torch.testing.assert_close(grid, expected.expand(2, 5, 7, 2), atol=1e-10, rtol=0)


class TestGradcheck:
    @pytest.mark.parametrize("transform", TRANSFORMS)
    def test_theta_through_generator_and_sampler(self, transform):
        """d(sampled image)/d(theta) by the chain rule through every grid generator."""
        x = torch.randn(1, 2, 6, 5, dtype=torch.float64)
        params = random_params(transform, 1).requires_grad_()

        def f(p):
            return bilinear_sample(x, params_to_grid(transform, p, (4, 3)), padding_mode="zeros")

        # random params put sampling points at integers with probability 0: f is smooth here
        assert torch.autograd.gradcheck(f, (params,), eps=1e-6, atol=1e-5)

    @pytest.mark.parametrize("transform", TRANSFORMS)
    def test_generator_alone(self, transform):
        params = random_params(transform, 2).requires_grad_()
        assert torch.autograd.gradcheck(lambda p: params_to_grid(transform, p, (3, 4)), (params,))


class TestCardinality:
    def test_batch_one_and_non_square(self):
        for transform in TRANSFORMS:
            p = random_params(transform, 1, torch.float32)
            one = params_to_grid(transform, p, (3, 8))
            two = params_to_grid(transform, p.expand(2, -1), (3, 8))
            assert one.shape == (1, 3, 8, 2)
            torch.testing.assert_close(two[1:], one)


class TestCompile:
    def test_compiled_tps_and_affine(self):
        p_tps = random_params("tps", 2, torch.float32)
        p_aff = random_params("affine", 2, torch.float32)

        def both(a, b):
            return params_to_grid("affine", a, (5, 6)), params_to_grid("tps", b, (5, 6))

        compiled = torch.compile(both)
        for got, want in zip(compiled(p_aff, p_tps), both(p_aff, p_tps), strict=True):
            torch.testing.assert_close(got, want)
