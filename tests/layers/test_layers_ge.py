"""Tests of Gather-Excite (arXiv:1810.12348, §3-4; src/visattn/layers/gather_excite.py): the
battery of layer_tester.py on the configurations of TestGatherExcite (GE-theta^-, GE-theta and
GE-theta^+ at global and finite extents), then the layer's own tests: options, map kinds, the
registry, and timm's GatherExcite loaded with strict=True and computing the same outputs.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from layer_tester import KINK_MARGIN, LayerTester
from torch import nn

from visattn import GatherExcite, create_attention

BN_EPS = 1e-5  # nn.BatchNorm2d's default, the gather's BatchNorms (as timm's)


# ------------------------------------------------------------------------------ NumPy formula


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def np_avg_gather(x, e):
    """GE-theta^-: unit (u, v) averages the units within e - 1 of (e u, e v) inside the map."""
    n, c, h, w = x.shape
    ho, wo = -(-h // e), -(-w // e)
    out = np.empty((n, c, ho, wo))
    for u in range(ho):
        rows = slice(max(e * u - (e - 1), 0), min(e * u + e, h))
        for v in range(wo):
            cols = slice(max(e * v - (e - 1), 0), min(e * v + e, w))
            out[:, :, u, v] = x[:, :, rows, cols].mean((2, 3))
    return out


def np_depthwise(x, w, stride, pad):
    kh, kw = w.shape[2:]
    padded = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    ho = (padded.shape[2] - kh) // stride + 1
    wo = (padded.shape[3] - kw) // stride + 1
    out = np.zeros((*x.shape[:2], ho, wo))
    for a in range(kh):
        for b in range(kw):
            rows = slice(a, a + stride * (ho - 1) + 1, stride)
            cols = slice(b, b + stride * (wo - 1) + 1, stride)
            out += padded[:, :, rows, cols] * w[None, :, 0, a, b, None, None]
    return out


def numpy_ge(x, p, extent=0, extra_params=False, use_mlp=False, global_padding="none", **_):
    """y = x * sigmoid(interp(MLP(xi_G(x)))): xi_G average pooling (GE-theta^-) or depthwise
    convolutions + BatchNorm (running statistics) with ReLU between (GE-theta); MLP only with
    use_mlp (GE-theta^+); interp nearest neighbour (row i reads floor(i H' / H))."""
    e = 0 if extent == "global" else extent
    h, w = x.shape[2:]
    if not extra_params:
        g = x.mean((2, 3), keepdims=True) if e == 0 else np_avg_gather(x, e)
    else:
        count = 1 if e == 0 else int(math.log2(e))
        g = x
        for i in range(1, count + 1):
            k = p[f"gather.conv{i}.weight"]
            if e == 0:
                kh, kw = k.shape[2:]
                pad = ((kh - 1) // 2, (kw - 1) // 2) if global_padding == "timm" else (0, 0)
                g = np_depthwise(g, k, 1, pad)
            else:
                g = np_depthwise(g, k, 2, (1, 1))
            mean, var = p[f"gather.norm{i}.running_mean"], p[f"gather.norm{i}.running_var"]
            gamma, beta = p[f"gather.norm{i}.weight"], p[f"gather.norm{i}.bias"]
            g = (g - mean[:, None, None]) / np.sqrt(var[:, None, None] + BN_EPS)
            g = g * gamma[:, None, None] + beta[:, None, None]
            if i != count:
                g = np.maximum(g, 0)
    if use_mlp:
        w1, w2 = p["mlp.fc1.weight"][:, :, 0, 0], p["mlp.fc2.weight"][:, :, 0, 0]
        hid = np.einsum("nchw,dc->ndhw", g, w1) + p["mlp.fc1.bias"][:, None, None]
        g = np.einsum("nchw,dc->ndhw", np.maximum(hid, 0), w2) + p["mlp.fc2.bias"][:, None, None]
    s = sigmoid(g)
    if s.shape[2:] != (1, 1):
        rows, cols = (np.arange(h) * s.shape[2]) // h, (np.arange(w) * s.shape[3]) // w
        s = s[:, :, rows][:, :, :, cols]
    return x * s


def ge_params(config) -> int:
    """GE-theta: log2(e) depthwise 3 x 3 kernels (9 C each) and BatchNorms (2 C each); global:
    one H x W kernel (C H W) and a BatchNorm; GE-theta^+: 1 x 1 convs C -> C/r -> C with biases."""
    c, e = config["channels"], config.get("extent", 0)
    count = 0
    if config.get("extra_params"):
        if e == 0:
            h, w = config["feat_size"]
            count += c * h * w + 2 * c
        else:
            count += int(math.log2(e)) * (9 * c + 2 * c)
    if config.get("use_mlp"):
        hidden = c / config.get("reduction", 16)
        assert hidden == int(hidden)
        count += int(2 * c * hidden + hidden + c)
    return count


def randomise(layer: nn.Module) -> nn.Module:
    """BatchNorm statistics and affine values away from the identity of their initialisation."""
    with torch.no_grad():
        for bn in layer.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.normal_(0, 0.2)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0, 0.2)
    return layer


@torch.no_grad()
def relu_margin(layer: GatherExcite, x: torch.Tensor) -> float:
    """Distance from 0 of every ReLU input: between the gather's convolutions, in the MLP."""
    margins, g = [], x
    if layer.gather is not None:
        for m in layer.gather:
            if isinstance(m, nn.ReLU):
                margins.append(float(g.abs().min()))
            g = m(g) if not isinstance(m, nn.Conv2d) else nn.functional.conv2d(
                g, m.weight, None, m.stride, m.padding, 1, m.groups
            )  # fmt: skip
    else:
        g = x.mean((2, 3), keepdim=True)
    if layer.mlp is not None:
        margins.append(float(layer.mlp.fc1(g).abs().min()))
    return min(margins, default=float("inf"))


FEAT = (4, 5)  # the global parametric gather's size: the tester's gradcheck input is 4 x 5


class TestGatherExcite(LayerTester):
    layer = GatherExcite
    configs = {  # noqa: RUF012
        "paper": {"channels": 32},  # GE-theta^-, global extent
        "minus_e2": {"channels": 8, "extent": 2},
        "minus_e3": {"channels": 6, "extent": 3},
        "minus_e8": {"channels": 8, "extent": 8},
        "minus_mlp": {"channels": 8, "use_mlp": True, "reduction": 2},  # timm's default (= SE)
        "theta_e4": {"channels": 8, "extent": 4, "extra_params": True},
        "plus_e2": {
            "channels": 8,
            "extent": 2,
            "extra_params": True,
            "use_mlp": True,
            "reduction": 4,
        },
        "plus_e8": {"channels": 32, "extent": 8, "extra_params": True, "use_mlp": True},
        "plus_e4_small": {
            "channels": 4,
            "extent": 4,
            "extra_params": True,
            "use_mlp": True,
            "reduction": 2,
        },
        "theta_global": {"channels": 8, "extra_params": True, "feat_size": FEAT},
        "plus_global": {
            "channels": 4,
            "extra_params": True,
            "use_mlp": True,
            "reduction": 2,
            "feat_size": FEAT,
        },
        "plus_global_timm": {
            "channels": 8,
            "extra_params": True,
            "use_mlp": True,
            "reduction": 4,
            "feat_size": (7, 6),
            "global_padding": "timm",
        },
    }
    # with parameters (the tester checks their gradients too); GE-theta^-'s input gradient is
    # test_functional_ge.py's gradcheck
    gradcheck_configs = ("plus_e4_small", "plus_global")
    # the fused channel gate (the default); convolutions, BatchNorm, MLP, interpolation
    compile_configs = ("paper", "plus_e4_small")
    onnx_configs = ("paper", "minus_e2", "plus_e4_small")  # + the average pooling
    tolerances = {  # noqa: RUF012
        **LayerTester.tolerances,
        # float32 against the float64 formula, measured over 30 seeds x every configuration x
        # 3 shapes x both backends: max |error| 2.9e-7 (outputs up to ~4); atol ~3.5x that
        "float32": {"rtol": 1e-6, "atol": 1e-6},
        # bfloat16 autocast (the default 5e-2): measured max |error| 8.1e-3 over the same seeds
    }
    errors = {  # noqa: RUF012
        "extent_1": (
            ValueError,
            r"extent: expected 0 or 'global' \(a global extent\) or an int >= 2, got 1",
            lambda: GatherExcite(8, extent=1),
        ),
        "extent_not_power_of_2": (
            ValueError,
            r"extent: expected a power of 2 with extra_params=True .*got 6",
            lambda: GatherExcite(8, extent=6, extra_params=True),
        ),
        "feat_size_missing": (
            ValueError,
            r"feat_size: expected the input's \(H, W\) for the global gather with "
            r"extra_params=True .*got None",
            lambda: GatherExcite(8, extra_params=True),
        ),
        "feat_size_unused": (
            ValueError,
            r"feat_size: expected None \(only the global gather with extra_params=True uses it\), "
            r"got \(7, 7\)",
            lambda: GatherExcite(8, extent=2, extra_params=True, feat_size=(7, 7)),
        ),
        "feat_size_zero": (
            ValueError,
            r"feat_size: expected ints >= 1, got \(0, 7\)",
            lambda: GatherExcite(8, extra_params=True, feat_size=(0, 7)),
        ),
        "global_padding": (
            ValueError,
            r"global_padding: expected one of 'none', 'timm', got 'same'",
            lambda: GatherExcite(8, global_padding="same"),
        ),
        "reduction": (
            ValueError,
            r"reduction: expected a value <= channels \(8\).*got 16",
            lambda: GatherExcite(8, use_mlp=True),
        ),
        "wrong_channels": (
            ValueError,
            r"x: expected 8 channels, got shape \(2, 4, 5, 5\)",
            lambda: GatherExcite(8)(torch.randn(2, 4, 5, 5)),
        ),
        "wrong_rank": (
            ValueError,
            r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor of shape \(8, 5, 5\)",
            lambda: GatherExcite(8, extent=2)(torch.randn(8, 5, 5)),
        ),
        "wrong_size_for_global": (
            ValueError,
            r"x: expected the spatial size \(4, 5\) of the global gather's kernel.*"
            r"got shape \(1, 8, 5, 5\)",
            lambda: GatherExcite(8, extra_params=True, feat_size=FEAT)(torch.randn(1, 8, 5, 5)),
        ),
    }

    def build(self, config):
        return randomise(GatherExcite(**config))

    def input_shape(self, config):
        h, w = config.get("feat_size", (9, 7))
        return (2, config["channels"], h, w)

    def shapes(self, config):
        if "feat_size" in config:  # the global parametric gather takes its own size only
            n, c, h, w = self.input_shape(config)
            return [(n, c, h, w), (1, c, h, w), (3, c, h, w)]
        return super().shapes(config)

    def layout_shapes(self, config):
        if "feat_size" in config:
            return self.shapes(config)
        return super().layout_shapes(config)

    def formula(self, x, p, config):
        return numpy_ge(x, p, **config)

    def expected_num_params(self, config):
        return ge_params(config)

    def smooth_at(self, layer, x):
        return relu_margin(layer, x) > KINK_MARGIN


# ------------------------------------------------------------------------------ the layer's own


@pytest.mark.parametrize(
    ("config", "kind"),
    [
        ({}, "channel"),
        ({"extent": "global"}, "channel"),
        ({"extent": 2}, "mixed"),
        ({"extra_params": True, "feat_size": 7}, "channel"),
        ({"extra_params": True, "feat_size": 7, "global_padding": "timm"}, "mixed"),
        ({"extent": 4, "extra_params": True, "use_mlp": True}, "mixed"),
    ],
)
def test_map_kind_follows_the_extent(config, kind):
    """A global gather gives a channel gate (N, C, 1, 1), a finite extent a map of x's shape."""
    layer = GatherExcite(32, **config)
    assert layer.map_kind == kind
    x = torch.randn(2, 32, 7, 7)
    assert layer.attention(x).shape == ((2, 32, 1, 1) if kind == "channel" else x.shape)


def test_defaults_are_the_parameter_free_global_operator():
    layer = GatherExcite(64)
    assert layer.extent == 0 and layer.gather is None and layer.mlp is None
    assert sum(p.numel() for p in layer.parameters()) == 0
    x = torch.randn(2, 64, 5, 3)
    torch.testing.assert_close(layer(x), x * torch.sigmoid(x.mean((2, 3), keepdim=True)))


def test_gather_layout_is_timms():
    """conv, norm, act per stage (no act after the last), 3 x 3 stride 2 depthwise, no bias."""
    layer = GatherExcite(16, extent=8, extra_params=True, use_mlp=True)
    names = [name for name, _ in layer.gather.named_children()]
    assert names == ["conv1", "norm1", "act1", "conv2", "norm2", "act2", "conv3", "norm3"]
    conv = layer.gather.conv1
    assert conv.groups == 16 and conv.kernel_size == (3, 3) and conv.stride == (2, 2)
    assert conv.bias is None
    assert set(layer.state_dict()) >= {"mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight"}


def test_registry_builds_it():
    layer = create_attention("ge", 64, extent=4)
    assert isinstance(layer, GatherExcite) and layer.extent == 4 and layer.map_kind == "mixed"


# ------------------------------------------------------------------------------ timm interop


def _timm_gather_excite(monkeypatch, channels, **kwargs):
    """timm's GatherExcite. timm 1.0.31 passes its {'device': ..., 'dtype': ...} dictionary to
    create_conv2d, nn.BatchNorm2d and ConvMlp with * instead of **, so the two keys arrive as
    positional arguments and the module cannot be built with extra_params or use_mlp; these
    wrappers drop those two strings and change nothing else (with a fixed timm they do nothing)."""
    module = pytest.importorskip("timm.layers.gather_excite")

    def dropping(f):
        def call(*args, **kw):
            return f(
                *(a for a in args if not (isinstance(a, str) and a in ("device", "dtype"))), **kw
            )

        return call

    monkeypatch.setattr(module, "create_conv2d", dropping(module.create_conv2d))
    monkeypatch.setattr(module, "ConvMlp", dropping(module.ConvMlp))
    patched_nn = SimpleNamespace(**vars(nn))
    patched_nn.BatchNorm2d = dropping(nn.BatchNorm2d)
    monkeypatch.setattr(module, "nn", patched_nn)
    return module.GatherExcite(channels, **kwargs)


TIMM_CASES = {  # name -> (timm's arguments, ours), C = 16
    "minus_global": ({"use_mlp": False}, {}),
    "minus_e2": ({"extent": 2, "use_mlp": False}, {"extent": 2}),
    "minus_e4": ({"extent": 4, "use_mlp": False}, {"extent": 4}),
    "timm_default": ({"rd_ratio": 1 / 4}, {"use_mlp": True, "reduction": 4}),
    "minus_e2_mlp": (
        {"extent": 2, "rd_ratio": 1 / 4},
        {"extent": 2, "use_mlp": True, "reduction": 4},
    ),
    "theta_e4": (
        {"extent": 4, "extra_params": True, "use_mlp": False},
        {"extent": 4, "extra_params": True},
    ),
    "plus_e8": (
        {"extent": 8, "extra_params": True},
        {"extent": 8, "extra_params": True, "use_mlp": True},
    ),
    "plus_global_timm": (
        {"extra_params": True, "feat_size": (7, 6), "rd_ratio": 1 / 4},
        {
            "extra_params": True,
            "feat_size": (7, 6),
            "global_padding": "timm",
            "use_mlp": True,
            "reduction": 4,
        },
    ),
}


@pytest.mark.parametrize("case", list(TIMM_CASES))
def test_timm_state_dict_loads_and_gives_the_same_output(case, monkeypatch):
    timm_kw, ours_kw = TIMM_CASES[case]
    theirs = randomise(_timm_gather_excite(monkeypatch, 16, **timm_kw)).double()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.5)
    ours = GatherExcite(16, **ours_kw).double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 16, 7, 6, dtype=torch.float64)
    for mode in ("eval", "train"):  # running statistics; batch statistics
        getattr(theirs, mode)(), getattr(ours, mode)()
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)


def test_timms_global_gather_is_not_global_and_the_papers_is():
    """The paper's global GE-theta context is one value per channel (padding 0); timm's, padded by
    (k - 1) // 2, varies over positions: the two differ, hence ``global_padding``."""
    paper = randomise(GatherExcite(8, extra_params=True, feat_size=(7, 6))).eval()
    timm_like = GatherExcite(8, extra_params=True, feat_size=(7, 6), global_padding="timm").eval()
    timm_like.load_state_dict(paper.state_dict(), strict=True)
    x = torch.randn(2, 8, 7, 6)
    assert paper.attention(x).shape == (2, 8, 1, 1)
    assert timm_like.attention(x).shape == (2, 8, 7, 6)
    assert not torch.allclose(paper(x), timm_like(x))
