"""Tests of the Global Context block (arXiv:1904.11492, eq. 5; src/visattn/layers/global_context.py):
the battery of layer_tester.py on the configurations of TestGlobalContext (add and scale fusion,
attention and average pooling), then the layer's own tests: initialisation, map kinds, the
context weights, the registry, and timm's GlobalContext loaded with strict=True and computing the
same outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from layer_tester import KINK_MARGIN, LayerTester
from torch import nn

from visattn import GlobalContext, create_attention


def numpy_gc(x, p, fusion="add", use_attn=True, norm_eps=1e-5, **_):
    """alpha = softmax_j(W_k x_j + b_k); c = sum_j alpha_j x_j (GAP without W_k);
    t = W_v2 ReLU(LN(W_v1 c + b_v1)) + b_v2, LN over the C/r values (biased variance, affine);
    z = x + t (eq. 5) or x * sigmoid(t)."""
    n, c, h, w = x.shape
    pre = "mlp_add." if fusion == "add" else "mlp_scale."
    flat = x.reshape(n, c, h * w)
    if use_attn:
        logits = np.einsum("ncj,c->nj", flat, p["conv_attn.weight"][0, :, 0, 0])
        logits = logits + p["conv_attn.bias"][0]
        e = np.exp(logits - logits.max(1, keepdims=True))
        context = np.einsum("ncj,nj->nc", flat, e / e.sum(1, keepdims=True))
    else:
        context = flat.mean(2)
    hid = context @ p[pre + "fc1.weight"][:, :, 0, 0].T + p[pre + "fc1.bias"]
    hid = (hid - hid.mean(1, keepdims=True)) / np.sqrt(hid.var(1, keepdims=True) + norm_eps)
    hid = hid * p[pre + "norm.weight"] + p[pre + "norm.bias"]
    t = np.maximum(hid, 0) @ p[pre + "fc2.weight"][:, :, 0, 0].T + p[pre + "fc2.bias"]
    t = t[:, :, None, None]
    return x + t if fusion == "add" else x * (1 / (1 + np.exp(-t)))


def gc_params(config) -> int:
    """W_k (C) and its bias; W_v1 (C/r x C), b_v1; LN's scale and shift (2 C/r); W_v2, b_v2."""
    c = config["channels"]
    hidden = c / config.get("reduction", 16)
    assert hidden == int(hidden)
    hidden = int(hidden)
    attn = c + 1 if config.get("use_attn", True) else 0
    return attn + 2 * c * hidden + hidden + 2 * hidden + c


