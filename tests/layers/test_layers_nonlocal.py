"""Tests of the non-local block (Wang et al., arXiv:1711.07971, eq. 1, 3-6, Sec. 3.3 and 4.1;
src/visattn/layers/non_local.py): the battery of layer_tester.py on the configurations of
TestNonLocal (map kind "residual": forward(x) == x + attention(x)), then its own tests: the
block starts as the identity, the pairwise matrix, timm's NonLocalAttn state_dict and outputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from layer_tester import KINK_MARGIN, LayerTester
from timm.layers import NonLocalAttn
from torch import nn

from visattn import NonLocal

BN_EPS = 1e-5  # nn.BatchNorm2d's default


def conv1x1(x, p, name):
    """W x + b of the 1 x 1 convolution ``name`` at every position of x (N, C, H, W)."""
    out = np.einsum("oc,nchw->nohw", p[name + ".weight"][:, :, 0, 0], x)
    return out + p[name + ".bias"][None, :, None, None] if name + ".bias" in p else out


def pool_2x2(u):
    """Sec. 3.3's subsampling: the max of each 2 x 2 window, stride 2, partial edge windows kept."""
    h, w = u.shape[2:]
    rows = [u[:, :, i : i + 2].max(2) for i in range(0, h, 2)]  # (N, C, W) each
    u = np.stack(rows, 2)
    cols = [u[:, :, :, j : j + 2].max(3) for j in range(0, w, 2)]
    return np.stack(cols, 3)


def numpy_non_local(x, p, pairwise="embedded_gaussian", scale=None, subsample=False, **_):
    """z = BN(W_z y) + x (eq. 6), y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j) (eq. 1): f of eq. 3
    (softmax over j), eq. 4 (/ N_j) or eq. 5 (ReLU(w_f^T [theta_i; phi_j]) / N_j); the
    BatchNorm with its running statistics (eval mode)."""
    n, _, h, w = x.shape
    theta, phi, g = conv1x1(x, p, "t"), conv1x1(x, p, "p"), conv1x1(x, p, "g")
    if subsample:
        phi, g = pool_2x2(phi), pool_2x2(g)
    ci = theta.shape[1]
    ti = theta.reshape(n, ci, -1)  # theta_i, i row-major over (h, w)
    pj, gj = phi.reshape(n, ci, -1), g.reshape(n, ci, -1)
    n_j = pj.shape[2]
    if pairwise == "concatenation":
        wf = p["f.weight"].reshape(-1)
        cat = np.concatenate(  # [theta_i; phi_j] for every pair: (N, 2 C', HW, N_j)
            [np.repeat(ti[:, :, :, None], n_j, 3), np.repeat(pj[:, :, None, :], h * w, 2)], 1
        )
        a = np.maximum(np.einsum("k,nkij->nij", wf, cat), 0) / n_j
    else:
        dots = np.einsum("nci,ncj->nij", ti, pj) * (1.0 if scale is None else scale)
        if pairwise == "dot_product":
            a = dots / n_j
        else:
            e = np.exp(dots - dots.max(2, keepdims=True))
            a = e / e.sum(2, keepdims=True)
    y = np.einsum("nij,ncj->nci", a, gj).reshape(n, ci, h, w)
    wz = conv1x1(y, p, "z")
    mean, var = p["norm.running_mean"], p["norm.running_var"]
    bn = (wz - mean[:, None, None]) / np.sqrt(var[:, None, None] + BN_EPS)
    return x + bn * p["norm.weight"][:, None, None] + p["norm.bias"][:, None, None]


def randomise(layer: nn.Module) -> nn.Module:
    """Every parameter and the BatchNorm's statistics away from their initial values (the BN
    scale starts at 0, which would make the block the identity): convolution weights of std
    1/sqrt(fan in), biases of std 0.1, the BatchNorm's scale in [0.5, 1.5]."""
    with torch.no_grad():
        for module in layer.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.normal_(0, module.weight[0].numel() ** -0.5)
                if module.bias is not None:
                    module.bias.normal_(0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    return layer


def inter(config) -> int:
    c = config["channels"]
    if "rd_channels" in config:
        return config["rd_channels"]
    if config.get("divisor", 1) == 8:
        return max(8, round(c / config["reduction"] / 8) * 8)
    return c // config.get("reduction", 2)


def window_gap(u: torch.Tensor) -> float:
    """Smallest gap between the largest and second largest value of a 2 x 2 pooling window."""
    h, w = u.shape[2:]
    u = nn.functional.pad(u, (0, w % 2, 0, h % 2), value=-1e9)
    win = u.unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)
    top = win.topk(2, -1).values
    return float((top[..., 0] - top[..., 1]).min())


