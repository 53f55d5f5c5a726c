"""Tests of the attention registry (src/visattn/layers/registry.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visattn import (
    BAM,
    CBAM,
    CECA,
    ECA,
    ESE,
    CoordAttention,
    GatherExcite,
    GlobalContext,
    LightCBAM,
    NonLocal,
    SelectiveKernel,
    SimAM,
    SqueezeExcite,
    TripletAttention,
    create_attention,
    list_attention,
    register_attention,
)


def test_list_and_create():
    assert {
        "bam",
        "cbam",
        "ceca",
        "channel",
        "coord",
        "eca",
        "ese",
        "lcbam",
        "nonlocal",
        "se",
        "simam",
        "sk",
        "spatial",
        "triplet",
    } <= set(list_attention())
    se = create_attention("se", 64, reduction=8)
    assert isinstance(se, SqueezeExcite) and se.fc1.out_channels == 8
    assert isinstance(create_attention("cbam", 32), CBAM)
    assert type(create_attention("eca", 64)) is ECA and create_attention("eca", 64).kernel_size == 3
    assert type(create_attention("ceca", 64, kernel_size=5)) is CECA
    assert type(create_attention("ese", 64)) is ESE
    assert {"gc", "ge"} <= set(list_attention())
    assert isinstance(create_attention("gc", 64), GlobalContext)
    assert isinstance(create_attention("ge", 64), GatherExcite)
    x = torch.randn(1, 32, 4, 4)
    assert create_attention("spatial", 32, kernel_size=3)(x).shape == x.shape
    assert isinstance(create_attention("bam", 64), BAM)
    assert isinstance(create_attention("coord", 64), CoordAttention)
    assert isinstance(create_attention("triplet", 64), TripletAttention)
    sk = create_attention("sk", 64)  # SelectiveKernel(64, 64): shape preserving
    assert isinstance(sk, SelectiveKernel) and sk.out_channels == 64
    assert isinstance(create_attention("lcbam", 64), LightCBAM)
    nl = create_attention("nonlocal", 64, pairwise="dot_product")
    assert isinstance(nl, NonLocal) and nl.inter_channels == 32 and nl.pairwise == "dot_product"
    simam = create_attention("simam", 64, e_lambda=0.5)  # parameter-free: ignores channels
    assert isinstance(simam, SimAM) and simam.e_lambda == 0.5


def test_unknown_name():
    with pytest.raises(ValueError, match=r"name: expected one of .*'se'.*got 'bam2'"):
        create_attention("bam2", 32)


def test_register():
    class Scale(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.w = nn.Parameter(torch.ones(channels, 1, 1))

        def forward(self, x):
            return x * self.w

    register_attention("test_scale", Scale)
    try:
        assert isinstance(create_attention("test_scale", 4), Scale)
        with pytest.raises(ValueError, match=r"already registered"):
            register_attention("test_scale", Scale)
    finally:
        from visattn.layers import registry

        registry._REGISTRY.pop("test_scale")
