"""Tests of SpatialTransformer and GridGenerator (STN paper §3; src/visattn/layers/spatial_transformer.py).

The battery of layer_tester.py runs on the configurations of ``TestSpatialTransformer``. Its
feature formula is the paper's pipeline for a given transform: each configuration keeps the
regression layer's weight at zero (as initialised) and moves its bias off the identity, so
theta is that bias whatever the input; the grid is T_theta(G) (eq. 1; the thin-plate spline
solved with NumPy) and the output the bilinear sampling of eq. 5, written here in NumPy.
Groups that do not apply: the parameter count (the paper gives none for a localisation net).
The ST-specific tests follow the class: identity at initialisation, training signal, the grid
generator's hook, custom localisation nets.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from layer_tester import LayerTester
from torch import nn

from visattn import GridGenerator, SpatialTransformer
from visattn.functional import TRANSFORMS, bilinear_sample, num_params, params_to_grid


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def target_points(h: int, w: int, align_corners: bool):
    """Normalised (x^t, y^t) of the output pixels, each (H, W)."""

    def lin(n):
        if align_corners:
            return np.linspace(-1, 1, n) if n > 1 else np.zeros(1)
        return (2 * np.arange(n) + 1) / n - 1

    return np.meshgrid(lin(w), lin(h))


def numpy_matrix(transform: str, t: np.ndarray) -> np.ndarray:
    """The 3 x 3 homogeneous matrix of a matrix family's parameters."""
    if transform == "translation":
        return np.array([[1, 0, t[0]], [0, 1, t[1]], [0, 0, 1]])
    if transform == "scale_translation":
        s, tx, ty = t
        return np.array([[s, 0, tx], [0, s, ty], [0, 0, 1]])
    if transform == "rts":
        a, s, tx, ty = t
        c, n = s * np.cos(a), s * np.sin(a)
        return np.array([[c, -n, tx], [n, c, ty], [0, 0, 1]])
    if transform == "affine":
        return np.concatenate([t.reshape(2, 3), [[0, 0, 1]]])
    return np.append(t, 1.0).reshape(3, 3)  # projective


def numpy_tps(source: np.ndarray, grid_size, xs, ys) -> np.ndarray:
    """Thin-plate spline through the control points: T(g) = a_0 + a_x x + a_y y
    + sum_k w_k U(|g - P_k|), U(r) = r^2 log r^2, [w; a] = L^{-1} [P^s; 0]."""
    rows, cols = pair(grid_size)
    cy, cx = np.meshgrid(np.linspace(-1, 1, rows), np.linspace(-1, 1, cols), indexing="ij")
    target = np.stack([cx.ravel(), cy.ravel()], 1)  # (K, 2), x varies fastest
    k = len(target)

    def u(r2):
        return np.where(r2 == 0, 0.0, r2 * np.log(np.where(r2 == 0, 1.0, r2)))

    p = np.concatenate([np.ones((k, 1)), target], 1)
    lmat = np.block(
        [[u(((target[:, None] - target[None]) ** 2).sum(-1)), p], [p.T, np.zeros((3, 3))]]
    )
    coef = np.linalg.solve(lmat, np.concatenate([source.reshape(k, 2), np.zeros((3, 2))]))
    pts = np.stack([xs.ravel(), ys.ravel()], 1)
    r2 = ((pts[:, None] - target[None]) ** 2).sum(-1)
    grid = u(r2) @ coef[:k] + coef[k] + pts[:, :1] * coef[k + 1] + pts[:, 1:] * coef[k + 2]
    return grid.reshape(*xs.shape, 2)


def numpy_grid(transform, theta, size, align_corners, tps_grid_size=(4, 4)) -> np.ndarray:
    """(x^s, y^s) = T_theta(x^t, y^t) (eq. 1) at every output pixel: (H_out, W_out, 2)."""
    xs, ys = target_points(*size, align_corners)
    if transform == "tps":
        return numpy_tps(theta, tps_grid_size, xs, ys)
    g = np.stack([xs, ys, np.ones_like(xs)], -1) @ numpy_matrix(transform, theta).T
    return g[..., :2] / g[..., 2:]


