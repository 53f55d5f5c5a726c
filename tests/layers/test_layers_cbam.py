"""Tests of ChannelAttention, SpatialAttention and CBAM (CBAM paper eq. 1-3; src/visattn/layers/cbam.py),
and of timm's light CBAM (LightSpatialAttention, LightCBAM, ChannelAttention's merge_pools: a
variant of timm's own, no paper).

The battery of layer_tester.py (smoke, exception, cardinality, feature against the NumPy formulas
written here, with an explicit k x k correlation loop, gradcheck, autocast, compile,
channels_last, ONNX) runs for each of the five layers; their own tests follow, with the light
CBAM's against timm's LightCbamModule.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from layer_tester import KINK_MARGIN, LayerTester, min_gap
from timm.layers import make_divisible
from timm.layers.cbam import LightCbamModule
from torch import nn

from visattn import CBAM, ChannelAttention, LightCBAM, SpatialAttention
from visattn.functional import light_cbam
from visattn.layers import LightSpatialAttention, reduced_channels

PAPER_POOL = ("avg", "max")
BN_EPS = 1e-5  # nn.BatchNorm2d's default


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def numpy_channel(x, p, pool=PAPER_POOL, prefix="", merge_pools=False, **_):
    """M_c(F) = sigma(sum_pool W_1 relu(W_0 pool(F) + b_0) + b_1) (eq. 2), shape (N, C, 1, 1);
    ``merge_pools`` (timm's light variant): sigma(W_1 relu(W_0 mean_pool pool(F) + b_0) + b_1)."""
    pool = (pool,) if isinstance(pool, str) else pool
    w0, w1 = p[prefix + "fc1.weight"][:, :, 0, 0], p[prefix + "fc2.weight"][:, :, 0, 0]
    b0, b1 = p.get(prefix + "fc1.bias", 0.0), p.get(prefix + "fc2.bias", 0.0)
    flat = x.reshape(*x.shape[:2], -1)
    pooled = {"avg": flat.mean(-1), "max": flat.max(-1)}
    if merge_pools:
        z = sum(pooled[q] for q in pool) / len(pool)
        return sigmoid(np.maximum(0, z @ w0.T + b0) @ w1.T + b1)[:, :, None, None]
    logits = sum(np.maximum(0, pooled[q] @ w0.T + b0) @ w1.T + b1 for q in pool)
    return sigmoid(logits)[:, :, None, None]


def numpy_spatial(x, p, pool=PAPER_POOL, norm=False, prefix="", **_):
    """M_s(F) = sigma(f^{k x k}([pool_c(F); ...])) (eq. 3), zero padding k // 2, optional
    BatchNorm (running statistics) after the convolution; shape (N, 1, H, W)."""
    pool = (pool,) if isinstance(pool, str) else pool
    maps = {"avg": x.mean(1), "max": x.max(1)}
    stacked = np.stack([maps[q] for q in pool], 1)  # (N, P, H, W), in the order of `pool`
    w = p[prefix + "conv.weight"]  # (1, P, k, k)
    k = w.shape[-1]
    r = k // 2
    n, _, h, wd = stacked.shape
    padded = np.pad(stacked, ((0, 0), (0, 0), (r, r), (r, r)))
    out = np.zeros((n, h, wd))
    for a in range(k):  # cross-correlation, as nn.Conv2d
        for b in range(k):
            out += np.einsum("nphw,p->nhw", padded[:, :, a : a + h, b : b + wd], w[0, :, a, b])
    if norm:
        mean, var = p[prefix + "bn.running_mean"], p[prefix + "bn.running_var"]
        out = (out - mean) / np.sqrt(var + BN_EPS) * p[prefix + "bn.weight"] + p[prefix + "bn.bias"]
    else:
        out = out + p[prefix + "conv.bias"]
    return sigmoid(out)[:, None]


def numpy_cbam(x, p, order="channel_first", pool=PAPER_POOL, norm=False, **_):
    """Eq. 1: F' = M_c(F) F, F'' = M_s(F') F'; the arrangements of the paper's Table 3."""

    def mc(f):
        return numpy_channel(f, p, pool, prefix="channel.")

    def ms(f):
        return numpy_spatial(f, p, pool, norm, prefix="spatial.")

    if order == "channel_first":
        f1 = mc(x) * x
        return ms(f1) * f1
    if order == "spatial_first":
        f1 = ms(x) * x
        return mc(f1) * f1
    return mc(x) * ms(x) * x  # "parallel"


def numpy_light_spatial(x, p, pool=PAPER_POOL, norm=True, prefix="", **_):
    """timm's light spatial map sigma(BN(f^{k x k}(m))), m = the mean of the channel pools (one
    map), zero padding k // 2; f^{k x k} is ``conv.conv``, the BatchNorm ``conv.bn`` (running
    statistics), or a bias without it; shape (N, 1, H, W)."""
    pool = (pool,) if isinstance(pool, str) else pool
    maps = {"avg": x.mean(1), "max": x.max(1)}
    m = sum(maps[q] for q in pool) / len(pool)  # (N, H, W)
    w = p[prefix + "conv.conv.weight"][0, 0]  # (k, k)
    k = w.shape[-1]
    r = k // 2
    n, h, wd = m.shape
    padded = np.pad(m, ((0, 0), (r, r), (r, r)))
    out = np.zeros((n, h, wd))
    for a in range(k):  # cross-correlation, as nn.Conv2d
        for b in range(k):
            out += padded[:, a : a + h, b : b + wd] * w[a, b]
    if norm:
        mean, var = p[prefix + "conv.bn.running_mean"], p[prefix + "conv.bn.running_var"]
        out = (out - mean) / np.sqrt(var + BN_EPS) * p[prefix + "conv.bn.weight"]
        out = out + p[prefix + "conv.bn.bias"]
    else:
        out = out + p[prefix + "conv.conv.bias"]
    return sigmoid(out)[:, None]


def numpy_light_cbam(x, p, pool=PAPER_POOL, norm=True, **_):
    """CBAM's eq. 1, channel first, with the two light maps (timm's LightCbamModule)."""
    f1 = numpy_channel(x, p, pool, prefix="channel.", merge_pools=True) * x
    return numpy_light_spatial(f1, p, pool, norm, prefix="spatial.") * f1


def channel_params(config) -> int:
    """W_0 in R^{C/r x C}, W_1 in R^{C x C/r} (eq. 2), biases C/r + C."""
    c = config["channels"]
    hidden = c / config.get("reduction", 16)
    assert hidden == int(hidden)
    return int(2 * c * hidden + (hidden + c if config.get("bias", True) else 0))


def light_spatial_params(config) -> int:
    """f^{k x k} on one (averaged) map: k^2 weights, plus its bias or the BatchNorm's 2."""
    return config.get("kernel_size", 7) ** 2 + (2 if config.get("norm", True) else 1)


def spatial_params(config) -> int:
    """f^{k x k}: P k^2 weights for P pooled maps (eq. 3), plus its bias, or the BatchNorm's
    scale and shift that replace it."""
    k = config.get("kernel_size", 7)
    return len(config.get("pool", PAPER_POOL)) * k * k + (2 if config.get("norm") else 1)


def randomise_norm(layer: nn.Module) -> nn.Module:
    """BatchNorm statistics and affine values away from the identity at initialisation."""
    with torch.no_grad():
        for bn in layer.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.normal_(0, 0.2)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0, 0.2)
    return layer


