"""Tests of Coordinate Attention (arXiv:2103.02907, eq. 4-9; src/visattn/layers/coord.py): the
battery of layer_tester.py on the configurations of TestCoordAttention, then its own tests: the
bottleneck width of the paper's code and of timm, and timm's ``CoordAttn`` state dict loaded
with strict=True giving the same outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from layer_tester import KINK_MARGIN, LayerTester
from torch import nn

from visattn import CoordAttention
from visattn.layers.coord import coord_channels

BN_EPS = 1e-5  # nn.BatchNorm2d's default

ACTS = {
    "hard_swish": lambda v: v * np.clip(v + 3, 0, 6) / 6,  # h-swish, x * ReLU6(x + 3) / 6
    "relu": lambda v: np.maximum(v, 0),
    "silu": lambda v: v / (1 + np.exp(-v)),
}
GATES = {
    "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    "hard_sigmoid": lambda v: np.clip((v + 3) / 6, 0, 1),
}


def conv1x1(p, name, v):
    """A 1 x 1 convolution of (N, C_in, L) -> (N, C_out, L), with its bias when it has one."""
    out = np.einsum("oi,nil->nol", p[name + ".weight"][:, :, 0, 0], v)
    return out + p[name + ".bias"][None, :, None] if name + ".bias" in p else out


def pre_activation(x, p):
    """BN(F_1([z^h, z^w])): z^h_c(h) = mean over the width (eq. 4), z^w_c(w) = mean over the
    height (eq. 5), concatenated along the positions (H + W), F_1, BatchNorm (running stats)."""
    f = conv1x1(p, "conv1", np.concatenate([x.mean(3), x.mean(2)], axis=2))
    if "bn1.weight" in p:
        mean, var = p["bn1.running_mean"][:, None], p["bn1.running_var"][:, None]
        f = (f - mean) / np.sqrt(var + BN_EPS) * p["bn1.weight"][:, None] + p["bn1.bias"][:, None]
    return f


def numpy_coord(x, p, act="hard_swish", gate="sigmoid", **_):
    """f = delta(...) (eq. 6), g^h = sigma(F_h(f^h)) (eq. 7), g^w = sigma(F_w(f^w)) (eq. 8),
    y_c(i, j) = x_c(i, j) g^h_c(i) g^w_c(j) (eq. 9)."""
    h = x.shape[2]
    f = ACTS[act](pre_activation(x, p))
    g_h = GATES[gate](conv1x1(p, "conv_h", f[:, :, :h]))  # (N, C, H)
    g_w = GATES[gate](conv1x1(p, "conv_w", f[:, :, h:]))  # (N, C, W)
    return x * g_h[:, :, :, None] * g_w[:, :, None, :]


def hidden(config):
    """C/r: the configuration's rd_channels, else the paper's code max(8, C // 32) or, with a
    divisor, C / r rounded to its nearest multiple (at least the divisor, then min_channels)."""
    if "rd_channels" in config:
        return config["rd_channels"]
    c, r = config["channels"], config.get("reduction", 32)
    lowest = config.get("min_channels", 8)
    d = config.get("divisor")
    if d is None:
        return max(lowest, int(c // r))
    return max(lowest, d, int(c / r + d / 2) // d * d)


def randomise(layer: nn.Module) -> nn.Module:
    """BatchNorm statistics and affine values away from the identity at initialisation."""
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return layer


class TestCoordAttention(LayerTester):
    layer = CoordAttention
    configs = {  # noqa: RUF012
        "paper": {"channels": 64},  # max(8, 64 // 32) = 8 hidden channels, h-swish, biases
        "c320": {"channels": 320},  # 320 // 32 = 10: a width above the floor of 8
        "timm": {"channels": 64, "reduction": 24, "divisor": 8, "bias": False},
        "relu_no_norm": {"channels": 16, "min_channels": 4, "norm": False, "act": "relu"},
        "silu_hard_gate": {"channels": 12, "rd_channels": 6, "act": "silu", "gate": "hard_sigmoid"},
        "small": {"channels": 8, "rd_channels": 4},
    }
    gradcheck_configs = ("small",)
    compile_configs = ("small",)
    tolerances = {  # noqa: RUF012
        **LayerTester.tolerances,
        # float32 against the float64 formula, measured over 30 seeds x every configuration x
        # 3 shapes x both backends: max |error| 2.6e-7 (outputs up to 1.6), all within
        # rtol 1e-6 alone; atol ~4x that. bfloat16 autocast: measured max |error| 7.7e-3
        "float32": {"rtol": 1e-6, "atol": 1e-6},
    }
    errors = {  # noqa: RUF012
        "act": (
            ValueError,
            r"act: expected one of 'hard_swish', 'relu', 'silu', got 'gelu'",
            lambda: CoordAttention(32, act="gelu"),
        ),
        "gate": (
            ValueError,
            r"gate: expected one of 'sigmoid', .*got 'hardsigmoid'",
            lambda: CoordAttention(32, gate="hardsigmoid"),
        ),
        "reduction": (
            ValueError,
            r"reduction: expected a positive number, got 0",
            lambda: CoordAttention(32, reduction=0),
        ),
        "divisor": (
            ValueError,
            r"divisor: expected an int >= 1, got 0",
            lambda: CoordAttention(32, divisor=0),
        ),
        "rd_channels": (
            TypeError,
            r"rd_channels: expected an int, got 4.0 \(float\)",
            lambda: CoordAttention(32, rd_channels=4.0),
        ),
        "wrong_channels": (
            ValueError,
            r"x: expected 32 channels, got shape \(2, 8, 4, 4\)",
            lambda: CoordAttention(32)(torch.randn(2, 8, 4, 4)),
        ),
        "wrong_rank": (
            ValueError,
            r"x: expected a 4-D tensor \(N, C, H, W\), got a 5-D tensor",
            lambda: CoordAttention(32)(torch.randn(1, 32, 2, 4, 4)),
        ),
    }

    def build(self, config):
        return randomise(CoordAttention(**config))

    def input_shape(self, config):
        return (2, config["channels"], 9, 7)

    def formula(self, x, p, config):
        return numpy_coord(x, p, **config)

    def expected_num_params(self, config):
        """F_1 (C/r x C), F_h and F_w (C x C/r each), their biases, BatchNorm's scale and shift."""
        c, r = config["channels"], hidden(config)
        bias = r + 2 * c if config.get("bias", True) else 0
        return 3 * c * r + bias + (2 * r if config.get("norm", True) else 0)

    def smooth_at(self, layer, x):
        """h-swish's input (after the BatchNorm, training mode) away from its corners -3 and 3."""
        seen = []
        hook = layer.bn1.register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            layer(x)
        finally:
            hook.remove()
        return float((seen[0].abs() - 3).abs().min()) > KINK_MARGIN


@pytest.mark.parametrize(("c", "want"), [(64, 8), (256, 8), (320, 10), (512, 16), (2048, 64)])
def test_paper_width_is_max_8_c_over_32(c, want):
    assert CoordAttention(c).conv1.out_channels == want == coord_channels(c)


# ------------------------------------------------------------------------------ timm interop


@pytest.fixture
def timm_coord():
    return pytest.importorskip("timm.layers.coord_attn")


def test_timm_width_rule_for_every_channel_count():
    """reduction=24, divisor=8 is timm's make_divisible(C * 1/16 * 2/3, 8, round_limit=0) (its
    CoordAttn's default width) for every C up to 20000."""
    make_divisible = pytest.importorskip("timm.layers.helpers").make_divisible

    widths = [make_divisible(c * (1.0 / 16) * (2 / 3), 8, round_limit=0.0) for c in range(1, 20001)]
    assert widths == [coord_channels(c, 24, divisor=8) for c in range(1, 20001)]


def _random_state(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for name, v in module.state_dict().items():
            if v.is_floating_point():
                v.copy_(
                    torch.rand_like(v) + 0.5
                    if name.endswith("running_var")
                    else torch.randn_like(v)
                )
    return module


@pytest.mark.parametrize("c", [64, 256, 512, 2048])
@pytest.mark.parametrize("gate", ["sigmoid", "hard_sigmoid"])
def test_timm_coord_attn_loads_strict_and_matches(c, gate, timm_coord):
    timm_gate = {"sigmoid": "sigmoid", "hard_sigmoid": "hardsigmoid"}[gate]
    theirs = _random_state(timm_coord.CoordAttn(c, gate_layer=timm_gate)).double()
    ours = CoordAttention(c, reduction=24, divisor=8, bias=False, gate=gate).double()
    assert ours.conv1.out_channels == theirs.conv1.out_channels
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(3, c, 7, 5, dtype=torch.float64)
    for mode in ("eval", "train"):  # running statistics, then the batch's (updated alike)
        getattr(theirs, mode)()
        getattr(ours, mode)()
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.bn1.running_mean, theirs.bn1.running_mean)


def test_timm_with_biases_is_the_paper_code_layout(timm_coord):
    """timm's CoordAttn with bias=True and the paper's width is the paper's code's module."""
    theirs = _random_state(timm_coord.CoordAttn(256, rd_channels=8, bias=True)).double().eval()
    ours = CoordAttention(256).double().eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 256, 5, 9, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