def numpy_sample(u: np.ndarray, grid: np.ndarray, align_corners: bool, padding_mode: str):
    """Eq. 5: V_c(i) = sum_q sum_m U_c(q, m) max(0, 1 - |x^s_i - m|) max(0, 1 - |y^s_i - q|);
    pixels outside U are zero, or (``"border"``) the coordinates are clipped to U first."""
    _n, _c, h, w = u.shape

    def pixel(g, size):
        return (g + 1) / 2 * (size - 1) if align_corners else ((g + 1) * size - 1) / 2

    xs, ys = pixel(grid[..., 0], w), pixel(grid[..., 1], h)
    if padding_mode == "border":
        xs, ys = np.clip(xs, 0, w - 1), np.clip(ys, 0, h - 1)
    kx = np.maximum(0, 1 - np.abs(xs[..., None] - np.arange(w)))  # (H_out, W_out, W)
    ky = np.maximum(0, 1 - np.abs(ys[..., None] - np.arange(h)))  # (H_out, W_out, H)
    return np.einsum("ijq,ncqm,ijm->ncij", ky, u, kx)


def regression_layer(p):
    """(weight, bias) of the localisation net's last nn.Linear (the last 2-D weight)."""
    name = [k for k in p if k.startswith("localisation.") and p[k].ndim == 2][-1]
    return p[name], p[name.replace(".weight", ".bias")]


def numpy_st(
    x,
    p,
    transform="affine",
    input_size=None,
    output_size=None,
    align_corners=False,
    padding_mode="zeros",
    tps_grid_size=(4, 4),
    **_,
):
    weight, bias = regression_layer(p)
    assert not weight.any(), "the formula assumes the regression weight at zero: theta = bias"
    size = pair(output_size if output_size is not None else input_size)
    grid = numpy_grid(transform, bias, size, align_corners, tps_grid_size)
    return numpy_sample(x, grid, align_corners, padding_mode)