def channel_margin(ca: ChannelAttention, u: torch.Tensor) -> float:
    """Distance of M_c at u from the MLP's ReLU corner and from max-pool ties."""
    margins = []
    bias = ca.fc1.bias if ca.fc1.bias is not None else 0
    pooled = [u.mean((2, 3)) if q == "avg" else u.amax((2, 3)) for q in ca.pool]
    if ca.merge_pools:  # one MLP pass on the pools' mean
        pooled = [sum(pooled) / len(pooled)]
    for z in pooled:
        margins.append(float((z @ ca.fc1.weight[:, :, 0, 0].T + bias).abs().min()))
    if "max" in ca.pool:
        margins.append(min_gap(u.flatten(2), -1))
    return min(margins)


def spatial_margin(sa: SpatialAttention, u: torch.Tensor) -> float:
    """Distance of M_s at u from ties of the channel max (the rest is smooth)."""
    return min_gap(u, 1) if "max" in sa.pool else float("inf")


class TestChannelAttention(LayerTester):
    layer = ChannelAttention
    configs = {  # noqa: RUF012
        "paper": {"channels": 32},
        "avg_max": {"channels": 16, "reduction": 4, "pool": ("avg", "max")},
        "max_avg": {"channels": 16, "reduction": 4, "pool": ("max", "avg")},
        "avg": {"channels": 16, "reduction": 4, "pool": ("avg",)},
        "max": {"channels": 16, "reduction": 4, "pool": "max"},
        "no_bias": {"channels": 16, "reduction": 4, "bias": False},
        "small": {"channels": 8, "reduction": 2},
        # timm's light variant (LightChannelAttn): one MLP pass on 0.5 avg + 0.5 max, no biases
        "merge": {"channels": 16, "reduction": 4, "merge_pools": True, "bias": False},
        "small_merge": {"channels": 8, "reduction": 2, "merge_pools": True},
    }
    gradcheck_configs = ("small", "small_merge")
    compile_configs = ("small",)
    # forward only: compiling the backward of this formula doubled the test's cost (~25 s cold
    # on 2 cores); its gradients are gradcheck's, CBAM's compile test checks the block's
    compile_gradients = False
    # exported as part of CBAM "parallel_norm" (test_onnx_export of TestCBAM), which runs
    # ChannelAttention.attention; one export less keeps the file fast
    test_onnx_export = None
    tolerances = {  # noqa: RUF012
        **LayerTester.tolerances,
        # float32 against the float64 formula, measured over 30 seeds x every configuration x
        # 3 shapes x both backends: max |error| 3.7e-7 (outputs up to ~4); atol ~3x that (the
        # merge_pools configurations, 100 seeds: 3.2e-7)
        "float32": {"rtol": 1e-6, "atol": 1.2e-6},
        # bfloat16 autocast: measured max |error| 1.4e-2
    }
    errors = {  # noqa: RUF012
        "unknown_pool": (
            ValueError,
            r"pool: expected one of 'avg', 'max', got 'min'",
            lambda: ChannelAttention(32, pool=("avg", "min")),
        ),
        "repeated_pool": (
            ValueError,
            r"pool: expected a non-empty tuple of distinct names, got \('avg', 'avg'\)",
            lambda: ChannelAttention(32, pool=("avg", "avg")),
        ),
        "reduction": (
            ValueError,
            r"reduction: expected a value <= channels \(4\).*got 16",
            lambda: ChannelAttention(4),
        ),
        "wrong_channels": (
            ValueError,
            r"x: expected 32 channels, got shape \(2, 8, 4, 4\)",
            lambda: ChannelAttention(32)(torch.randn(2, 8, 4, 4)),
        ),
        "merge_not_bool": (
            TypeError,
            r"merge_pools: expected a bool, got 'yes' \(str\)",
            lambda: ChannelAttention(32, merge_pools="yes"),
        ),
    }

    def input_shape(self, config):
        return (2, config["channels"], 9, 7)

    def formula(self, x, p, config):
        return numpy_channel(x, p, **config) * x

    def expected_num_params(self, config):
        return channel_params(config)

    def smooth_at(self, layer, x):
        return channel_margin(layer, x) > KINK_MARGIN


