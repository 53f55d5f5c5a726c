"""Tests of SpatialTransformer (STN paper §3; src/visattn/layers/spatial_transformer.py).

Groups: smoke, exception, identity at initialisation, training signal, cardinality, feature
(output = sampler(input, grid of theta)), gradcheck, autocast, compile.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visattn import SpatialTransformer
from visattn.functional import TRANSFORMS, bilinear_sample, params_to_grid


class TestSmoke:
    @pytest.mark.parametrize("transform", TRANSFORMS)
    def test_forward(self, transform):
        st = SpatialTransformer(transform, in_channels=3, input_size=(12, 10), output_size=(6, 8))
        out = st(torch.randn(2, 3, 12, 10))
        assert out.shape == (2, 3, 6, 8)
        assert st.last_theta.shape == (2, st.num_params)
        assert st.last_grid.shape == (2, 6, 8, 2)

    def test_custom_localisation(self):
        loc = nn.Sequential(nn.Flatten(), nn.Linear(1 * 8 * 8, 6))
        st = SpatialTransformer("affine", in_channels=1, input_size=8, localisation=loc)
        assert torch.count_nonzero(loc[1].weight) == 0  # initialised to the identity
        x = torch.randn(3, 1, 8, 8)
        torch.testing.assert_close(st(x), x, atol=1e-5, rtol=0)

    def test_localisation_may_return_matrix_shape(self):
        class Loc(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(16, 6)

            def forward(self, x):
                return self.fc(x.flatten(1)).view(-1, 2, 3)

        st = SpatialTransformer("affine", in_channels=1, input_size=4, localisation=Loc())
        x = torch.randn(2, 1, 4, 4)
        torch.testing.assert_close(st(x), x, atol=1e-5, rtol=0)


class TestException:
    def test_unknown_transform(self):
        with pytest.raises(ValueError, match=r"transform: expected one of .*got 'similarity'"):
            SpatialTransformer("similarity", in_channels=1, input_size=8)

    def test_wrong_channels(self):
        st = SpatialTransformer(in_channels=3, input_size=8)
        with pytest.raises(ValueError, match=r"x: expected 3 channels, got shape \(1, 1, 8, 8\)"):
            st(torch.randn(1, 1, 8, 8))

    def test_wrong_localisation_output(self):
        loc = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
        st = SpatialTransformer("affine", in_channels=1, input_size=8, localisation=loc)
        with pytest.raises(
            ValueError, match=r"localisation: expected an output of shape \(2, 6\).*got \(2, 4\)"
        ):
            st(torch.randn(2, 1, 8, 8))

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match=r"padding_mode: expected one of"):
            SpatialTransformer(in_channels=1, input_size=8, padding_mode="wrap")
        with pytest.raises(ValueError, match=r"input_size: expected ints >= 1"):
            SpatialTransformer(in_channels=1, input_size=(0, 8))
        with pytest.raises(TypeError, match=r"localisation: expected an nn.Module or None"):
            SpatialTransformer(in_channels=1, input_size=8, localisation=lambda x: x)


class TestIdentity:
    @pytest.mark.parametrize("transform", TRANSFORMS)
    @pytest.mark.parametrize("align_corners", [False, True])
    def test_output_equals_input_at_init(self, transform, align_corners):
        st = SpatialTransformer(
            transform, in_channels=2, input_size=(11, 14), align_corners=align_corners
        )
        x = torch.randn(3, 2, 11, 14)
        y = st(x)
        theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(3, 2, 3)
        identity = torch.nn.functional.affine_grid(
            theta, (3, 2, 11, 14), align_corners=align_corners
        )
        # float32 roundoff only: the thin-plate spline's grid comes from a linear solve (off by
        # ~1e-7), which moves each sample by that much times half the image width; the output
        # error is that shift times the local slope of x (differences of up to a few units).
        assert (st.last_grid - identity).abs().max() <= 1e-6
        assert (y - x).abs().max() <= 1e-5 * (1 + x.abs().max())


class TestTrainingSignal:
    @pytest.mark.parametrize("transform", TRANSFORMS)
    def test_one_step_changes_theta(self, transform):
        st = SpatialTransformer(transform, in_channels=1, input_size=12)
        x = torch.randn(4, 1, 12, 12)
        target = torch.roll(x, shifts=2, dims=3)
        opt = torch.optim.SGD(st.parameters(), lr=0.1)
        st(x)
        before = st.last_theta.clone()
        loss = (st(x) - target).pow(2).mean()
        loss.backward()
        assert st.localisation[-1].weight.grad.abs().sum() > 0
        opt.step()
        st(x)
        assert not torch.allclose(st.last_theta, before)


class TestFeature:
    @pytest.mark.parametrize("transform", TRANSFORMS)
    def test_output_is_sampler_of_grid(self, transform):
        st = SpatialTransformer(transform, in_channels=2, input_size=9, output_size=(5, 7))
        with torch.no_grad():
            st.localisation[-1].bias.add_(0.1 * torch.randn(st.num_params))
        x = torch.randn(2, 2, 9, 9)
        out = st(x)
        grid = params_to_grid(transform, st.last_theta, (5, 7))
        torch.testing.assert_close(st.last_grid, grid)
        torch.testing.assert_close(out, bilinear_sample(x, grid))

    def test_grid_generator_hook_observes_theta_and_grid(self):
        st = SpatialTransformer("rts", in_channels=1, input_size=8)
        seen = {}
        st.grid_generator.register_forward_hook(lambda m, i, o: seen.update(theta=i[0], grid=o))
        st(torch.randn(2, 1, 8, 8))
        torch.testing.assert_close(seen["theta"], st.last_theta)
        torch.testing.assert_close(seen["grid"], st.last_grid)


class TestCardinality:
    def test_batch_one_and_channels_last(self):
        st = SpatialTransformer("tps", in_channels=3, input_size=(7, 9))
        with torch.no_grad():
            st.localisation[-1].bias.add_(0.1 * torch.randn(st.num_params))
        x = torch.randn(1, 3, 7, 9)
        torch.testing.assert_close(st(x.to(memory_format=torch.channels_last)), st(x))


class TestGradcheck:
    def test_gradcheck_input(self):
        st = SpatialTransformer("affine", in_channels=1, input_size=6).double()
        with torch.no_grad():
            st.localisation[-1].bias.add_(0.1 * torch.randn(6, dtype=torch.float64))
        x = torch.randn(2, 1, 6, 6, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(st, (x,), atol=1e-5)


class TestAutocast:
    def test_bfloat16(self):
        st = SpatialTransformer("affine", in_channels=1, input_size=10)
        x = torch.randn(2, 1, 10, 10)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = st(x)
            assert st.last_grid.dtype == torch.float32
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, st(x), atol=2e-2, rtol=2e-2)


class TestCompile:
    @pytest.mark.parametrize("transform", ["affine", "tps"])
    def test_compile(self, transform):
        st = SpatialTransformer(transform, in_channels=1, input_size=8)
        with torch.no_grad():
            st.localisation[-1].bias.add_(0.1 * torch.randn(st.num_params))
        x = torch.randn(2, 1, 8, 8, requires_grad=True)
        a, b = torch.compile(st)(x), st(x)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(
            torch.autograd.grad(a.sum(), x)[0], torch.autograd.grad(b.sum(), x)[0]
        )