class TestSpatialTransformer(LayerTester):
    layer = SpatialTransformer
    configs = {  # noqa: RUF012
        "affine": {"transform": "affine", "in_channels": 2, "input_size": (12, 10)},
        "translation": {"transform": "translation", "in_channels": 2, "input_size": 9},
        "scale_translation_align": {
            "transform": "scale_translation",
            "in_channels": 1,
            "input_size": (9, 11),
            "output_size": (5, 7),
            "align_corners": True,
        },
        "rts": {"transform": "rts", "in_channels": 1, "input_size": (12, 10)},
        "projective": {"transform": "projective", "in_channels": 1, "input_size": (12, 10)},
        "affine_border": {
            "transform": "affine",
            "in_channels": 3,
            "input_size": 8,
            "output_size": (6, 9),
            "padding_mode": "border",
        },
        "tps": {"transform": "tps", "in_channels": 3, "input_size": (7, 9)},
        "tps_small_localisation": {
            "transform": "tps",
            "in_channels": 2,
            "input_size": (7, 9),
            "localisation": "small",
        },
        "tps_3x3_align": {
            "transform": "tps",
            "in_channels": 1,
            "input_size": 6,
            "tps_grid_size": 3,
            "align_corners": True,
        },
    }
    # theta does not depend on the input (zero regression weight): the output is linear in x
    # through the sampler; the localisation net's parameters (thousands) would make a
    # parameter gradcheck slow, and the sampler's own gradcheck is tests/functional
    gradcheck_configs = ("affine",)
    gradcheck_wrt = ("input",)
    gradcheck_kwargs = {"atol": 1e-5}  # noqa: RUF012
    # the thin-plate spline has its own grid path (the tps_weights buffer): it is compiled too,
    # with a small localisation net (the default one, compiled with "affine", costs ~40 s more
    # to compile on CPU)
    compile_configs = ("affine", "tps_small_localisation")
    onnx_configs = ("affine", "rts", "projective", "tps")
    # the paper gives no parameter count for the localisation net
    test_num_params = None
    tolerances = {  # noqa: RUF012
        **LayerTester.tolerances,
        # float32 against the float64 formula, measured over 30 seeds x every configuration x
        # 3 shapes x both backends: max |error| 5.3e-6 (float32 grid coordinates times the
        # image's slopes); atol ~4x that
        "float32": {"rtol": 1e-5, "atol": 2e-5},
        "autocast": {"rtol": 2e-2, "atol": 2e-2},
        "onnx": {"rtol": 1e-3, "atol": 1e-4},
    }

    def tol(self, kind, config):
        if kind == "float64" and self.configs[config]["transform"] == "tps":
            # GridGenerator keeps tps_weights in the default dtype (float32) from its
            # construction: layer.double() cannot give them back their float64 digits; the grid
            # is off by ~1e-7, the output by that times the image's slopes (measured over 30 seeds:
            # max |error| 1.1e-6; atol ~4x that)
            return {"rtol": 1e-5, "atol": 5e-6}
        return super().tol(kind, config)

    def build(self, config):
        if config.get("localisation") == "small":  # pool to 4 x 4, then the regression layer
            c = config["in_channels"]
            p = num_params(config["transform"])
            config["localisation"] = nn.Sequential(
                nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(c * 16, p)
            )
        st = SpatialTransformer(**config)
        regression = st.localisation[-1]
        scale = 0.05 if config["transform"] == "projective" else 0.1  # keeps H_2 g away from 0
        with torch.no_grad():
            regression.bias.add_(scale * torch.randn(st.num_params))
            # bfloat16 values: under autocast the regression layer (0 * h + b) stays exact
            regression.bias.copy_(regression.bias.bfloat16().float())
        return st

    def input_shape(self, config):
        return (2, config["in_channels"], *pair(config["input_size"]))

    def output_shape(self, shape, config):
        size = config.get("output_size") or config["input_size"]
        return (shape[0], shape[1], *pair(size))

    def formula(self, x, p, config):
        return numpy_st(x, p, **config)

    errors = {  # noqa: RUF012
        "unknown_transform": (
            ValueError,
            r"transform: expected one of .*got 'similarity'",
            lambda: SpatialTransformer("similarity", in_channels=1, input_size=8),
        ),
        "wrong_channels": (
            ValueError,
            r"x: expected 3 channels, got shape \(1, 1, 8, 8\)",
            lambda: SpatialTransformer(in_channels=3, input_size=8)(torch.randn(1, 1, 8, 8)),
        ),
        "wrong_rank": (
            ValueError,
            r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor of shape \(1, 8, 8\)",
            lambda: SpatialTransformer(in_channels=1, input_size=8)(torch.randn(1, 8, 8)),
        ),
        "wrong_localisation_output": (
            ValueError,
            r"localisation: expected an output of shape \(2, 6\).*got \(2, 4\)",
            lambda: SpatialTransformer(
                "affine",
                in_channels=1,
                input_size=8,
                localisation=nn.Sequential(nn.Flatten(), nn.Linear(64, 4)),
            )(torch.randn(2, 1, 8, 8)),
        ),
        "padding_mode": (
            ValueError,
            r"padding_mode: expected one of 'zeros', 'border', 'reflection', got 'wrap'",
            lambda: SpatialTransformer(in_channels=1, input_size=8, padding_mode="wrap"),
        ),
        "input_size": (
            ValueError,
            r"input_size: expected ints >= 1, got \(0, 8\)",
            lambda: SpatialTransformer(in_channels=1, input_size=(0, 8)),
        ),
        "output_size": (
            TypeError,
            r"output_size: expected an int or a pair \(height, width\), got '8x8' \(str\)",
            lambda: SpatialTransformer(in_channels=1, input_size=8, output_size="8x8"),
        ),
        "in_channels": (
            ValueError,
            r"in_channels: expected an int >= 1, got 0",
            lambda: SpatialTransformer(in_channels=0, input_size=8),
        ),
        "align_corners": (
            TypeError,
            r"align_corners: expected a bool, got 1",
            lambda: SpatialTransformer(in_channels=1, input_size=8, align_corners=1),
        ),
        "localisation_not_module": (
            TypeError,
            r"localisation: expected an nn.Module or None, got function",
            lambda: SpatialTransformer(in_channels=1, input_size=8, localisation=lambda x: x),
        ),
        "grid_generator_theta": (
            ValueError,
            r"theta: expected shape \(N, 6\) for transform 'affine', got \(2, 4\)",
            lambda: GridGenerator("affine", (4, 4))(torch.zeros(2, 4)),
        ),
        "grid_generator_rank": (
            ValueError,
            r"theta: expected a 2-D tensor \(N, num_params\), got a 3-D tensor",
            lambda: GridGenerator("affine", (4, 4))(torch.zeros(2, 2, 3)),
        ),
    }


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_forward_keeps_theta_and_grid(transform):
    st = SpatialTransformer(transform, in_channels=3, input_size=(12, 10), output_size=(6, 8))
    out = st(torch.randn(2, 3, 12, 10))
    assert out.shape == (2, 3, 6, 8)
    assert st.last_theta.shape == (2, st.num_params)
    assert st.last_grid.shape == (2, 6, 8, 2)