class TestSpatialAttention(LayerTester):
    layer = SpatialAttention
    configs = {  # noqa: RUF012
        "paper": {},  # k = 7, [AvgPool_c; MaxPool_c]
        "k3": {"kernel_size": 3},
        "max_avg": {"pool": ("max", "avg")},
        "max_avg_k3": {"kernel_size": 3, "pool": ("max", "avg")},
        "avg_k5": {"kernel_size": 5, "pool": ("avg",)},
        "norm": {"norm": True},
        "k1": {"kernel_size": 1},
    }
    gradcheck_configs = ("paper", "norm")
    compile_configs = ("k3",)
    compile_gradients = False  # as for ChannelAttention
    # exported as part of CBAM "parallel_norm" (test_onnx_export of TestCBAM), which runs
    # SpatialAttention.attention with BatchNorm
    test_onnx_export = None
    tolerances = {  # noqa: RUF012
        **LayerTester.tolerances,
        # float32 against the float64 formula, measured as for ChannelAttention: max |error|
        # 2.8e-7; atol ~4x that. bfloat16 autocast: measured max |error| 1.1e-2
        "float32": {"rtol": 1e-6, "atol": 1.2e-6},
    }
    errors = {  # noqa: RUF012
        "even_kernel": (
            ValueError,
            r"kernel_size: expected an odd size so the map keeps its position, got 4",
            lambda: SpatialAttention(kernel_size=4),
        ),
        "kernel_not_int": (
            TypeError,
            r"kernel_size: expected an int, got 3.0 \(float\)",
            lambda: SpatialAttention(kernel_size=3.0),
        ),
        "kernel_zero": (
            ValueError,
            r"kernel_size: expected an int >= 1, got 0",
            lambda: SpatialAttention(kernel_size=0),
        ),
        "empty_pool": (
            ValueError,
            r"pool: expected a non-empty tuple of distinct names, got \(\)",
            lambda: SpatialAttention(pool=()),
        ),
        "wrong_rank": (
            ValueError,
            r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor of shape \(8, 4, 4\)",
            lambda: SpatialAttention()(torch.randn(8, 4, 4)),
        ),
    }

    def build(self, config):
        return randomise_norm(SpatialAttention(**config))

    def input_shape(self, config):
        return (2, 5, 9, 7)

    def formula(self, x, p, config):
        return numpy_spatial(x, p, **config) * x

    def expected_num_params(self, config):
        return spatial_params(config)

    def smooth_at(self, layer, x):
        return spatial_margin(layer, x) > KINK_MARGIN


