"""timm interop of the attention ResNets, one table row per mechanism (random weights, no
download).

For every attention name of :data:`TIMM_ATTENTION` that ``visattn.list_attention()`` has,
``timm.create_model("resnet50", block_args={"attn_layer": <timm name>})``'s state dict loads into
``create_model("resnet50", attention=<name>)`` with ``strict=True`` and both give the same logits
in eval mode; rows whose mechanism is not registered skip with the reason. The same for timm's
named networks (:data:`TIMM_NETWORKS`: ResNet-D / -T, SE and ECA networks). A new mechanism
with a timm counterpart needs one row here. Implementation: ``src/visattn/models/resnet.py``,
``src/visattn/models/registry.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
from test_models_add_attention import _pretrained_like
from torch import nn

import visattn
from visattn.models import create_model

timm = pytest.importorskip("timm")

# visattn attention name -> (timm's ``attn_layer`` name, keyword arguments of timm's module (empty:
# timm's defaults), ``attention_kw`` that reproduces that module in visattn's ImageNet ResNets, or
# a function channels -> kw where timm's option depends on C). Our kw is empty where the ImageNet
# defaults (resnet.IMAGENET_ATTENTION_DEFAULTS, over the layer's paper defaults) already are
# timm's module; docs/models.md says why each one differs.
TIMM_ATTENTION: dict[str, tuple[str, dict, dict | Callable[[int], dict]]] = {
    "cbam": ("cbam", {}, {"bias": False}),  # timm's MLP has no biases (the official code's has)
    "ceca": ("ceca", {}, {}),
    # timm: C * (1/16) * (2/3) hidden channels rounded to 8, no biases (the paper's code: C // 32)
    "coord": ("coord", {}, {"reduction": 24, "divisor": 8, "bias": False}),
    "eca": ("eca", {}, {}),
    "ese": ("ese", {}, {}),
    # timm: fusion by scaling, r = 8, LayerNorm epsilon 1e-6 (the paper: addition, r = 16, 1e-5)
    "gc": ("gc", {}, {"fusion": "scale", "reduction": 8, "norm_eps": 1e-6}),
    # timm 1.0.31 cannot build its default GatherExcite (use_mlp=True passes act_layer twice);
    # use_mlp=False is the paper's parameter-free GE-theta^- (global), our default
    "ge": ("ge", {"use_mlp": False}, {}),
    "lcbam": ("lcbam", {}, {}),
    # timm: C' = C/8 rounded to 8 and theta^T phi scaled by C^(-1/2) (the paper: C/2, no scale)
    "nonlocal": ("nl", {}, lambda c: {"reduction": 8, "divisor": 8, "scale": c**-0.5}),
    "se": ("se", {}, {}),  # the ImageNet default divisor=8 is timm's rd_divisor
}

# timm model name (registered in visattn under the same name) -> attention it needs, or None.
TIMM_NETWORKS: dict[str, str | None] = {
    "ecaresnet26t": "eca",
    "ecaresnet50d": "eca",
    "resnet26t": None,
    "resnet50d": None,
    "seresnet50": "se",
}

# Largest |ours - timm| over the logits, measured over 3 seeds at 40 x 40 and 64 x 64 for every
# row (with the mechanisms' branches merged) and for the networks: 1.7e-6 (se: the fused kernel
# sums in another order), 3.3e-7 (cbam), 0 for the others. Tolerance 1e-5.
ATOL = RTOL = 1e-5


def _skip_unless_registered(attention: str | None) -> None:
    if attention is not None and attention not in visattn.list_attention():
        pytest.skip(f"attention {attention!r} is not registered (visattn.list_attention())")


def _same_logits(theirs: nn.Module, ours: nn.Module) -> None:
    _pretrained_like(theirs)  # trained-looking BatchNorms (also the attention's own)
    result = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # As many tensors (names may differ where a layer reads timm's names on load: CBAM's
    # spatial convolution and its BatchNorm, ``spatial.conv.conv`` / ``spatial.conv.bn``).
    assert len(ours.state_dict()) == len(theirs.state_dict())
    theirs.eval()
    ours.eval()
    x = torch.randn(1, 3, 40, 40)  # 40 -> 20 -> 10 -> 5 -> 3: an odd map meets avg_down
    with torch.no_grad():
        expected = theirs(x)
        got = ours(x)
    assert got.shape == expected.shape == (1, 1000)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", sorted(TIMM_ATTENTION))
def test_timm_resnet50_with_attention(name: str) -> None:
    _skip_unless_registered(name)
    timm_name, timm_kw, kw = TIMM_ATTENTION[name]
    layer = timm.layers.get_attn(timm_name)
    if timm_kw:
        layer = functools.partial(layer, **timm_kw)
    theirs = timm.create_model("resnet50", pretrained=False, block_args={"attn_layer": layer})
    if callable(kw):  # options that depend on the channels: a factory per module
        ours = create_model(
            "resnet50", attention=lambda c: visattn.create_attention(name, c, **kw(c))
        )
    else:
        ours = create_model("resnet50", attention=name, attention_kw=kw or None)
    _same_logits(theirs, ours)


@pytest.mark.parametrize("name", sorted(TIMM_NETWORKS))
def test_timm_networks(name: str) -> None:
    _skip_unless_registered(TIMM_NETWORKS[name])
    _same_logits(timm.create_model(name, pretrained=False), create_model(name))
