"""Tests of visattn.functional.bilinear_sample (STN paper eq. 5-7; src/visattn/functional/sampling.py).

Groups: smoke, exception, cardinality, feature (NumPy double sums of eq. 5-7 written here, and
torch.nn.functional.grid_sample), gradcheck, autocast, compile.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from visattn.functional import bilinear_sample, bilinear_sample_reference

PADDINGS = ("zeros", "border", "reflection")


def pixel_to_normalised(p: np.ndarray, size: int, align_corners: bool) -> np.ndarray:
    if align_corners:
        return p / ((size - 1) / 2) - 1
    return (2 * p + 1) / size - 1


def away_from_kinks_grid(n, ho, wo, h, w, align_corners, *, lo=-1.5, margin=0.05):
    """Grid whose pixel coordinates are never within ``margin`` of an integer (eq. 5's kinks)."""

    def coords(size):
        whole = np.random.randint(int(np.floor(lo)), size + 1, size=(n, ho, wo))
        frac = np.random.uniform(margin, 1 - margin, size=(n, ho, wo))
        return pixel_to_normalised(whole + frac, size, align_corners)

    return torch.from_numpy(np.stack((coords(w), coords(h)), axis=-1))


def numpy_sampler(u: np.ndarray, grid: np.ndarray, go: np.ndarray, align_corners: bool):
    """Eq. 5, 6 and 7 as literal sums over every pixel (n, m) of U, zero padding."""
    n_, c_, h, w = u.shape
    _, ho, wo, _ = grid.shape
    v = np.zeros((n_, c_, ho, wo))
    du = np.zeros_like(u)
    dgrid = np.zeros_like(grid)
    m = np.arange(w)
    q = np.arange(h)
    sx_scale = (w - 1) / 2 if align_corners else w / 2
    sy_scale = (h - 1) / 2 if align_corners else h / 2
    for b in range(n_):
        for i in range(ho):
            for j in range(wo):
                gx, gy = grid[b, i, j]
                x = (gx + 1) * sx_scale if align_corners else ((gx + 1) * w - 1) / 2
                y = (gy + 1) * sy_scale if align_corners else ((gy + 1) * h - 1) / 2
                kx = np.maximum(0, 1 - np.abs(x - m))
                ky = np.maximum(0, 1 - np.abs(y - q))
                sx = np.where(np.abs(m - x) >= 1, 0.0, np.where(m >= x, 1.0, -1.0))
                sy = np.where(np.abs(q - y) >= 1, 0.0, np.where(q >= y, 1.0, -1.0))
                dx = dy = 0.0
                for c in range(c_):
                    v[b, c, i, j] = ky @ u[b, c] @ kx  # eq. 5
                    du[b, c] += go[b, c, i, j] * np.outer(ky, kx)  # eq. 6
                    dx += go[b, c, i, j] * (ky @ u[b, c] @ sx)  # eq. 7
                    dy += go[b, c, i, j] * (sy @ u[b, c] @ kx)
                dgrid[b, i, j] = dx * sx_scale, dy * sy_scale
    return v, du, dgrid


class TestSmoke:
    def test_runs(self):
        x = torch.randn(2, 3, 8, 9)
        grid = torch.rand(2, 4, 5, 2) * 2 - 1
        out = bilinear_sample(x, grid)
        assert out.shape == (2, 3, 4, 5)
        assert out.dtype == x.dtype


class TestException:
    def test_input_rank(self):
        with pytest.raises(ValueError, match=r"input: expected a 4-D tensor .*shape \(3, 8, 8\)"):
            bilinear_sample(torch.randn(3, 8, 8), torch.zeros(1, 2, 2, 2))

    def test_grid_last_dim(self):
        with pytest.raises(
            ValueError, match=r"grid: expected the last dimension to be 2.*\(1, 2, 2, 3\)"
        ):
            bilinear_sample(torch.randn(1, 1, 4, 4), torch.zeros(1, 2, 2, 3))

    def test_grid_batch(self):
        with pytest.raises(ValueError, match=r"grid: expected batch size 2"):
            bilinear_sample(torch.randn(2, 1, 4, 4), torch.zeros(1, 2, 2, 2))

    def test_padding_mode(self):
        with pytest.raises(ValueError, match=r"padding_mode: expected one of .*got 'wrap'"):
            bilinear_sample(torch.randn(1, 1, 4, 4), torch.zeros(1, 2, 2, 2), padding_mode="wrap")

    def test_types(self):
        with pytest.raises(TypeError, match=r"input: expected a torch.Tensor"):
            bilinear_sample(np.zeros((1, 1, 2, 2)), torch.zeros(1, 2, 2, 2))
        with pytest.raises(TypeError, match=r"align_corners: expected a bool"):
            bilinear_sample(torch.randn(1, 1, 4, 4), torch.zeros(1, 2, 2, 2), align_corners=1)
        with pytest.raises(TypeError, match=r"input: expected a floating point tensor"):
            bilinear_sample(torch.zeros(1, 1, 4, 4, dtype=torch.long), torch.zeros(1, 2, 2, 2))


class TestFeature:
    @pytest.mark.parametrize("align_corners", [False, True])
    def test_published_sums(self, align_corners):
        """Values and both gradients equal the literal sums of eq. 5-7 (zero padding)."""
        n, c, h, w, ho, wo = 2, 3, 5, 7, 4, 3
        u = torch.randn(n, c, h, w, dtype=torch.float64, requires_grad=True)
        grid = away_from_kinks_grid(n, ho, wo, h, w, align_corners).requires_grad_()
        out = bilinear_sample(u, grid, align_corners=align_corners)
        go = torch.randn_like(out)
        du, dgrid = torch.autograd.grad(out, (u, grid), go)
        v_ref, du_ref, dgrid_ref = numpy_sampler(
            u.detach().numpy(), grid.detach().numpy(), go.numpy(), align_corners
        )
        np.testing.assert_allclose(out.detach().numpy(), v_ref, atol=1e-12)
        np.testing.assert_allclose(du.numpy(), du_ref, atol=1e-12)
        np.testing.assert_allclose(dgrid.numpy(), dgrid_ref, atol=1e-10)

    @pytest.mark.parametrize("align_corners", [False, True])
    @pytest.mark.parametrize("padding_mode", PADDINGS)
    def test_matches_grid_sample(self, align_corners, padding_mode):
        """Same values and gradients as grid_sample, grids reaching outside [-1, 1]."""
        x = torch.randn(3, 4, 6, 9, dtype=torch.float64, requires_grad=True)
        grid = (torch.rand(3, 5, 7, 2, dtype=torch.float64) * 3.2 - 1.6).requires_grad_()
        ours = bilinear_sample(x, grid, align_corners=align_corners, padding_mode=padding_mode)
        ref = F.grid_sample(x, grid, align_corners=align_corners, padding_mode=padding_mode)
        go = torch.randn_like(ref)
        g_ours = torch.autograd.grad(ours, (x, grid), go)
        g_ref = torch.autograd.grad(ref, (x, grid), go)
        torch.testing.assert_close(ours, ref)
        torch.testing.assert_close(g_ours[0], g_ref[0])
        torch.testing.assert_close(g_ours[1], g_ref[1])

    @pytest.mark.parametrize("align_corners", [False, True])
    def test_integer_coordinates_follow_grid_sample(self, align_corners):
        """At the kinks (integer pixel coordinates) the documented convention is grid_sample's."""
        h, w = 5, 6
        xs = torch.arange(-1, w + 1, dtype=torch.float64)
        ys = torch.arange(-1, h + 1, dtype=torch.float64)
        py, px = torch.meshgrid(ys, xs, indexing="ij")
        gx = torch.from_numpy(pixel_to_normalised(px.numpy(), w, align_corners))
        gy = torch.from_numpy(pixel_to_normalised(py.numpy(), h, align_corners))
        grid = torch.stack((gx, gy), -1)[None].requires_grad_()
        x = torch.randn(1, 2, h, w, dtype=torch.float64, requires_grad=True)
        for padding_mode in PADDINGS:
            ours = bilinear_sample(x, grid, align_corners=align_corners, padding_mode=padding_mode)
            ref = F.grid_sample(x, grid, align_corners=align_corners, padding_mode=padding_mode)
            torch.testing.assert_close(ours, ref)
            g_ours = torch.autograd.grad(ours.sum(), (x, grid))
            g_ref = torch.autograd.grad(ref.sum(), (x, grid))
            torch.testing.assert_close(g_ours[0], g_ref[0])
            torch.testing.assert_close(g_ours[1], g_ref[1])

    def test_identity_grid_returns_input(self):
        x = torch.randn(2, 3, 7, 5)
        theta = torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(2, 2, 3)
        grid = F.affine_grid(theta, (2, 3, 7, 5), align_corners=False)
        torch.testing.assert_close(bilinear_sample(x, grid), x, atol=1e-5, rtol=0)

    def test_backward_is_deterministic(self):
        x = torch.randn(2, 3, 9, 9, requires_grad=True)
        grid = (torch.rand(2, 16, 16, 2) * 2 - 1).requires_grad_()  # many outputs per input pixel
        go = torch.randn(2, 3, 16, 16)
        first = torch.autograd.grad(bilinear_sample(x, grid), (x, grid), go)
        second = torch.autograd.grad(bilinear_sample(x, grid), (x, grid), go)
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])

    def test_reference_equals_public(self):
        x = torch.randn(1, 2, 5, 5)
        grid = torch.rand(1, 3, 3, 2) * 2 - 1
        torch.testing.assert_close(bilinear_sample(x, grid), bilinear_sample_reference(x, grid))