class TestCBAM(LayerTester):
    layer = CBAM
    configs = {  # noqa: RUF012
        "paper": {"channels": 32},  # channel_first, r = 16, k = 7
        "r4": {"channels": 16, "reduction": 4},
        "spatial_first": {"channels": 16, "reduction": 4, "order": "spatial_first"},
        "parallel": {"channels": 16, "reduction": 4, "order": "parallel"},
        "parallel_norm": {"channels": 16, "reduction": 4, "order": "parallel", "norm": True},
        "norm_max_avg": {"channels": 16, "reduction": 4, "norm": True, "pool": ("max", "avg")},
        "options": {
            "channels": 32,
            "reduction": 8,
            "kernel_size": 3,
            "order": "parallel",
            "norm": True,
            "pool": ("max",),
        },
        "small_channel_first": {"channels": 8, "reduction": 2, "kernel_size": 3},
        "small_spatial_first": {
            "channels": 8,
            "reduction": 2,
            "kernel_size": 3,
            "order": "spatial_first",
        },
        "small_parallel": {"channels": 8, "reduction": 2, "kernel_size": 3, "order": "parallel"},
    }
    gradcheck_configs = ("small_channel_first", "small_spatial_first", "small_parallel")
    compile_configs = ("r4",)
    onnx_configs = ("r4", "parallel_norm")
    tolerances = {  # noqa: RUF012
        **LayerTester.tolerances,
        # float32 (the fused C++ kernels for channel_first under "auto", formulas otherwise)
        # against the float64 formula, measured over 30 seeds x every configuration x 3 shapes:
        # max |error| 4.0e-7; atol 3x that
        "float32": {"rtol": 1e-6, "atol": 1.2e-6},
        "autocast": {"rtol": 5e-2, "atol": 6e-2},  # measured max |error| 1.2e-2
    }
    errors = {  # noqa: RUF012
        "reduction": (
            ValueError,
            r"reduction: expected a value <= channels \(4\)",
            lambda: CBAM(4),
        ),
        "unknown_order": (
            ValueError,
            r"order: expected one of 'channel_first', 'spatial_first', 'parallel', got 'series'",
            lambda: CBAM(32, order="series"),
        ),
        "even_kernel": (
            ValueError,
            r"kernel_size: expected an odd size .*got 6",
            lambda: CBAM(32, kernel_size=6),
        ),
        "wrong_channels": (
            ValueError,
            r"x: expected 32 channels, got shape \(2, 8, 4, 4\)",
            lambda: CBAM(32)(torch.randn(2, 8, 4, 4)),
        ),
        "wrong_rank": (
            ValueError,
            r"x: expected a 4-D tensor \(N, C, H, W\), got a 5-D tensor",
            lambda: CBAM(32)(torch.randn(1, 32, 2, 4, 4)),
        ),
    }

    def build(self, config):
        return randomise_norm(CBAM(**config))

    def input_shape(self, config):
        return (2, config["channels"], 9, 7)

    def formula(self, x, p, config):
        return numpy_cbam(x, p, **config)

    def expected_num_params(self, config):
        return channel_params(config) + spatial_params(config)

    def smooth_at(self, layer, x):
        ca, sa = layer.channel, layer.spatial
        if layer.order == "channel_first":
            margin = min(channel_margin(ca, x), spatial_margin(sa, ca(x)))
        elif layer.order == "spatial_first":
            margin = min(spatial_margin(sa, x), channel_margin(ca, sa(x)))
        else:
            margin = min(channel_margin(ca, x), spatial_margin(sa, x))
        return margin > KINK_MARGIN


