"""Tests of ECA, CECA and ESE (src/visattn/layers/eca.py): ECA (arXiv:1910.03151, eq. 9 and 12),
circular ECA (timm's CecaModule) and effective SE (arXiv:1911.06667, Sec. 3.3).

The battery of layer_tester.py (smoke, exception, cardinality, feature against the NumPy formulas
written here, gradcheck, autocast, compile, channels_last, attention map, ONNX) runs for each
layer; then their own tests: eq. 12's kernel sizes, and timm's modules' state_dicts loaded with
strict=True giving the same outputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from layer_tester import KINK_MARGIN, LayerTester

from visattn import CECA, ECA, ESE

timm_layers = pytest.importorskip("timm.layers")


def band_matrix(w, c, circular):
    """ECA's W_k (eq. 6 with the weights shared, eq. 8): row c holds w_j at column c + j - k // 2;
    outside 0 ... C - 1 the column is dropped (zero padding) or taken mod C (circular, where a
    k > C wraps onto one column more than once, hence +=)."""
    k = w.shape[0]
    m = np.zeros((c, c))
    for row in range(c):
        for j in range(k):
            col = row + j - k // 2
            if circular:
                m[row, col % c] += w[j]
            elif 0 <= col < c:
                m[row, col] += w[j]
    return m


def numpy_eca(x, p, circular=False):
    """s = sigmoid(W_k GAP(x)) (eq. 7-9), out = s * x."""
    y = x.mean((2, 3))  # (N, C)
    w = p["conv.weight"][0, 0]  # (k,)
    s = 1 / (1 + np.exp(-(y @ band_matrix(w, x.shape[1], circular).T)))
    return x * s[:, :, None, None]


def numpy_ese(x, p):
    """s = hard_sigmoid(W_C GAP(x) + b_C), hard_sigmoid(v) = min(max((v + 3) / 6, 0), 1)."""
    logits = x.mean((2, 3)) @ p["fc.weight"][:, :, 0, 0].T + p["fc.bias"]
    return x * np.minimum(np.maximum((logits + 3) / 6, 0), 1)[:, :, None, None]


def psi(c, gamma=2, b=1):
    """Eq. 12, written here: t = int(|log2(C) / gamma + b / gamma|), made odd (upwards)."""
    t = int(abs(math.log2(c) / gamma + b / gamma))
    return t if t % 2 else t + 1


# float32 against the float64 NumPy formula, measured over 200 seeds x every configuration of
# the three layers x the tester's 3 shapes: max |error| 3.6e-7 (outputs up to 4.7), at most 0.11
# of atol + rtol |want| below; bfloat16 autocast (default tolerance 5e-2): max |error| 1.0e-2
FLOAT32 = {"rtol": 1e-6, "atol": 1e-6}


class TestECA(LayerTester):
    layer = ECA
    configs = {  # noqa: RUF012
        "paper": {"channels": 64},  # psi(64) = 3
        "c256": {"channels": 256},  # psi(256) = 5: a configuration where k differs
        "c4": {"channels": 4},  # psi(4) = 1: no interaction across channels (timm: 3)
        "k3": {"channels": 10, "kernel_size": 3},
        "k7_c5": {"channels": 5, "kernel_size": 7},  # k > C: padding on both sides of every c
        "gamma1_b0": {"channels": 64, "gamma": 1, "b": 0},  # psi = 7
    }
    gradcheck_configs = ("k3",)
    compile_configs = ("k3",)
    onnx_configs = ("k3",)
    tolerances = {**LayerTester.tolerances, "float32": FLOAT32}  # noqa: RUF012
    errors = {  # noqa: RUF012
        "even": (
            ValueError,
            r"kernel_size: expected an odd int >= 1, got 4",
            lambda: ECA(8, kernel_size=4),
        ),
        "kernel_zero": (
            ValueError,
            r"kernel_size: expected an int >= 1, got 0",
            lambda: ECA(8, kernel_size=0),
        ),
        "kernel_float": (
            TypeError,
            r"kernel_size: expected an int, got 3.0 \(float\)",
            lambda: ECA(8, kernel_size=3.0),
        ),
        "channels": (ValueError, r"channels: expected an int >= 1, got 0", lambda: ECA(0)),
        "gamma": (
            ValueError,
            r"gamma: expected a positive number, got -2",
            lambda: ECA(8, gamma=-2),
        ),
        "x_3d": (
            ValueError,
            r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor of shape \(8, 5, 5\)",
            lambda: ECA(8)(torch.randn(8, 5, 5)),
        ),
        "wrong_channels": (
            ValueError,
            r"x: expected 8 channels, got shape \(2, 6, 4, 4\)",
            lambda: ECA(8)(torch.randn(2, 6, 4, 4)),
        ),
    }

    def input_shape(self, config):
        return (2, config["channels"], 7, 9)

    def formula(self, x, p, config):
        return numpy_eca(x, p)

    def expected_num_params(self, config):  # the 1-D convolution's k weights, no bias
        return config.get("kernel_size") or psi(
            config["channels"], config.get("gamma", 2), config.get("b", 1)
        )


class TestCECA(TestECA):
    layer = CECA
    configs = {  # noqa: RUF012
        "paper": {"channels": 64},
        "c256": {"channels": 256},
        "k3": {"channels": 10, "kernel_size": 3},
        "wrap": {"channels": 3, "kernel_size": 9},  # k // 2 = 4 > C: wraps more than once
    }
    gradcheck_configs = ("k3", "wrap")
    compile_configs = ("k3",)
    onnx_configs = ("wrap",)
    errors = {  # noqa: RUF012
        "even": (
            ValueError,
            r"kernel_size: expected an odd int >= 1, got 2",
            lambda: CECA(8, kernel_size=2),
        ),
        "wrong_channels": (
            ValueError,
            r"x: expected 8 channels, got shape \(2, 6, 4, 4\)",
            lambda: CECA(8).attention(torch.randn(2, 6, 4, 4)),
        ),
    }

    def formula(self, x, p, config):
        return numpy_eca(x, p, circular=True)


class TestESE(LayerTester):
    layer = ESE
    configs = {  # noqa: RUF012
        "paper": {"channels": 32},
        "small": {"channels": 6},
        "c1": {"channels": 1},
    }
    gradcheck_configs = ("small",)
    compile_configs = ("small",)
    onnx_configs = ("small",)
    tolerances = {**LayerTester.tolerances, "float32": FLOAT32}  # noqa: RUF012
    errors = {  # noqa: RUF012
        "channels": (TypeError, r"channels: expected an int, got 8.0 \(float\)", lambda: ESE(8.0)),
        "x_int": (
            TypeError,
            r"x: expected a floating point tensor, got dtype torch.int64",
            lambda: ESE(4)(torch.ones(1, 4, 2, 2, dtype=torch.long)),
        ),
        "wrong_channels": (
            ValueError,
            r"x: expected 4 channels, got shape \(1, 3, 2, 2\)",
            lambda: ESE(4)(torch.randn(1, 3, 2, 2)),
        ),
    }

    def build(self, config):
        """Biases spread over (-5, 5): some channels sit on the hard sigmoid's clamps (s = 0 or
        1), the others on its slope, so the feature test meets both."""
        layer = ESE(**config)
        with torch.no_grad():
            layer.fc.bias.uniform_(-5, 5)
        return layer

    def input_shape(self, config):
        return (2, config["channels"], 7, 9)

    def formula(self, x, p, config):
        return numpy_ese(x, p)

    def expected_num_params(self, config):  # W_C (C x C) and b_C
        return config["channels"] ** 2 + config["channels"]

    def smooth_at(self, layer, x):
        """Away from the hard sigmoid's corners at logits -3 and 3."""
        logits = x.mean((2, 3)) @ layer.fc.weight[:, :, 0, 0].T + layer.fc.bias
        return float(((logits.abs() - 3).abs()).min()) > KINK_MARGIN


