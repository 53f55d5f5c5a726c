"""Tests of the Selective Kernel convolution (arXiv:1903.06586, Sec. 3.1 and eq. 1-6;
src/visattn/layers/selective_kernel.py): the battery of layer_tester.py on the configurations of
TestSelectiveKernel against a NumPy SK unit written here (grouped, dilated, strided branch
convolutions, BatchNorm, ReLU, then fuse and select), then timm interop (timm.layers
.SelectiveKernel's state dict loads with strict=True, same outputs), eq. 4's d in the layer, and
the registry name.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from layer_tester import KINK_MARGIN, LayerTester
from torch import nn

from visattn import SelectiveKernel, create_attention
from visattn.layers.selective_kernel import TIMM_SK_OPTIONS

BN_EPS = 1e-5
PAPER = {  # the paper's SK unit (Table 1, SK[M=2, G=32, r=16], L = 32)
    "kernel_sizes": (3, 5),
    "dilation": 1,
    "groups": 32,
    "reduction": 16,
    "min_attn_channels": 32,
    "divisor": 1,
    "keep_3x3": True,
    "split_input": False,
    "stride": 1,
}


def options(config):
    """The configuration's constructor options over the paper's defaults (written here)."""
    cfg = {**PAPER, **config}
    cfg["out_channels"] = config.get("out_channels") or config["in_channels"]
    return cfg


def paths(cfg):
    """(kernel size, dilation) of each path: the 5 x 5 as a 3 x 3 with dilation 2 (Sec. 3.3)."""
    ks = cfg["kernel_sizes"]
    ks = (ks, ks) if isinstance(ks, int) else ks
    if cfg["keep_3x3"]:
        return [(3, cfg["dilation"] * (k - 1) // 2) for k in ks]
    return [(k, cfg["dilation"]) for k in ks]


def padding(k, stride, dilation):
    """The branch convolutions' zero padding (timm's: 'same' at stride 1)."""
    return ((stride - 1) + dilation * (k - 1)) // 2


def np_conv(x, w, stride, dilation, groups):
    """Grouped, dilated, strided cross-correlation with zero padding, as nn.Conv2d."""
    n, _, h, wd = x.shape
    cout, cin_g, k, _ = w.shape
    p = padding(k, stride, dilation)
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    ho = (h + 2 * p - dilation * (k - 1) - 1) // stride + 1
    wo = (wd + 2 * p - dilation * (k - 1) - 1) // stride + 1
    xg = xp.reshape(n, groups, cin_g, *xp.shape[2:])
    wg = w.reshape(groups, cout // groups, cin_g, k, k)
    out = np.zeros((n, groups, cout // groups, ho, wo))
    for a in range(k):
        for b in range(k):
            i, j = a * dilation, b * dilation
            patch = xg[
                ..., i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
            ]
            out += np.einsum("ngihw,goi->ngohw", patch, wg[..., a, b])
    return out.reshape(n, cout, ho, wo)


def np_bn(y, p, prefix):
    """BatchNorm with its running statistics (eval mode), over axis 1."""
    shape = (1, -1) + (1,) * (y.ndim - 2)
    mean, var = p[prefix + "running_mean"].reshape(shape), p[prefix + "running_var"].reshape(shape)
    gamma, beta = p[prefix + "weight"].reshape(shape), p[prefix + "bias"].reshape(shape)
    return (y - mean) / np.sqrt(var + BN_EPS) * gamma + beta


def np_branches(x, p, cfg):
    """Split: U_m = ReLU(BN(conv_m(X_m))), X_m = X (the paper) or its m-th channel slice."""
    pk = paths(cfg)
    xs = np.split(x, len(pk), axis=1) if cfg["split_input"] else [x] * len(pk)
    return [
        np.maximum(
            np_bn(np_conv(xm, p[f"paths.{m}.conv.weight"], cfg["stride"], d, cfg["groups"]), p,
                  f"paths.{m}.bn."),
            0,
        )
        for m, (xm, (_k, d)) in enumerate(zip(xs, pk, strict=True))
    ]  # fmt: skip


def np_select(us, p):
    """Fuse and select, eq. 1-6: a (N, M, C) and V."""
    s = sum(us).mean(axis=(2, 3))  # eq. 1-2
    z = np.maximum(np_bn(s @ p["attn.fc_reduce.weight"][:, :, 0, 0].T, p, "attn.bn."), 0)  # eq. 3
    m, c = len(us), us[0].shape[1]
    logits = (z @ p["attn.fc_select.weight"][:, :, 0, 0].T).reshape(-1, m, c)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    a = e / e.sum(axis=1, keepdims=True)  # eq. 5
    return a, sum(a[:, i, :, None, None] * us[i] for i in range(m))  # eq. 6


def numpy_sk(x, p, config):
    return np_select(np_branches(x, p, options(config)), p)[1]


def attn_channels(c, r, L, divisor):
    """d = max(C/r, L) (eq. 4), C/r rounded as timm's make_divisible (written here)."""
    v = c / r
    d = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return max(d + divisor if d < 0.9 * v else d, L)