class TestLightSpatialAttention(LayerTester):
    layer = LightSpatialAttention
    configs = {  # noqa: RUF012
        "timm": {},  # k = 7, 0.5 AvgPool_c + 0.5 MaxPool_c, BatchNorm
        "k3": {"kernel_size": 3},
        "no_norm": {"norm": False},
        "max_k5": {"kernel_size": 5, "pool": ("max",)},
    }
    gradcheck_configs = ("k3", "no_norm")
    compile_configs = ("k3",)
    compile_gradients = False  # as for ChannelAttention
    test_onnx_export = None  # exported as part of LightCBAM (TestLightCBAM.test_onnx_export)
    tolerances = {  # noqa: RUF012
        **LayerTester.tolerances,
        # float32 against the float64 formula, measured over 100 seeds x every configuration x
        # the tester's shapes x both backends: max |error| 3.9e-7 (outputs up to ~3.6); atol 3x
        # that. bfloat16 autocast: measured max |error| 1.0e-2
        "float32": {"rtol": 1e-6, "atol": 1.2e-6},
    }
    errors = {  # noqa: RUF012
        "even_kernel": (
            ValueError,
            r"kernel_size: expected an odd size so the map keeps its position, got 6",
            lambda: LightSpatialAttention(kernel_size=6),
        ),
        "repeated_pool": (
            ValueError,
            r"pool: expected a non-empty tuple of distinct names, got \('max', 'max'\)",
            lambda: LightSpatialAttention(pool=("max", "max")),
        ),
        "wrong_rank": (
            ValueError,
            r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor of shape \(8, 4, 4\)",
            lambda: LightSpatialAttention()(torch.randn(8, 4, 4)),
        ),
    }

    def build(self, config):
        return randomise_norm(LightSpatialAttention(**config))

    def input_shape(self, config):
        return (2, 5, 9, 7)

    def formula(self, x, p, config):
        return numpy_light_spatial(x, p, **config) * x

    def expected_num_params(self, config):
        return light_spatial_params(config)

    def smooth_at(self, layer, x):
        return min_gap(x, 1) > KINK_MARGIN