class TestNonLocal(LayerTester):
    layer = NonLocal
    configs = {  # noqa: RUF012
        "paper": {"channels": 16},  # embedded Gaussian, C' = C/2, no scale
        "dot": {"channels": 8, "pairwise": "dot_product"},
        "concat": {"channels": 8, "pairwise": "concatenation"},
        "subsample": {"channels": 8, "subsample": True},
        "timm": {"channels": 16, "reduction": 8, "divisor": 8, "scale": 0.25},  # C' = 8
        "no_bias_dot_sub": {
            "channels": 6,
            "bias": False,
            "pairwise": "dot_product",
            "subsample": True,
            "scale": 0.5,
        },
        "small": {"channels": 4},
        "small_concat_sub": {"channels": 4, "pairwise": "concatenation", "subsample": True},
    }
    # small: the parameters' gradcheck evaluates the block twice per weight
    gradcheck_configs = ("small", "small_concat_sub")
    compile_configs = ("small",)
    onnx_configs = ("paper", "small_concat_sub")  # the softmax path; the ReLU and max pools
    tolerances = {  # noqa: RUF012
        **LayerTester.tolerances,
        # float32 against the float64 formula, measured over 200 seeds x every configuration x
        # the tester's shapes: max |error| 5.1e-6 on outputs up to ~19 (the sums over j and the
        # BatchNorm's 1/sqrt(var)); the largest error / (1e-5 + 1e-5 |want|) was 0.40
        "float32": {"rtol": 1e-5, "atol": 1e-5},
        # bfloat16 autocast (the 1 x 1 convolutions and the bmm in bfloat16), 200 seeds: max
        # |error| 0.21; the largest error / (0.25 + 5e-2 |want|) was 0.61
        "autocast": {"rtol": 5e-2, "atol": 0.25},
    }
    errors = {  # noqa: RUF012
        "pairwise": (
            ValueError,
            r"pairwise: expected one of 'embedded_gaussian', 'dot_product', 'concatenation', "
            r"got 'gaussian'",
            lambda: NonLocal(8, pairwise="gaussian"),
        ),
        "scale_concat": (
            ValueError,
            r"scale: expected None for pairwise='concatenation' \(it has no theta\^T phi\), "
            r"got 0.5",
            lambda: NonLocal(8, pairwise="concatenation", scale=0.5),
        ),
        "scale_nan": (
            ValueError,
            r"scale: expected None or a finite real number, got nan",
            lambda: NonLocal(8, scale=float("nan")),
        ),
        "subsample": (
            TypeError,
            r"subsample: expected a bool, got 'yes' \(str\)",
            lambda: NonLocal(8, subsample="yes"),
        ),
        "reduction": (
            ValueError,
            r"reduction: expected a value <= channels \(1\) .*got 2",
            lambda: NonLocal(1),
        ),
        "wrong_channels": (
            ValueError,
            r"x: expected 16 channels, got shape \(2, 8, 4, 4\)",
            lambda: NonLocal(16)(torch.randn(2, 8, 4, 4)),
        ),
        "wrong_rank": (
            ValueError,
            r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor of shape \(16, 4, 4\)",
            lambda: NonLocal(16)(torch.randn(16, 4, 4)),
        ),
    }

    def build(self, config):
        return randomise(NonLocal(**config))

    def input_shape(self, config):
        return (2, config["channels"], 9, 7)

    def formula(self, x, p, config):
        return numpy_non_local(x, p, **config)

    def expected_num_params(self, config):
        """theta, phi, g: C C' (+ C' biases) each; W_z: C' C (+ C); the BatchNorm's scale and
        shift 2 C; w_f: 2 C' for the concatenation."""
        c, ci, bias = config["channels"], inter(config), config.get("bias", True)
        count = 3 * (c * ci + (ci if bias else 0)) + ci * c + (c if bias else 0) + 2 * c
        return count + (2 * ci if config.get("pairwise") == "concatenation" else 0)

    def smooth_at(self, layer, x):
        """Away from the ReLU of eq. 5 and from ties of the subsampling's max pools."""
        margins = [float("inf")]
        phi = layer.p(x)
        if layer.subsample:
            margins += [window_gap(phi), window_gap(layer.g(x))]
            phi = nn.functional.max_pool2d(phi, 2, 2, ceil_mode=True)
        if layer.pairwise == "concatenation":
            w = layer.f.weight.flatten()
            ci = layer.inter_channels
            a = (w[:ci] @ layer.t(x).flatten(2))[:, :, None]
            b = (w[ci:] @ phi.flatten(2))[:, None, :]
            margins.append(float((a + b).abs().min()))
        return min(margins) > KINK_MARGIN


