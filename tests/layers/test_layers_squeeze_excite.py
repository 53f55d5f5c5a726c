"""Tests of SqueezeExcite (SE paper eq. 2-4; src/visattn/layers/squeeze_excite.py).

The battery of layer_tester.py (smoke, exception, cardinality, feature against the NumPy formula
written here, gradcheck, autocast, compile, channels_last, ONNX) runs on the configurations of
``TestSqueezeExcite``; the SE-specific tests follow it.
"""

from __future__ import annotations

import numpy as np
import torch
from layer_tester import KINK_MARGIN, LayerTester, min_gap

from visattn import SqueezeExcite
from visattn.layers import reduced_channels

NUMPY_GATES = {
    "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    "hard_sigmoid": lambda v: np.clip((v + 3) / 6, 0, 1),
    "tanh": np.tanh,
    "relu": lambda v: np.maximum(0, v),
}


def numpy_se(x, p, squeeze="avg", gate="sigmoid", **_):
    """z = pool(u) (eq. 2); s = gate(W2 relu(W1 z + b1) + b2) (eq. 3); x~ = s * u (eq. 4)."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    z = flat.mean(-1) if squeeze == "avg" else flat.max(-1)
    w1, w2 = p["fc1.weight"][:, :, 0, 0], p["fc2.weight"][:, :, 0, 0]
    b1, b2 = p.get("fc1.bias", 0.0), p.get("fc2.bias", 0.0)
    hidden = np.maximum(0, z @ w1.T + b1)
    s = NUMPY_GATES[gate](hidden @ w2.T + b2)
    return x * s[:, :, None, None]


class TestSqueezeExcite(LayerTester):
    layer = SqueezeExcite
    configs = {  # noqa: RUF012
        "paper": {"channels": 32},  # r = 16: 2 hidden channels
        "r4": {"channels": 16, "reduction": 4},
        "avg": {"channels": 24, "reduction": 4},
        "max": {"channels": 24, "reduction": 4, "squeeze": "max"},
        "max_hard_sigmoid_no_bias": {
            "channels": 64,
            "reduction": 4,
            "squeeze": "max",
            "gate": "hard_sigmoid",
            "bias": False,
        },
        "tanh": {"channels": 16, "reduction": 4, "gate": "tanh"},
        "relu": {"channels": 16, "reduction": 4, "gate": "relu"},
        "rd_channels": {"channels": 24, "rd_channels": 5},
        "small": {"channels": 8, "reduction": 2},
        "small_max_hard_sigmoid": {
            "channels": 8,
            "reduction": 2,
            "squeeze": "max",
            "gate": "hard_sigmoid",
        },
    }
    gradcheck_configs = ("small", "small_max_hard_sigmoid")
    compile_configs = ("r4",)
    onnx_configs = ("r4",)
    tolerances = {  # noqa: RUF012
        **LayerTester.tolerances,
        # float32 (C++ kernels under "auto", formulas under "reference") against the float64
        # formula, measured over 30 seeds x every configuration x 3 shapes: max |error|
        # 3.2e-7 (outputs up to ~4); atol ~4x that, rtol adds 1e-6 |value|
        "float32": {"rtol": 1e-6, "atol": 1.2e-6},
    }
    errors = {  # noqa: RUF012
        "reduction_larger_than_channels": (
            ValueError,
            r"reduction: expected a value <= channels \(8\).*got 16",
            lambda: SqueezeExcite(8),
        ),
        "reduction_not_positive": (
            ValueError,
            r"reduction: expected a positive number, got 0",
            lambda: SqueezeExcite(8, reduction=0),
        ),
        "wrong_channels": (
            ValueError,
            r"x: expected 32 channels, got shape \(1, 16, 4, 4\)",
            lambda: SqueezeExcite(32)(torch.randn(1, 16, 4, 4)),
        ),
        "wrong_rank": (
            ValueError,
            r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor of shape \(32, 4, 4\)",
            lambda: SqueezeExcite(32)(torch.randn(32, 4, 4)),
        ),
        "not_a_tensor": (
            TypeError,
            r"x: expected a torch.Tensor, got",
            lambda: SqueezeExcite(32)(np.zeros((1, 32, 4, 4))),
        ),
        "unknown_gate": (
            ValueError,
            r"gate: expected one of .*got 'softmax'",
            lambda: SqueezeExcite(32, gate="softmax"),
        ),
        "unknown_squeeze": (
            ValueError,
            r"squeeze: expected one of .*got 'mean'",
            lambda: SqueezeExcite(32, squeeze="mean"),
        ),
        "channels_not_int": (
            TypeError,
            r"channels: expected an int, got 32.0 \(float\)",
            lambda: SqueezeExcite(32.0),
        ),
        "rd_channels_zero": (
            ValueError,
            r"rd_channels: expected an int >= 1, got 0",
            lambda: SqueezeExcite(32, rd_channels=0),
        ),
    }

    def input_shape(self, config):
        return (2, config["channels"], 9, 7)

    def formula(self, x, p, config):
        return numpy_se(x, p, **config)

    def expected_num_params(self, config):
        # SE paper §4 (eq. 5): W_1 and W_2 add 2 C^2 / r weights (C x C/r each); the biases
        # C/r + C more. The configurations keep C/r whole.
        c = config["channels"]
        hidden = config.get("rd_channels") or c / config.get("reduction", 16)
        assert hidden == int(hidden)
        biases = hidden + c if config.get("bias", True) else 0
        return int(2 * c * hidden + biases)

    def smooth_at(self, layer, x):
        """Away from the bottleneck's ReLU corner, max-pool ties and the gate's corners."""
        z = x.amax((2, 3)) if layer.squeeze == "max" else x.mean((2, 3))
        w1, w2 = layer.fc1.weight[:, :, 0, 0], layer.fc2.weight[:, :, 0, 0]
        b1 = layer.fc1.bias if layer.fc1.bias is not None else 0
        b2 = layer.fc2.bias if layer.fc2.bias is not None else 0
        h = z @ w1.T + b1
        logits = h.clamp_min(0) @ w2.T + b2
        margins = [h.abs().min()]
        if layer.squeeze == "max":
            margins.append(min_gap(x.flatten(2), -1))
        if layer.gate == "hard_sigmoid":
            margins.append((logits.abs() - 3).abs().min())
        if layer.gate == "relu":
            margins.append(logits.abs().min())
        return min(float(m) for m in margins) > KINK_MARGIN


def test_default_reduction_is_16():
    m = SqueezeExcite(32)
    assert m(torch.randn(2, 32, 5, 5)).shape == (2, 32, 5, 5)
    assert m.fc1.out_channels == 2


def test_options():
    m = SqueezeExcite(64, reduction=4, squeeze="max", gate="hard_sigmoid", bias=False)
    assert m.fc1.bias is None and m.fc1.out_channels == 16
    assert m(torch.randn(1, 64, 3, 3)).shape == (1, 64, 3, 3)


def test_divisor_rounds_like_timm():
    assert reduced_channels(64, 16, divisor=8) == 8
    assert reduced_channels(256, 16, divisor=8) == 16
    assert reduced_channels(100, 16, divisor=8) == 8


def test_excitation_is_the_gate():
    """``excitation(x)`` is s of eq. 3: the forward is x * excitation(x)."""
    m = SqueezeExcite(16, reduction=4).double()
    x = torch.randn(2, 16, 5, 3, dtype=torch.float64)
    s = m.excitation(x)
    assert s.shape == (2, 16, 1, 1)
    torch.testing.assert_close(m(x), x * s)