class TestLightCBAM(LayerTester):
    layer = LightCBAM
    configs = {  # noqa: RUF012
        "timm": {"channels": 32},  # r = 16, no MLP biases, k = 7, BatchNorm
        "r4_bias": {"channels": 16, "reduction": 4, "bias": True},
        "no_norm_k3": {"channels": 16, "reduction": 4, "kernel_size": 3, "norm": False},
        "avg": {"channels": 16, "reduction": 4, "pool": ("avg",)},
        "small": {"channels": 8, "reduction": 2, "kernel_size": 3},
    }
    gradcheck_configs = ("small",)
    compile_configs = ("small",)
    onnx_configs = ("timm",)
    tolerances = {  # noqa: RUF012
        **LayerTester.tolerances,
        # float32 against the float64 formula, measured over 100 seeds x every configuration x
        # the tester's shapes x both backends: max |error| 2.9e-7 (outputs up to ~2); atol 4x
        # that. bfloat16 autocast: measured max |error| 9.1e-3
        "float32": {"rtol": 1e-6, "atol": 1.2e-6},
    }
    errors = {  # noqa: RUF012
        "reduction": (
            ValueError,
            r"reduction: expected a value <= channels \(4\)",
            lambda: LightCBAM(4),
        ),
        "even_kernel": (
            ValueError,
            r"kernel_size: expected an odd size .*got 4",
            lambda: LightCBAM(32, kernel_size=4),
        ),
        "wrong_channels": (
            ValueError,
            r"x: expected 32 channels, got shape \(2, 8, 4, 4\)",
            lambda: LightCBAM(32)(torch.randn(2, 8, 4, 4)),
        ),
        "wrong_rank": (
            ValueError,
            r"x: expected a 4-D tensor \(N, C, H, W\), got a 5-D tensor",
            lambda: LightCBAM(32)(torch.randn(1, 32, 2, 4, 4)),
        ),
    }

    def build(self, config):
        return randomise_norm(LightCBAM(**config))

    def input_shape(self, config):
        return (2, config["channels"], 9, 7)

    def formula(self, x, p, config):
        return numpy_light_cbam(x, p, **config)

    def expected_num_params(self, config):
        light = {"merge_pools": True, "bias": config.get("bias", False), **config}
        return channel_params(light) + light_spatial_params(config)

    def smooth_at(self, layer, x):
        ca = layer.channel
        return min(channel_margin(ca, x), min_gap(ca(x), 1)) > KINK_MARGIN


def randomise_all(layer: nn.Module) -> nn.Module:
    """Every parameter random (timm's LightCbamModule starts from its own initialisation), the
    BatchNorm statistics too."""
    with torch.no_grad():
        for param in layer.parameters():
            param.normal_(0, 0.5)
    return randomise_norm(layer)


@pytest.mark.parametrize(("channels", "kernel"), [(64, 7), (48, 3), (22, 5)])
def test_light_cbam_loads_timm_and_equals_it(channels, kernel):
    """timm's LightCbamModule state_dict (channel.fc1/fc2, spatial.conv.conv, spatial.conv.bn)
    loads with strict=True, both give the same outputs in evaluation and training mode, and
    timm loads ours back. C = 22: C/r = 1.375 rounds to 1 in timm (never up), as here."""
    theirs = randomise_all(LightCbamModule(channels, spatial_kernel_size=kernel)).double()
    ours = LightCBAM(channels, kernel_size=kernel).double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, channels, 9, 7, dtype=torch.float64)
    for train in (False, True):
        ours.train(train), theirs.train(train)
        torch.testing.assert_close(ours(x), theirs(x))
    back = LightCbamModule(channels, spatial_kernel_size=kernel).double()
    back.load_state_dict(ours.state_dict(), strict=True)
    back.eval(), ours.eval()
    torch.testing.assert_close(back(x), ours(x))


