"""Tests of BAM (arXiv:1807.06514, eq. 1-4; src/visattn/layers/bam.py): the battery of
layer_tester.py on the configurations of TestBAM (the paper's layout and the official code's),
then BAM's own tests (the official code's state_dict names, the parameter count)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from layer_tester import KINK_MARGIN, LayerTester
from torch import nn

from visattn import BAM

BN_EPS = 1e-5  # nn.BatchNorm's default


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def bn(v, p, name):
    """Evaluation-mode BatchNorm ``name`` over axis 1, or v when the layer has none there."""
    if name + ".weight" not in p:
        return v
    shape = (1, -1) + (1,) * (v.ndim - 2)
    mean, var = p[name + ".running_mean"].reshape(shape), p[name + ".running_var"].reshape(shape)
    gamma, beta = p[name + ".weight"].reshape(shape), p[name + ".bias"].reshape(shape)
    return (v - mean) / np.sqrt(var + BN_EPS) * gamma + beta


def conv(x, w, b, d=1):
    """nn.Conv2d with dilation d and padding d (k // 2): zero-padded cross-correlation."""
    n, _, h, wd = x.shape
    k = w.shape[-1]
    r = d * (k // 2)
    padded = np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)))
    out = np.zeros((n, w.shape[0], h, wd)) + b[None, :, None, None]
    for i in range(k):
        for j in range(k):
            win = padded[:, :, i * d : i * d + h, j * d : j * d + wd]
            out += np.einsum("nihw,oi->nohw", win, w[:, :, i, j])
    return out


def channel_hidden(x, p):
    """W_0 AvgPool(F) + b_0 (eq. 3's hidden layer; the package's W_1), then the official code's
    BatchNorm1d there."""
    g = "channel_att.gate_c."
    h = x.mean((2, 3)) @ p[g + "gate_c_fc_0.weight"].T + p[g + "gate_c_fc_0.bias"]
    return bn(h, p, g + "gate_c_bn_1")


def numpy_channel(x, p):
    """M_c(F) = BN(W_1 ReLU(W_0 AvgPool(F) + b_0) + b_1) (eq. 3), (N, C, 1, 1)."""
    g = "channel_att.gate_c."
    out = np.maximum(channel_hidden(x, p), 0) @ p[g + "gate_c_fc_final.weight"].T
    out = bn(out + p[g + "gate_c_fc_final.bias"], p, g + "gate_c_bn_final")
    return out[:, :, None, None]


def spatial_steps(x, p, dilation=4, dilated_convs=2):
    """The spatial branch's outputs after each convolution and its BatchNorm: f_0, f_1 ... (each
    then goes through a ReLU), and last M_s(F) = BN(f_3(...)) (eq. 4), (N, 1, H, W)."""
    g = "spatial_att.gate_s.gate_s_"
    names = [("conv_reduce0", "bn_reduce0", 1)]
    names += [(f"conv_di_{i}", f"bn_di_{i}", dilation) for i in range(dilated_convs)]
    names += [("conv_final", "bn_final", 1)]
    steps, y = [], x
    for c, b, d in names:
        y = bn(conv(y, p[g + c + ".weight"], p[g + c + ".bias"], d), p, g + b)
        steps.append(y)
        y = np.maximum(y, 0)
    return steps


def numpy_bam(x, p, variant="paper", dilation=4, dilated_convs=2, **_):
    """F' = F + F * sigma(M_c + M_s) (eq. 1-2); the official code: F + F * sigma(M_c * M_s)."""
    m_c = numpy_channel(x, p)
    m_s = spatial_steps(x, p, dilation, dilated_convs)[-1]
    m = sigmoid(m_c + m_s) if variant == "paper" else sigmoid(m_c * m_s)
    return x + x * m


def expected_params(channels, reduction=16, dilated_convs=2, variant="paper", **_):
    """The paper's branches with the official code's biases: channel W_0 (C/r x C) + b_0,
    W_1 (C x C/r) + b_1, BN scale and shift after the MLP (C each; official: on the hidden layer,
    C/r each); spatial f_0 (C/r x C) + bias and BN, each dilated 3 x 3 (9 (C/r)^2) + bias and BN,
    f_3 (C/r) + bias, BN after f_3 (2; none in the official code)."""
    c, r = channels, channels // reduction
    channel = c * r + r + r * c + c + (2 * c if variant == "paper" else 2 * r)
    spatial = c * r + r + 2 * r + dilated_convs * (9 * r * r + r + 2 * r) + r + 1
    return channel + spatial + (2 if variant == "paper" else 0)


def randomise_norm(layer: nn.Module) -> nn.Module:
    """BatchNorm statistics and affine values away from the identity at initialisation."""
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    return layer