class TestCardinality:
    @pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 3, 7, 5), (2, 2, 4, 11), (1, 1, 1, 9)])
    def test_shapes(self, shape):
        n, _c, _h, _w = shape
        grid = torch.rand(n, 3, 2, 2) * 2.4 - 1.2
        x = torch.randn(shape)
        out = bilinear_sample(x, grid)
        torch.testing.assert_close(out, F.grid_sample(x, grid, align_corners=False))

    def test_channels_last_equals_nchw(self):
        x = torch.randn(2, 5, 9, 7)
        grid = torch.rand(2, 6, 4, 2) * 2 - 1
        go = torch.randn(2, 5, 6, 4)
        xa = x.clone().requires_grad_()
        xb = x.clone().to(memory_format=torch.channels_last).requires_grad_()
        a = bilinear_sample(xa, grid)
        b = bilinear_sample(xb, grid)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        (a * go).sum().backward()
        (b * go).sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=0)

    def test_non_contiguous_grid(self):
        x = torch.randn(1, 2, 6, 6)
        grid = (torch.rand(1, 2, 5, 4) * 2 - 1).permute(0, 2, 3, 1)
        torch.testing.assert_close(
            bilinear_sample(x, grid), F.grid_sample(x, grid, align_corners=False)
        )


class TestGradcheck:
    @pytest.mark.parametrize("align_corners", [False, True])
    @pytest.mark.parametrize("padding_mode", PADDINGS)
    def test_gradcheck(self, align_corners, padding_mode):
        h, w = 4, 5
        x = torch.randn(1, 2, h, w, dtype=torch.float64, requires_grad=True)
        lo = -1.5 if padding_mode == "zeros" else 0  # border / reflection have kinks at the edges
        grid = away_from_kinks_grid(1, 3, 2, h - 1, w - 1, align_corners, lo=lo, margin=0.1)
        if padding_mode != "zeros":
            grid = grid.clamp(-0.9, 0.9)  # stays inside: no clipping kink in the neighbourhood
        grid.requires_grad_()

        def f(inp, g):
            return bilinear_sample(inp, g, align_corners=align_corners, padding_mode=padding_mode)

        assert torch.autograd.gradcheck(f, (x, grid), eps=1e-6, atol=1e-6)


