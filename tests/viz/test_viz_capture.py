"""Tests of visattn.viz.capture: hooks return exactly the SE / CBAM / STN tensors of eq. 2-3."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import visattn
from visattn.layers import CBAM, SpatialTransformer, SqueezeExcite
from visattn.viz import AttentionRecorder, attention_layers, capture


def _rand_input(n: int, size: int = 12) -> torch.Tensor:
    return torch.randn(n, 1, size, size)


@pytest.mark.parametrize("n", [1, 3])
def test_se_gates_match_excitation(tiny_net, n):
    model = tiny_net("se").eval()
    x = _rand_input(n)
    maps = capture(model, x)
    assert set(maps.se) == {"attn1", "attn2"}
    h = torch.relu(model.conv1(x))
    torch.testing.assert_close(maps.se["attn1"], model.attn1.excitation(h).flatten(1))
    assert maps.se["attn2"].shape == (n, 16)
    torch.testing.assert_close(maps.output, model(x))
    assert not maps.channel and not maps.spatial and not maps.theta


@pytest.mark.parametrize("order", ["channel_first", "spatial_first", "parallel"])
def test_cbam_maps_match_attention(order):
    layer = CBAM(8, reduction=2, kernel_size=3, order=order, norm=True).eval()
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), layer)
    x = torch.randn(2, 3, 9, 7)
    maps = capture(model, x)
    f = model[0](x)
    if order == "channel_first":
        mc = layer.channel.attention(f)
        ms = layer.spatial.attention(f * mc)
    elif order == "spatial_first":
        ms = layer.spatial.attention(f)
        mc = layer.channel.attention(f * ms)
    else:
        mc, ms = layer.channel.attention(f), layer.spatial.attention(f)
    torch.testing.assert_close(maps.channel["1.channel"], mc.flatten(1))
    torch.testing.assert_close(maps.spatial["1.spatial"], ms)
    assert maps.spatial["1.spatial"].shape == (2, 1, 9, 7)


def test_stn_theta_and_grid(tiny_net):
    model = tiny_net("stn").eval()
    with torch.no_grad():
        model.stn.localisation[-1].bias.add_(0.1 * torch.randn(6))
    x = _rand_input(2)
    maps = capture(model, x)
    torch.testing.assert_close(maps.theta["stn"], model.stn.localisation(x))
    torch.testing.assert_close(maps.grid["stn"], model.stn.grid_generator(maps.theta["stn"]))
    assert maps.grid["stn"].shape == (2, 12, 12, 2)
    torch.testing.assert_close(maps.stn_input["stn"], x)
    torch.testing.assert_close(maps.stn_output["stn"], model.stn(x))


def test_recorder_concatenates_and_removes_hooks(tiny_net):
    model = tiny_net("cbam").eval()
    before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    with AttentionRecorder(model) as rec, torch.no_grad():
        model(_rand_input(2))
        model(_rand_input(3).contiguous(memory_format=torch.channels_last))
    after = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert before == after == 0
    maps = rec.maps()
    assert maps.channel["attn2.channel"].shape == (5, 16)
    assert maps.spatial["attn1.spatial"].shape == (5, 1, 12, 12)
    rec.clear()
    assert rec.maps().is_empty()


def test_fallback_when_submodule_is_bypassed():
    """A fused forward that never calls fc2 is still captured (recomputed from the input)."""

    class FusedSE(SqueezeExcite):
        def forward(self, x):
            z = x.mean((2, 3), keepdim=True)
            w1, w2 = self.fc1.weight, self.fc2.weight
            s = torch.sigmoid(
                nn.functional.conv2d(
                    torch.relu(nn.functional.conv2d(z, w1, self.fc1.bias)), w2, self.fc2.bias
                )
            )
            return x * s

    layer = FusedSE(6, reduction=2)
    x = torch.randn(2, 6, 5, 5)
    maps = capture(layer, x)
    torch.testing.assert_close(maps.se[""], layer.excitation(x).flatten(1))


def test_plain_model_and_errors(tiny_net):
    model = tiny_net(None)
    assert attention_layers(model) == {}
    assert capture(model, _rand_input(1)).is_empty()
    with pytest.raises(TypeError, match="model"):
        capture(lambda t: t, _rand_input(1))
    with pytest.raises(ValueError, match="x: expected a 4-D"):
        capture(model, torch.randn(1, 12, 12))


def test_grad_mode_and_training_mode_untouched(tiny_net):
    model = tiny_net("se").train()
    x = _rand_input(2)
    maps = capture(model, x, grad=True)
    assert model.training
    assert not maps.se["attn1"].requires_grad
    assert attention_layers(model) == {"attn1": "se", "attn2": "se"}
    assert isinstance(model.attn1, SqueezeExcite) and not isinstance(model.stn, SpatialTransformer)


class _GlobalGate(nn.Module):
    """A mechanism the package does not know: x * sigma(w * mean(x)), declared as a channel map."""

    map_kind = "channel"

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(channels, 1, 1))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.w * x.mean((2, 3), keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


def test_a_new_mechanism_is_captured_by_declaring_its_map_kind():
    """The protocol every attention layer follows: ``map_kind`` and ``attention(x)``. A layer
    written elsewhere is found by the scan (summary, demo) and its map recorded, unlisted."""
    from visattn.models.scan import attention_modules

    gate = _GlobalGate(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), gate)
    x = torch.randn(2, 3, 5, 7)
    assert attention_layers(model) == {"1": "channel"}
    assert list(attention_modules(model)) == ["1"]
    maps = capture(model, x)
    torch.testing.assert_close(maps.channel["1"], gate.attention(model[0](x)).flatten(1))
    assert not maps.se and not maps.spatial


def test_viz_is_reached_from_the_package_alone():
    """``import visattn`` then ``visattn.viz.capture`` (the README's spelling) works: the
    sub-packages that are not imported up front load on first use."""
    import subprocess
    import sys

    code = "import visattn, sys; assert 'visattn.viz' not in sys.modules; visattn.viz.capture"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


class _Context(nn.Module):
    """An additive mechanism: x + w * mean(x), declared per instance ("residual") or, with
    ``scale=True``, as a mixed map x * sigmoid(w x): the instance's attribute wins."""

    map_kind = "residual"

    def __init__(self, channels: int, scale: bool = False) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(channels, 1, 1))
        if scale:
            self.map_kind = "mixed"

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        if self.map_kind == "mixed":
            return torch.sigmoid(self.w * x)
        return self.w * x.mean((2, 3), keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attention(x)
        return x * a if self.map_kind == "mixed" else x + a


def test_every_kind_is_recorded_under_its_field_expanded_to_the_input():
    """``residual`` and ``mixed`` maps are recorded at the layer input's shape; an instance's
    ``map_kind`` overrides its class's."""
    import importlib

    from visattn.layers._common import MAP_KINDS

    capture_module = importlib.import_module("visattn.viz.capture")  # the module, not the function
    assert set(capture_module._MAPS) == set(MAP_KINDS)  # every kind has a recorder
    add, mul = _Context(4), _Context(4, scale=True)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), add, mul)
    x = torch.randn(2, 3, 5, 7)
    assert attention_layers(model) == {"1": "residual", "2": "mixed"}
    maps = capture(model, x)
    u = model[0](x)
    torch.testing.assert_close(maps.residual["1"], add.attention(u).expand_as(u))
    torch.testing.assert_close(maps.mixed["2"], mul.attention(add(u)))
    assert not maps.is_empty() and not maps.channel


@pytest.mark.parametrize("name", visattn.list_attention())
def test_every_registered_mechanism_is_captured(name):
    """Each name of the registry, in a small network, has its maps recorded by ``capture``
    (CBAM through its parts), with the batch size first."""
    layer = visattn.create_attention(name, 32)  # 32: SE-style bottlenecks of C / 16 keep 2
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), layer).eval()
    maps = capture(model, torch.randn(3, 3, 9, 11))
    recorded = {
        kind: getattr(maps, kind)
        for kind in ("se", "channel", "spatial", "mixed", "residual", "select")
    }
    assert any(recorded.values()), name
    for per_layer in recorded.values():
        for tensor in per_layer.values():
            assert tensor.shape[0] == 3 and torch.isfinite(tensor).all()
