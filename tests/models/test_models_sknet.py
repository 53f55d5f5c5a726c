"""Selective Kernel ResNets (arXiv:1903.06586; src/visattn/models/sknet.py): timm's skresnet18,
skresnet34, skresnet50 and skresnext50_32x4d (the paper's SKNet-50) load into ours with
strict=True and give the same logits (random weights, no download); parameter counts; where the
SK unit sits; the attention slot, zero_init_residual and add_attention on SK ResNets; "sk"
refused by add_attention.
"""

from __future__ import annotations

import pytest
import torch
from test_models_add_attention import _pretrained_like

from visattn import SelectiveKernel, add_attention, create_model
from visattn.models import sk_resnet

timm = pytest.importorskip("timm")

NAMES = ["skresnet18", "skresnet34", "skresnet50", "skresnext50_32x4d"]

#: timm 1.0's counts at 1000 classes; skresnext50_32x4d is the paper's SKNet-50 (Table 1: 27.5M).
#: The paper gives no count for SK units in plain (ungrouped) ResNets.
NUM_PARAMS = {
    "skresnet18": 11_958_056,
    "skresnet34": 22_282_376,
    "skresnet50": 25_803_160,
    "skresnext50_32x4d": 27_479_784,
}


@pytest.mark.parametrize("name", NAMES)
def test_timm_weights_load_strict_and_logits_agree(name):
    theirs = _pretrained_like(timm.create_model(name, pretrained=False)).eval()
    ours = create_model(name).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters()) == NUM_PARAMS[name]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want, got = theirs(x), ours(x)
    # measured max |difference| over 5 seeds per model 2.6e-6 (skresnet50; logits up to ~4, the
    # SK units sum in another order), 3.2e-6 once at logits up to 5.5; atol ~6x that
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)


def test_sknet50_is_the_papers_size():
    """SKNet-50 (Table 1): 27.5M parameters; ResNeXt-50 32x4d (25.0M) plus the SK units."""
    assert round(NUM_PARAMS["skresnext50_32x4d"] / 1e6, 1) == 27.5


def test_our_weights_load_into_timm_with_another_head():
    ours = create_model("skresnet18", num_classes=5)
    theirs = timm.create_model("skresnet18", pretrained=False, num_classes=5)
    theirs.load_state_dict(ours.state_dict(), strict=True)


def test_where_the_sk_unit_sits():
    """Basic blocks: conv1 (with the stride); bottlenecks: conv2 (stride, groups = cardinality)."""
    r18 = create_model("skresnet18")
    sk = r18.layer2[0].conv1
    assert isinstance(sk, SelectiveKernel) and sk.stride == 2 and sk.split_input
    assert sk.groups == 1 and sk.attn_channels == 16  # 128 / 8 rounded to a multiple of 16
    r50 = create_model("skresnet50")
    sk = r50.layer2[0].conv2
    assert isinstance(sk, SelectiveKernel) and sk.stride == 2 and sk.in_channels == 128
    assert sk.groups == 1 and sk.split_input and sk.attn_channels == 8
    sknet = create_model("skresnext50_32x4d")
    sk = sknet.layer1[0].conv2
    assert sk.in_channels == 128 and sk.groups == 32 and not sk.split_input
    assert sk.attn_channels == 32 and sknet.layer4[0].conv2.attn_channels == 64  # max(C/16, 32)


def test_attention_slot_and_zero_init():
    model = create_model("skresnet18", attention="se", zero_init_residual=True)
    block = model.layer1[0]
    assert block.se is not None and (block.conv2.bn.weight == 0).all()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


def test_add_attention_fills_sk_blocks_and_preserves_the_output():
    model = _pretrained_like(create_model("skresnet50", num_classes=10)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        add_attention(model, "se", reduction=16)
        after = model(x)
    assert len(model.visattn_report) == 16
    assert model.visattn_report.insertions[0].channels == 256
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_add_attention_refuses_sk():
    """SK replaces a convolution: add_attention refuses the registered "sk", model untouched."""
    model = create_model("resnet18", num_classes=10)
    names = [n for n, _ in model.named_modules()]
    with pytest.raises(ValueError, match=r"kind: 'sk' is a convolution replacement"):
        add_attention(model, "sk")
    assert [n for n, _ in model.named_modules()] == names


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: sk_resnet(101), ValueError, r"depth: expected one of \[18, 34, 50\], got 101"),
        (lambda: sk_resnet(18, cardinality=32), ValueError,
         r"cardinality: the basic blocks of depth 18 have no groups or width options, got "
         r"cardinality=32, base_width=64"),
        (lambda: sk_resnet(50, sk_kw={"groups": 4}), ValueError,
         r"sk_kw: the bottleneck's SK groups are its cardinality \(pass cardinality=\), got "
         r"groups=4"),
        (lambda: sk_resnet(50, sk_kw=3), TypeError, r"sk_kw: expected a dict or None, got int"),
    ],
)  # fmt: skip
def test_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()