def test_light_cbam_width_rounds_like_timm():
    """C/r to the nearest multiple of the divisor, never rounded up (timm's CBAM modules:
    make_divisible with round_limit 0), unlike the 0.9 rule of the other layers."""
    for c in range(16, 130):
        for d in (1, 8):
            want = make_divisible(c / 16, d, round_limit=0.0)
            assert LightCBAM(c, divisor=d).channel.fc1.out_channels == want, (c, d)
    assert reduced_channels(22, 16) == 2 and reduced_channels(22, 16, round_limit=0.0) == 1
    assert LightCBAM(64, rd_channels=5).channel.fc1.out_channels == 5


def test_light_cbam_parts_declare_their_kinds():
    """Its parts carry the maps (channel, spatial) and the block is the formula light_cbam."""
    m = randomise_norm(LightCBAM(16, reduction=4)).eval()
    x = torch.randn(2, 16, 5, 3)
    assert m.channel.map_kind == "channel" and m.spatial.map_kind == "spatial"
    assert m.channel.attention(x).shape == (2, 16, 1, 1)
    assert m.spatial.attention(x).shape == (2, 1, 5, 3)
    conv = m.spatial.conv.conv
    want = light_cbam(x, m.channel.fc1.weight, None, m.channel.fc2.weight, None, conv.weight,
                      None, norm=m.spatial.conv.bn)  # fmt: skip
    torch.testing.assert_close(m(x), want)


def test_options():
    m = CBAM(32, reduction=8, kernel_size=3, order="parallel", norm=True, pool=("max",))
    assert m(torch.randn(2, 32, 5, 5)).shape == (2, 32, 5, 5)
    assert m.spatial.conv.in_channels == 1 and m.spatial.conv.kernel_size == (3, 3)


def test_norm_uses_batchnorm():
    m = SpatialAttention(norm=True).eval()
    assert isinstance(m.bn, torch.nn.BatchNorm2d) and m.conv.bias is None


@pytest.mark.parametrize("order", ["channel_first", "spatial_first", "parallel"])
def test_cbam_is_its_two_parts(order):
    """CBAM(x) composes its ChannelAttention and SpatialAttention as ``order`` says."""
    m = CBAM(16, reduction=4, order=order).double()
    x = torch.randn(2, 16, 5, 5, dtype=torch.float64)
    ch, sp = m.channel, m.spatial
    want = {
        "channel_first": lambda: sp(ch(x)),
        "spatial_first": lambda: ch(sp(x)),
        "parallel": lambda: x * ch.attention(x) * sp.attention(x),
    }[order]()
    torch.testing.assert_close(m(x), want)


def test_attention_maps_shapes():
    x = torch.randn(2, 16, 5, 3)
    assert ChannelAttention(16, reduction=4).attention(x).shape == (2, 16, 1, 1)
    assert SpatialAttention().attention(x).shape == (2, 1, 5, 3)


def test_loads_timm_cbam_module():
    """timm's CbamModule (MLP without biases, conv + BN in one ConvNormAct: ``spatial.conv.conv``
    / ``spatial.conv.bn``) loads with strict=True into CBAM(bias=False, norm=True) and computes
    the same; our own state dict still round-trips. Measured |diff| 2.4e-7; tolerance 1e-5."""
    timm_cbam = pytest.importorskip("timm.layers.cbam")
    theirs = timm_cbam.CbamModule(48).eval()
    with torch.no_grad():
        bn = theirs.spatial.conv.bn
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    ours = CBAM(48, bias=False, norm=True).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 48, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    again = CBAM(48, bias=False, norm=True)
    again.load_state_dict(ours.state_dict(), strict=True)
    assert torch.equal(again.spatial.bn.running_var, bn.running_var)
    with pytest.raises(RuntimeError, match="Unexpected key"):  # no BatchNorm to read them into
        CBAM(48, bias=False).load_state_dict(theirs.state_dict(), strict=True)