def randomise_norm(layer: nn.Module) -> nn.Module:
    """BatchNorm statistics and affine values away from their initial identity."""
    with torch.no_grad():
        for bn in layer.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.normal_(0, 0.2)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0, 0.2)
    return layer


class TestSelectiveKernel(LayerTester):
    layer = SelectiveKernel
    configs = {  # noqa: RUF012
        "paper": {"in_channels": 64},  # M = 2, 3x3 + 3x3 dilation 2, G = 32, d = max(4, 32)
        "timm": {"in_channels": 16, **TIMM_SK_OPTIONS},  # split, G = 1, d = make_divisible(1, 8)
        "stride2_out12": {
            "in_channels": 8,
            "out_channels": 12,
            "stride": 2,
            "groups": 4,
            "min_attn_channels": 4,
        },
        "three_paths": {
            "in_channels": 12,
            "kernel_sizes": (3, 5, 7),
            "groups": 2,
            "min_attn_channels": 4,
            "split_input": True,
        },
        "5x5": {"in_channels": 8, "keep_3x3": False, "groups": 2, "rd_channels": 3},
        "dilation2": {
            "in_channels": 8,
            "dilation": 2,
            "groups": 8,
            "reduction": 2,
            "min_attn_channels": 1,
        },
        "small": {"in_channels": 6, "out_channels": 4, "groups": 2, "min_attn_channels": 3},
    }
    gradcheck_configs = ("small",)
    compile_configs = ("small",)
    onnx_configs = ("three_paths",)  # split input, groups, three dilations in one export
    tolerances = {  # noqa: RUF012
        **LayerTester.tolerances,
        # float32 against the float64 formula, measured over 30 seeds x every configuration x
        # 3 shapes x both backends: max |error| 5.6e-7 (outputs up to 2.7); atol ~3.5x that.
        # bfloat16 autocast (the branch convolutions in bfloat16): measured max |error| 1.7e-2
        # over 30 seeds, within the tester's 5e-2
        "float32": {"rtol": 1e-6, "atol": 2e-6},
    }
    errors = {  # noqa: RUF012
        "even_kernel": (
            ValueError,
            r"kernel_sizes: expected an odd int >= 3 or a non-empty sequence of them, got \(3, 4\)",
            lambda: SelectiveKernel(64, kernel_sizes=(3, 4)),
        ),
        "no_kernel": (
            ValueError,
            r"kernel_sizes: expected an odd int >= 3 .*got \(\)",
            lambda: SelectiveKernel(64, kernel_sizes=()),
        ),
        "groups": (
            ValueError,
            r"groups: expected a divisor of the paths' input channels \(48\) and of out_channels "
            r"\(48\), got 32",
            lambda: SelectiveKernel(48),
        ),
        "split": (
            ValueError,
            r"in_channels: expected a multiple of the number of paths \(2\) with "
            r"split_input=True, got 15",
            lambda: SelectiveKernel(15, groups=1, split_input=True),
        ),
        "reduction": (
            ValueError,
            r"reduction: expected a positive number, got 0",
            lambda: SelectiveKernel(64, reduction=0),
        ),
        "stride": (
            ValueError,
            r"stride: expected an int >= 1, got 0",
            lambda: SelectiveKernel(64, stride=0),
        ),
        "flag": (
            TypeError,
            r"split_input: expected a bool, got 1",
            lambda: SelectiveKernel(64, split_input=1),
        ),
        "wrong_channels": (
            ValueError,
            r"x: expected 64 channels, got shape \(2, 32, 5, 5\)",
            lambda: SelectiveKernel(64)(torch.randn(2, 32, 5, 5)),
        ),
        "wrong_rank": (
            ValueError,
            r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor of shape \(64, 5, 5\)",
            lambda: SelectiveKernel(64)(torch.randn(64, 5, 5)),
        ),
    }

    def build(self, config):
        return randomise_norm(SelectiveKernel(**config))

    def input_shape(self, config):
        return (2, config["in_channels"], 9, 7)

    def output_shape(self, shape, config):
        cfg = options(config)
        s = cfg["stride"]
        k, d = paths(cfg)[0]
        p = padding(k, s, d)
        n, _, h, w = shape
        return (n, cfg["out_channels"], (h + 2 * p - d * (k - 1) - 1) // s + 1,
                (w + 2 * p - d * (k - 1) - 1) // s + 1)  # fmt: skip

    def formula(self, x, p, config):
        return numpy_sk(x, p, config)

    def expected_num_params(self, config):
        """Per path: C_out x C_in,m / G x k^2 weights and BN's 2 C_out; W (d x C), BN's 2 d and
        A_1 ... A_M (M C x d), none with a bias (eq. 3, 5)."""
        cfg = options(config)
        pk = paths(cfg)
        m, c = len(pk), cfg["out_channels"]
        cin = cfg["in_channels"] // m if cfg["split_input"] else cfg["in_channels"]
        d = cfg.get("rd_channels") or attn_channels(
            c, cfg["reduction"], cfg["min_attn_channels"], cfg["divisor"]
        )
        convs = sum(c * cin // cfg["groups"] * k * k + 2 * c for k, _ in pk)
        return convs + c * d + 2 * d + d * m * c

    def smooth_at(self, layer, x):
        """Every ReLU input (the branches' BN outputs, BN(W s)) away from 0 (training mode, as
        gradcheck runs the layer: batch statistics)."""
        us = layer.branches(x)
        pre = [path.bn(path.conv(xm)) for path, xm in zip(layer.paths, _inputs(layer, x),
                                                           strict=True)]  # fmt: skip
        s = sum(u.mean((2, 3), keepdim=True) for u in us)
        pre.append(layer.attn.bn(layer.attn.fc_reduce(s)))
        return min(float(t.abs().min()) for t in pre) > KINK_MARGIN


def _inputs(layer, x):
    m = layer.num_paths
    return torch.split(x, x.shape[1] // m, 1) if layer.split_input else [x] * m


TIMM_CASES = {  # name -> (timm.layers.SelectiveKernel kwargs, ours), C_in = 64
    "timm_default": ({}, TIMM_SK_OPTIONS),
    "skresnet18": ({"rd_ratio": 1 / 8, "rd_divisor": 16},
                   {**TIMM_SK_OPTIONS, "reduction": 8, "divisor": 16}),
    # skresnext50_32x4d's unit: the paper's SK[M=2, G=32, r=16] (rd_divisor 32 gives d = 32
    # for C <= 512 like L = 32): our defaults
    "sknet": ({"groups": 32, "rd_ratio": 1 / 16, "rd_divisor": 32, "split_input": False}, {}),
    "stride2_three": ({"stride": 2, "kernel_size": [3, 5, 7], "split_input": False,
                       "out_channels": 96},
                      {"stride": 2, "kernel_sizes": (3, 5, 7), "groups": 1, "divisor": 8,
                       "min_attn_channels": 1, "out_channels": 96}),
    "5x5_dilation": ({"keep_3x3": False, "dilation": 2, "groups": 4},
                     {**TIMM_SK_OPTIONS, "keep_3x3": False, "dilation": 2, "groups": 4}),
}  # fmt: skip


@pytest.mark.parametrize("case", list(TIMM_CASES))
def test_timm_state_dict_loads_and_outputs_agree(case):
    """timm's SelectiveKernel (random weights, trained-looking BatchNorms) loads into ours with
    strict=True and gives the same output and selection: eval mode in float32, training mode
    (batch statistics) in float64; ours loads into timm's too."""
    timm = pytest.importorskip("timm")
    theirs_kw, ours_kw = TIMM_CASES[case]
    theirs = randomise_norm(timm.layers.SelectiveKernel(64, **theirs_kw))
    ours = SelectiveKernel(64, **ours_kw)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 64, 11, 9)
    # eval, float32: measured max |difference| 2.4e-7 of V (outputs up to ~3.4), 1.2e-7 of a
    # over 10 seeds x the cases (the order of the sums differs); atol 1e-6. Training mode
    # normalises W s over a batch of 2, which magnifies that roundoff up to 1.4e-5: compared in
    # float64 instead.
    for train, dtype, tol in ((False, torch.float32, 1e-6), (True, torch.float64, 1e-12)):
        theirs.train(train).to(dtype), ours.train(train).to(dtype)
        xt = x.to(dtype)
        with torch.no_grad():
            want, got = theirs(xt), ours(xt)
            stack = torch.stack([p(xm) for p, xm in zip(theirs.paths, _inputs(ours, xt),
                                                        strict=True)], 1)  # fmt: skip
            want_a = theirs.attn(stack)[..., 0, 0]  # (N, M, C, 1, 1) in timm
            got_a = ours.attention(xt)
        torch.testing.assert_close(got, want, rtol=10 * tol, atol=tol)
        torch.testing.assert_close(got_a, want_a, rtol=10 * tol, atol=tol)
    theirs.load_state_dict(ours.state_dict(), strict=True)


def test_paper_defaults():
    sk = SelectiveKernel(256)
    assert sk.kernel_sizes == (3, 3) and sk.dilations == (1, 2) and sk.groups == 32
    assert sk.attn_channels == 32 and not sk.split_input  # d = max(256 / 16, 32)
    assert SelectiveKernel(1024).attn_channels == 64
    conv = sk.paths[1].conv
    assert conv.in_channels == 256 and conv.groups == 32 and conv.dilation == (2, 2)
    assert conv.padding == (2, 2) and conv.bias is None


def test_attention_is_the_selection_of_the_branches():
    """attention(x) is a (N, M, C), softmax over M; forward is sum_m a_m U_m of the branches."""
    sk = randomise_norm(SelectiveKernel(12, 8, kernel_sizes=(3, 5, 7), groups=4)).eval()
    x = torch.randn(3, 12, 6, 5)
    with torch.no_grad():
        a, us, v = sk.attention(x), sk.branches(x), sk(x)
    assert a.shape == (3, 3, 8)
    torch.testing.assert_close(a.sum(1), torch.ones(3, 8))
    torch.testing.assert_close(v, sum(a[:, m, :, None, None] * us[m] for m in range(3)))


def test_channels_last_output_stays_channels_last():
    sk = SelectiveKernel(64).eval()
    x = torch.randn(2, 64, 7, 5).to(memory_format=torch.channels_last)
    assert sk(x).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(("c", "g"), [(64, 32), (256, 32), (48, 16), (16, 16), (10, 2), (7, 1)])
def test_registry_builds_a_shape_preserving_unit_for_any_channels(c, g):
    """create_attention("sk", C): SelectiveKernel(C, C) with G = gcd(32, C) (the paper's 32
    where 32 divides C); groups= overrides it."""
    sk = create_attention("sk", c)
    assert isinstance(sk, SelectiveKernel) and sk.out_channels == c and sk.groups == g
    x = torch.randn(2, c, 5, 7)
    assert sk(x).shape == x.shape
    assert create_attention("sk", 64, groups=4).groups == 4


def test_registry_passes_the_options():
    sk = create_attention("sk", 16, **TIMM_SK_OPTIONS)  # timm's defaults: groups 1, split, d = 8
    assert sk.groups == 1 and sk.split_input and sk.attn_channels == 8
    assert sk(torch.randn(2, 16, 3, 3)).shape == (2, 16, 3, 3)