# ---------------------------------------------------------------------------------- eq. 12


@pytest.mark.parametrize(("c", "k"), [(1, 1), (2, 1), (7, 1), (8, 3), (64, 3), (256, 5), (2048, 7)])
@pytest.mark.parametrize("cls", [ECA, CECA])
def test_kernel_size_follows_eq_12(cls, c, k):
    layer = cls(c)
    assert layer.conv.kernel_size == (k,) == (psi(c),) and layer.kernel_size == k


def test_kernel_size_overrides_psi():
    assert ECA(64, kernel_size=9).kernel_size == 9
    assert ECA(64, gamma=1, b=0).kernel_size == 7  # t = 6, made odd upwards


# ------------------------------------------------------------------------------------ timm


def _randomised(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)
    return module.eval()


@pytest.mark.parametrize(
    ("ours", "theirs", "c", "kwargs"),
    [
        (ECA, "EcaModule", 8, {}),
        (ECA, "EcaModule", 64, {}),
        (ECA, "EcaModule", 256, {}),
        (ECA, "EcaModule", 4, {"kernel_size": 3}),  # C < 8: timm's max(psi(C), 3)
        (CECA, "CecaModule", 8, {}),
        (CECA, "CecaModule", 256, {}),
        (CECA, "CecaModule", 4, {"kernel_size": 3}),
        (ESE, "EffectiveSEModule", 16, {}),
        (ESE, "EffectiveSEModule", 5, {}),
    ],
)
def test_timm_state_dict_loads_and_matches(ours, theirs, c, kwargs):
    """timm's module with random weights: its state_dict loads into ours with strict=True (and
    ours into timm's), and both give the same output."""
    timm_module = _randomised(getattr(timm_layers, theirs)(c))
    layer = ours(c, **kwargs).eval()
    layer.load_state_dict(timm_module.state_dict(), strict=True)
    timm_module.load_state_dict(layer.state_dict(), strict=True)
    x = torch.randn(3, c, 7, 5) * 3
    with torch.no_grad():
        torch.testing.assert_close(layer(x), timm_module(x), rtol=1e-6, atol=1e-7)


def test_timm_kernel_size_differs_below_8_channels():
    """The documented difference: eq. 12 gives k = 1 for C < 8, timm takes at least 3."""
    assert ECA(4).kernel_size == 1 and CECA(7).kernel_size == 1
    assert timm_layers.EcaModule(4).conv.kernel_size == (3,)
    assert timm_layers.CecaModule(7).conv.kernel_size == (3,)