def test_starts_as_the_identity():
    """Sec. 4.1: the BatchNorm's scale starts at 0, so z = x exactly at initialisation, in both
    modes and for every pairwise form."""
    for pairwise in ("embedded_gaussian", "dot_product", "concatenation"):
        m = NonLocal(8, pairwise=pairwise)
        assert torch.equal(m.norm.weight, torch.zeros(8))
        x = torch.randn(2, 8, 5, 6)
        assert torch.equal(m(x), x)
        assert torch.equal(m.eval()(x), x)


def test_attention_is_the_residual_term():
    m = randomise(NonLocal(8)).eval()
    x = torch.randn(2, 8, 5, 3)
    assert m.map_kind == "residual"
    torch.testing.assert_close(m(x), x + m.attention(x))


@pytest.mark.parametrize("subsample", [False, True])
def test_affinity_is_the_pairwise_matrix(subsample):
    """(N, H W, N_j), rows of the embedded Gaussian summing to 1; y = A g reproduces the block."""
    m = randomise(NonLocal(8, subsample=subsample)).double().eval()
    x = torch.randn(2, 8, 5, 7, dtype=torch.float64)
    a = m.affinity(x)
    n_j = 3 * 4 if subsample else 35
    assert a.shape == (2, 35, n_j)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 35, dtype=torch.float64))
    g = m.g(x)
    if subsample:
        g = nn.functional.max_pool2d(g, 2, 2, ceil_mode=True)
    y = (g.flatten(2) @ a.transpose(1, 2)).reshape(2, -1, 5, 7)
    torch.testing.assert_close(m.attention(x), m.norm(m.z(y)))


# ----------------------------------------------------------------------------------- timm


@pytest.mark.parametrize("channels", [64, 96])
def test_timm_state_dict_loads_and_outputs_are_equal(channels):
    """timm's NonLocalAttn is NonLocal(C, reduction=8, divisor=8, scale=C ** -0.5): its
    state_dict (t, p, g, z, norm) loads with strict=True and both give the same outputs, in
    evaluation (running statistics) and in training mode (batch statistics); ours loads into
    timm's too."""
    theirs = randomise(NonLocalAttn(channels)).double()
    ours = NonLocal(channels, reduction=8, divisor=8, scale=channels**-0.5).double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert ours.inter_channels == theirs.t.out_channels
    x = torch.randn(2, channels, 7, 5, dtype=torch.float64)
    for train in (False, True):
        ours.train(train), theirs.train(train)
        torch.testing.assert_close(ours(x), theirs(x))
    back = NonLocalAttn(channels).double()
    back.load_state_dict(ours.state_dict(), strict=True)
    back.eval(), ours.eval()
    torch.testing.assert_close(back(x), ours(x))


def test_paper_defaults_differ_from_timm():
    """The paper: C' = C/2 and no scale; timm: C' = C/8 (multiple of 8) and C^(-1/2)."""
    m = NonLocal(64)
    assert m.inter_channels == 32 and m.scale is None and m.pairwise == "embedded_gaussian"
    assert NonLocalAttn(64).t.out_channels == 8