def randomise(layer: nn.Module) -> nn.Module:
    """Every parameter random, at the scale of a trained layer: weights N(0, 1 / fan_in), biases
    N(0, 0.2^2), LN's scale in [0.5, 1.5] (W_v2 and b_v2 start at zero, the block then being
    x + 0; LN's affine starts at (1, 0))."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 4:
                p.normal_(0, p[0].numel() ** -0.5)
            else:
                p.normal_(0, 0.2)
    return layer


@torch.no_grad()
def relu_margin(layer: GlobalContext, x: torch.Tensor) -> float:
    """Distance of LN(W_v1 c) (the ReLU's input) from 0."""
    m = layer.mlp
    if layer.conv_attn is not None:
        alpha = layer.context_weights(x).flatten(2)  # (N, 1, HW)
        context = (x.flatten(2) * alpha).sum(2)[:, :, None, None]
    else:
        context = x.mean((2, 3), keepdim=True)
    return float(m.norm(m.fc1(context).flatten(1)).abs().min())


class TestGlobalContext(LayerTester):
    layer = GlobalContext
    configs = {  # noqa: RUF012
        "paper": {"channels": 64},  # r = 16, add fusion, attention pooling
        "scale": {"channels": 32, "reduction": 8, "fusion": "scale"},  # timm's default layout
        "avg_pool": {"channels": 16, "reduction": 4, "use_attn": False},
        "avg_pool_scale": {"channels": 16, "reduction": 4, "use_attn": False, "fusion": "scale"},
        "eps_timm": {"channels": 16, "reduction": 2, "norm_eps": 1e-6},
        "small_add": {"channels": 6, "reduction": 2},
        "small_scale": {"channels": 6, "reduction": 2, "fusion": "scale"},
    }
    gradcheck_configs = ("small_add", "small_scale")
    compile_configs = ("small_add",)
    onnx_configs = ("small_add",)
    tolerances = {  # noqa: RUF012
        **LayerTester.tolerances,
        # Measured over 100 seeds x every configuration (channels_last: 60 seeds x its 5
        # shapes), outputs up to ~7. The LayerNorm over C/r = 3 or 4 values amplifies roundoff
        # where they nearly agree, and x's gradient sums large cancelling terms (the softmax's):
        # float32 against the float64 formula, max |error| 4.9e-6: atol 3x that
        "float32": {"rtol": 1e-6, "atol": 1.5e-5},
        # bfloat16 autocast against float32: max |error| 6.2e-2 (t computed in bfloat16)
        "autocast": {"rtol": 5e-2, "atol": 1.2e-1},
        # channels_last against NCHW: values max |error| 5.2e-6, input gradients 1.5e-4 over
        # 150 seeds (the batched products sum in another order): atol 2x that
        "channels_last": {"rtol": 1e-5, "atol": 3e-4},
        # torch.compile against eager, on the scale of the largest eager value (120 seeds):
        # values 1.1e-6, input gradients 4.7e-6 (one draw's gradients reach 229 where the
        # LayerNorm's three inputs nearly agree: 3.7e-4 unscaled): atol ~3x that
        "compile": {"rtol": 1e-5, "atol": 1.5e-5},
    }
    errors = {  # noqa: RUF012
        "fusion": (
            ValueError,
            r"fusion: expected one of 'add', 'scale', got 'mul'",
            lambda: GlobalContext(32, fusion="mul"),
        ),
        "norm_eps": (
            ValueError,
            r"norm_eps: expected a positive number, got -1",
            lambda: GlobalContext(32, norm_eps=-1),
        ),
        "reduction": (
            ValueError,
            r"reduction: expected a value <= channels \(8\).*got 16",
            lambda: GlobalContext(8),
        ),
        "wrong_channels": (
            ValueError,
            r"x: expected 32 channels, got shape \(2, 8, 4, 4\)",
            lambda: GlobalContext(32)(torch.randn(2, 8, 4, 4)),
        ),
        "wrong_rank": (
            ValueError,
            r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor of shape \(32, 4, 4\)",
            lambda: GlobalContext(32)(torch.randn(32, 4, 4)),
        ),
        "integer_input": (
            TypeError,
            r"x: expected a floating point tensor, got dtype torch.int64",
            lambda: GlobalContext(32)(torch.ones(1, 32, 2, 2, dtype=torch.long)),
        ),
        "context_weights_without_attn": (
            RuntimeError,
            r"context_weights: this block pools by average \(use_attn=False\)",
            lambda: GlobalContext(32, use_attn=False).context_weights(torch.randn(1, 32, 2, 2)),
        ),
    }

    def build(self, config):
        return randomise(GlobalContext(**config))

    def input_shape(self, config):
        return (2, config["channels"], 9, 7)

    def formula(self, x, p, config):
        return numpy_gc(x, p, **config)

    def expected_num_params(self, config):
        return gc_params(config)

    def smooth_at(self, layer, x):
        return relu_margin(layer, x) > KINK_MARGIN


# ------------------------------------------------------------------------------ the layer's own


def test_map_kind_follows_the_fusion():
    x = torch.randn(2, 32, 5, 3)
    add, scale = GlobalContext(32), GlobalContext(32, fusion="scale")
    assert add.map_kind == "residual" and scale.map_kind == "channel"
    assert add.mlp_scale is None and scale.mlp_add is None
    randomise(add)
    torch.testing.assert_close(add(x), x + add.attention(x))
    assert add.attention(x).shape == scale.attention(x).shape == (2, 32, 1, 1)


def test_add_fusion_starts_as_the_identity():
    """W_v2, b_v2 zero at initialisation (the official code's last_zero_init): z = x."""
    layer = GlobalContext(32)
    x = torch.randn(2, 32, 5, 3)
    torch.testing.assert_close(layer(x), x, rtol=0, atol=0)
    assert not torch.equal(
        GlobalContext(32, zero_init_last=False).mlp.fc2.weight, torch.zeros(32, 2, 1, 1)
    )
    assert GlobalContext(32).conv_attn.bias.abs().max() == 0


def test_context_weights_sum_to_one_over_positions():
    layer = randomise(GlobalContext(16))
    x = torch.randn(3, 16, 5, 7)
    alpha = layer.context_weights(x)
    assert alpha.shape == (3, 1, 5, 7) and (alpha > 0).all()
    torch.testing.assert_close(alpha.sum((2, 3)), torch.ones(3, 1))
    logits = layer.conv_attn(x).flatten(2)
    torch.testing.assert_close(alpha.flatten(2), torch.softmax(logits, -1))


def test_registry_builds_it():
    layer = create_attention("gc", 64, fusion="scale", reduction=8)
    assert isinstance(layer, GlobalContext) and layer.mlp.fc1.out_channels == 8
    assert layer.map_kind == "channel"


# ------------------------------------------------------------------------------ timm interop

TIMM_CASES = {  # name -> (timm's arguments, ours), C = 32
    "add_r16": (
        {"fuse_add": True, "fuse_scale": False, "rd_ratio": 1 / 16},
        {"fusion": "add", "reduction": 16},
    ),
    "timm_default": ({}, {"fusion": "scale", "reduction": 8}),  # fuse_scale, rd_ratio 1/8
    "avg_pool_add": (
        {"use_attn": False, "fuse_add": True, "fuse_scale": False, "rd_ratio": 1 / 4},
        {"use_attn": False, "fusion": "add", "reduction": 4},
    ),
}


@pytest.mark.parametrize("case", list(TIMM_CASES))
def test_timm_state_dict_loads_and_gives_the_same_output(case):
    layers = pytest.importorskip("timm.layers")
    timm_kw, ours_kw = TIMM_CASES[case]
    theirs = randomise(layers.GlobalContext(32, **timm_kw)).double().eval()
    ours = GlobalContext(32, norm_eps=1e-6, **ours_kw).double().eval()  # timm's LayerNorm2d eps
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 32, 7, 5, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-12, atol=1e-12)
    # the paper's epsilon (1e-5) gives another output: norm_eps is what reproduces timm's
    paper_eps = GlobalContext(32, **ours_kw).double().eval()
    paper_eps.load_state_dict(theirs.state_dict(), strict=True)
    assert not torch.allclose(paper_eps(x), theirs(x), rtol=1e-12, atol=1e-12)
