"""Tests of Triplet Attention (arXiv:2010.03045, eq. 1-3; src/visattn/layers/triplet.py): the
battery of layer_tester.py on the configurations of TestTripletAttention (the NumPy formula
rotates x as the paper does), then its own tests: the paper's code's state_dict names, BatchNorm
settings and parameter count (300 per block, 4.8 K in a ResNet-50)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from layer_tester import KINK_MARGIN, LayerTester, min_gap
from torch import nn

from visattn import TripletAttention, create_attention

BN_EPS = 1e-5  # the paper's code's BatchNorm eps


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def psi(z, p, branch):
    """BN(conv_k(z)) for z (N, 2, A, B): zero-padded k x k cross-correlation (no bias), then the
    branch's BatchNorm with its running statistics."""
    w = p[f"{branch}.conv.conv.weight"]  # (1, 2, k, k)
    k = w.shape[-1]
    r = k // 2
    n, _, a, b = z.shape
    padded = np.pad(z, ((0, 0), (0, 0), (r, r), (r, r)))
    out = np.zeros((n, 1, a, b))
    for i in range(k):
        for j in range(k):
            out[:, 0] += np.einsum("nkab,k->nab", padded[:, :, i : i + a, j : j + b], w[0, :, i, j])
    bn = f"{branch}.conv.bn."
    mean, var = p[bn + "running_mean"], p[bn + "running_var"]
    return (out - mean) / np.sqrt(var + BN_EPS) * p[bn + "weight"] + p[bn + "bias"]


def branch_output(x, p, branch, axes):
    """Rotate x to ``axes``; chi * sigma(psi(Z-pool(chi))) with Z-pool = [max; mean] over the
    first axis after N (eq. 1); rotate back."""
    chi = np.transpose(x, axes)
    z = np.stack([chi.max(1), chi.mean(1)], axis=1)
    return np.transpose(chi * sigmoid(psi(z, p, branch)), np.argsort(axes))


def numpy_triplet(x, p, no_spatial=False, **_):
    """y = 1/3 (cw + hc + hw) (eq. 2): cw rotates x to (N, H, C, W), hc to (N, W, H, C), hw keeps
    it; without the spatial branch, 1/2 (cw + hc)."""
    outs = [branch_output(x, p, "cw", (0, 2, 1, 3)), branch_output(x, p, "hc", (0, 3, 2, 1))]
    if not no_spatial:
        outs.append(branch_output(x, p, "hw", (0, 1, 2, 3)))
    return sum(outs) / len(outs)


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


class TestTripletAttention(LayerTester):
    layer = TripletAttention
    configs = {  # noqa: RUF012
        "paper": {},  # k = 7, three branches
        "k3": {"kernel_size": 3},
        "no_spatial": {"no_spatial": True},
        "k1_no_spatial": {"kernel_size": 1, "no_spatial": True},
    }
    gradcheck_configs = ("paper", "no_spatial")
    tolerances = {  # noqa: RUF012
        **LayerTester.tolerances,
        # float32 against the float64 formula, measured over 30 seeds x every configuration x
        # 3 shapes x both backends: max |error| 4.2e-7 (outputs up to 2.9), all within
        # rtol 1e-6 alone; atol ~3.5x that. bfloat16 autocast: measured max |error| 1.4e-2
        "float32": {"rtol": 1e-6, "atol": 1.5e-6},
    }
    errors = {  # noqa: RUF012
        "even_kernel": (
            ValueError,
            r"kernel_size: expected an odd size so the map keeps its position, got 6",
            lambda: TripletAttention(kernel_size=6),
        ),
        "kernel_not_int": (
            TypeError,
            r"kernel_size: expected an int, got 7.0 \(float\)",
            lambda: TripletAttention(kernel_size=7.0),
        ),
        "no_spatial_not_bool": (
            TypeError,
            r"no_spatial: expected a bool, got 'yes'",
            lambda: TripletAttention(no_spatial="yes"),
        ),
        "wrong_rank": (
            ValueError,
            r"x: expected a 4-D tensor \(N, C, H, W\), got a 3-D tensor of shape \(8, 4, 4\)",
            lambda: TripletAttention()(torch.randn(8, 4, 4)),
        ),
    }

    def build(self, config):
        return randomise(TripletAttention(**config))

    def input_shape(self, config):
        return (2, 6, 9, 7)

    def formula(self, x, p, config):
        return numpy_triplet(x, p, **config)

    def expected_num_params(self, config):
        """Per branch: the convolution's 2 k^2 weights (no bias) and BatchNorm's scale and shift."""
        k = config.get("kernel_size", 7)
        return (2 if config.get("no_spatial") else 3) * (2 * k * k + 2)

    def smooth_at(self, layer, x):
        """The three Z-pools' maxima (over H, over W, over C) away from ties."""
        return min(min_gap(x, d) for d in (1, 2, 3)) > KINK_MARGIN


def test_paper_code_state_dict_names_and_batchnorm():
    """The paper's code's keys (``cw.conv.conv.weight``, ``cw.conv.bn.*``, ...): its checkpoints
    load with strict=True; its BatchNorm has eps 1e-5, momentum 0.01 and an affine part, its
    convolution no bias."""
    stats = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    want = {f"{b}.conv.conv.weight" for b in ("cw", "hc", "hw")}
    want |= {f"{b}.conv.bn.{k}" for b in ("cw", "hc", "hw") for k in stats}
    m = TripletAttention()
    assert set(m.state_dict()) == want
    assert set(TripletAttention(no_spatial=True).state_dict()) == {
        k for k in want if not k.startswith("hw.")
    }
    bn, conv = m.cw.conv.bn, m.cw.conv.conv
    assert (bn.eps, bn.momentum, bn.affine) == (1e-5, 0.01, True)
    assert conv.bias is None and conv.kernel_size == (7, 7) and conv.padding == (3, 3)


def test_parameter_count_is_the_papers():
    """3 x (2 * 7^2 + 2) = 300 per block; the paper's ResNet-50 has 16 blocks: 4.8 K."""
    m = TripletAttention()
    assert sum(p.numel() for p in m.parameters()) == 300
    assert 16 * 300 == 4800


@pytest.mark.parametrize("no_spatial", [False, True])
def test_attention_is_the_average_of_the_branch_maps(no_spatial):
    """attention(x) = mean of sigma(psi_i(...)) over the branches, each map in [0, 1]."""
    m = randomise(TripletAttention(no_spatial=no_spatial)).eval()
    a = m.attention(torch.randn(2, 5, 6, 7) * 3)
    assert a.shape == (2, 5, 6, 7) and bool(((a >= 0) & (a <= 1)).all())


def test_registry_ignores_channels():
    m = create_attention("triplet", 64, kernel_size=3)
    assert isinstance(m, TripletAttention) and m.kernel_size == 3