class TestBAM(LayerTester):
    layer = BAM
    configs = {  # noqa: RUF012
        "paper": {"channels": 64},  # r = 16 (4 hidden channels), d = 4, two dilated convs
        "official": {"channels": 64, "variant": "official"},
        "r8_d2": {"channels": 32, "reduction": 8, "dilation": 2},
        "one_dilated": {"channels": 16, "reduction": 4, "dilated_convs": 1, "dilation": 1},
        "no_dilated_official": {
            "channels": 16,
            "reduction": 4,
            "dilated_convs": 0,
            "variant": "official",
        },
        "small": {"channels": 8, "reduction": 2, "dilation": 2},
        "small_official": {"channels": 8, "reduction": 2, "dilation": 2, "variant": "official"},
    }
    gradcheck_configs = ("small", "small_official")
    compile_configs = ("small",)
    tolerances = {  # noqa: RUF012
        **LayerTester.tolerances,
        # float32 against the float64 formula, measured over 30 seeds x every configuration x
        # 3 shapes x both backends: max |error| 5.9e-7 (outputs up to 8), all within
        # rtol 1e-6 alone; atol ~3x that. bfloat16 autocast: measured max |error| 9.4e-3
        # (the default 5e-2)
        "float32": {"rtol": 1e-6, "atol": 2e-6},
    }
    errors = {  # noqa: RUF012
        "reduction": (
            ValueError,
            r"reduction: expected a value <= channels \(8\).*got 16",
            lambda: BAM(8),
        ),
        "variant": (
            ValueError,
            r"variant: expected one of 'paper', 'official', got 'timm'",
            lambda: BAM(64, variant="timm"),
        ),
        "dilation": (
            ValueError,
            r"dilation: expected an int >= 1, got 0",
            lambda: BAM(64, dilation=0),
        ),
        "dilated_convs": (
            TypeError,
            r"dilated_convs: expected an int, got 2.0 \(float\)",
            lambda: BAM(64, dilated_convs=2.0),
        ),
        "wrong_channels": (
            ValueError,
            r"x: expected 64 channels, got shape \(2, 8, 4, 4\)",
            lambda: BAM(64)(torch.randn(2, 8, 4, 4)),
        ),
        "wrong_rank": (
            ValueError,
            r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor",
            lambda: BAM(64)(torch.randn(64, 4, 4)),
        ),
    }

    def build(self, config):
        return randomise_norm(BAM(**config))

    def input_shape(self, config):
        return (2, config["channels"], 9, 7)

    def formula(self, x, p, config):
        return numpy_bam(x, p, **config)

    def expected_num_params(self, config):
        return expected_params(**config)

    def smooth_at(self, layer, x):
        """Training mode (gradcheck's): the ReLUs' inputs away from 0 (the channel MLP's hidden
        layer, the outputs of the BatchNorms before a ReLU). A BatchNorm1d over N = 2 is smooth
        even at equal inputs ((x_0 - x_1) / 2 / sqrt((x_0 - x_1)^2 / 4 + eps))."""
        seen = {}
        hooks = [
            m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
            for n, m in layer.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not n.endswith("_final")
        ]
        try:
            layer(x)
        finally:
            for h in hooks:
                h.remove()
        fc0 = layer.channel_att.gate_c["gate_c_fc_0"]
        hidden = x.mean((2, 3)) @ fc0.weight.T + fc0.bias
        if "channel_att.gate_c.gate_c_bn_1" in seen:  # official: the ReLU follows this BN
            hidden = seen.pop("channel_att.gate_c.gate_c_bn_1")
        margins = [float(v.abs().min()) for v in (hidden, *seen.values())]
        return min(margins) > KINK_MARGIN


def test_official_state_dict_names():
    """The keys of the official code's BAM (the authors' repository): its
    checkpoints load with strict=True into variant="official"."""
    convs = ["gate_s_conv_reduce0", "gate_s_conv_di_0", "gate_s_conv_di_1", "gate_s_conv_final"]
    bns = ["gate_s_bn_reduce0", "gate_s_bn_di_0", "gate_s_bn_di_1"]
    stats = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    want = {
        f"channel_att.gate_c.gate_c_fc_{i}.{k}" for i in ("0", "final") for k in ("weight", "bias")
    }
    want |= {f"channel_att.gate_c.gate_c_bn_1.{k}" for k in stats}
    want |= {f"spatial_att.gate_s.{c}.{k}" for c in convs for k in ("weight", "bias")}
    want |= {f"spatial_att.gate_s.{b}.{k}" for b in bns for k in stats}
    ours = BAM(256, variant="official")
    assert set(ours.state_dict()) == want
    assert ours.channel_att.gate_c["gate_c_fc_0"].weight.shape == (16, 256)  # nn.Linear's
    paper = set(BAM(256).state_dict())
    assert paper - want == {
        f"{g}_bn_final.{k}"
        for g in ("channel_att.gate_c.gate_c", "spatial_att.gate_s.gate_s")
        for k in stats
    }
    assert want - paper == {f"channel_att.gate_c.gate_c_bn_1.{k}" for k in stats}


def test_dilated_convolutions_keep_the_size():
    m = BAM(32, reduction=4, dilation=4)
    conv = m.spatial_att.gate_s["gate_s_conv_di_1"]
    assert conv.dilation == (4, 4) and conv.padding == (4, 4) and conv.kernel_size == (3, 3)


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_attention_is_one_plus_a_sigmoid(variant):
    """1 + M(F) lies in (1, 2), at every position and channel (the mixed map's range)."""
    m = BAM(32, variant=variant).eval()
    a = m.attention(torch.randn(2, 32, 5, 6) * 3)
    assert a.shape == (2, 32, 5, 6) and bool(((a > 1) & (a < 2)).all())


def test_branches_are_the_paper_maps():
    """channel_att(x) is M_c (N, C, 1, 1), spatial_att(x) is M_s (N, 1, H, W), and the block is
    x * (1 + sigma(M_c + M_s))."""
    m = randomise_norm(BAM(32)).double().eval()
    x = torch.randn(2, 32, 6, 5, dtype=torch.float64)
    m_c, m_s = m.channel_att(x), m.spatial_att(x)
    assert m_c.shape == (2, 32, 1, 1) and m_s.shape == (2, 1, 6, 5)
    torch.testing.assert_close(m(x), x * (1 + torch.sigmoid(m_c + m_s)))