def test_custom_localisation():
    loc = nn.Sequential(nn.Flatten(), nn.Linear(1 * 8 * 8, 6))
    st = SpatialTransformer("affine", in_channels=1, input_size=8, localisation=loc)
    assert torch.count_nonzero(loc[1].weight) == 0  # initialised to the identity
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(st(x), x, atol=1e-5, rtol=0)


def test_localisation_may_return_matrix_shape():
    class Loc(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 6)

        def forward(self, x):
            return self.fc(x.flatten(1)).view(-1, 2, 3)

    st = SpatialTransformer("affine", in_channels=1, input_size=4, localisation=Loc())
    x = torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(st(x), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("align_corners", [False, True])
def test_output_equals_input_at_init(transform, align_corners):
    st = SpatialTransformer(
        transform, in_channels=2, input_size=(11, 14), align_corners=align_corners
    )
    x = torch.randn(3, 2, 11, 14)
    y = st(x)
    theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(3, 2, 3)
    identity = torch.nn.functional.affine_grid(theta, (3, 2, 11, 14), align_corners=align_corners)
    # float32 roundoff only: the thin-plate spline's grid comes from a linear solve (off by
    # ~1e-7), which moves each sample by that much times half the image width; the output
    # error is that shift times the local slope of x (differences of up to a few units).
    assert (st.last_grid - identity).abs().max() <= 1e-6
    assert (y - x).abs().max() <= 1e-5 * (1 + x.abs().max())


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_one_step_changes_theta(transform):
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


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_output_is_sampler_of_grid(transform):
    st = SpatialTransformer(transform, in_channels=2, input_size=9, output_size=(5, 7))
    with torch.no_grad():
        st.localisation[-1].bias.add_(0.1 * torch.randn(st.num_params))
    x = torch.randn(2, 2, 9, 9)
    out = st(x)
    grid = params_to_grid(transform, st.last_theta, (5, 7))
    torch.testing.assert_close(st.last_grid, grid)
    torch.testing.assert_close(out, bilinear_sample(x, grid))


def test_grid_generator_hook_observes_theta_and_grid():
    st = SpatialTransformer("rts", in_channels=1, input_size=8)
    seen = {}
    st.grid_generator.register_forward_hook(lambda m, i, o: seen.update(theta=i[0], grid=o))
    st(torch.randn(2, 1, 8, 8))
    torch.testing.assert_close(seen["theta"], st.last_theta)
    torch.testing.assert_close(seen["grid"], st.last_grid)


def test_autocast_keeps_the_grid_in_float32():
    """Under bfloat16 autocast the grid, and so the sampled output, stay float32."""
    st = SpatialTransformer("affine", in_channels=1, input_size=10)
    x = torch.randn(2, 1, 10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = st(x)
        assert st.last_grid.dtype == torch.float32
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, st(x), atol=2e-2, rtol=2e-2)