class TestAutocast:
    def test_bfloat16_autocast_computes_in_float32(self):
        x = torch.randn(2, 3, 8, 8)
        grid = torch.rand(2, 5, 5, 2) * 2 - 1
        ref = bilinear_sample(x, grid)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = bilinear_sample(x.bfloat16(), grid.bfloat16())
        assert out.dtype == torch.float32
        # only the bf16 rounding of the inputs differs
        torch.testing.assert_close(out, ref, atol=3e-2, rtol=2e-2)

    def test_bfloat16_input_returns_bfloat16(self):
        x = torch.randn(1, 2, 6, 6)
        grid = torch.rand(1, 3, 3, 2) * 2 - 1
        out = bilinear_sample(x.bfloat16(), grid)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), bilinear_sample(x, grid), atol=3e-2, rtol=2e-2)


class TestCompile:
    def test_compile_matches_eager(self):
        x = torch.randn(2, 3, 7, 6, requires_grad=True)
        grid = (torch.rand(2, 4, 5, 2) * 2.2 - 1.1).requires_grad_()
        compiled = torch.compile(bilinear_sample, fullgraph=False)
        a = compiled(x, grid)
        b = bilinear_sample(x, grid)
        torch.testing.assert_close(a, b)
        ga = torch.autograd.grad(a.sum(), (x, grid))
        gb = torch.autograd.grad(b.sum(), (x, grid))
        torch.testing.assert_close(ga[0], gb[0])
        torch.testing.assert_close(ga[1], gb[1])
