"""summary(): parameters and FLOPs, total and attention only; torch.compile vs eager.

Implementation: ``src/visattn/models/summary.py``; compile checks cover a representative subset
(inductor on CPU costs 10-30 s per graph): a CIFAR ResNet with CBAM and an ST-CNN.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import visattn
from visattn.models import add_attention, create_model, summary


def test_summary_counts(capsys: pytest.CaptureFixture[str]) -> None:
    model = create_model("cbam_resnet18", num_classes=10)
    plain = create_model("resnet18", num_classes=10)
    s = summary(model, (3, 64, 64))
    printed = capsys.readouterr().out
    assert "attention" in printed and "parameters" in printed
    base = summary(plain, (1, 3, 64, 64), verbose=False)
    assert capsys.readouterr().out == ""
    assert s.params == sum(p.numel() for p in model.parameters())
    assert s.params - base.params == s.attention_params > 0
    assert base.attention_params == 0 and base.attention_flops == 0
    assert len(s.attention_blocks) == 8
    # The convolutions of the plain network are the same: the difference is the attention.
    assert s.flops - base.flops == s.attention_flops > 0
    # SE-style MLP + 7x7 spatial conv per block, counted by hand for layer1.0 (C=64, 4 hidden).
    c, hidden, hw = 64, 4, 16 * 16
    mlp = 2 * 2 * (c * hidden + hidden * c)  # two pools, two 1x1 convs, 2 FLOPs per MAC
    spatial = 2 * 2 * 49 * hw
    one = summary(model.layer1[0].se, (1, c, 16, 16), verbose=False)
    assert one.flops == mlp + spatial
    assert 0 < s.attention_flop_fraction < 0.05


def test_summary_resnet50_flops() -> None:
    s = summary(create_model("resnet50"), (3, 224, 224), verbose=False)
    assert round(s.flops / 1e9, 1) == 8.2  # 4.1 GMACs, as usually reported
    assert round(s.params / 1e6, 2) == 25.56


def test_summary_after_add_attention_and_errors() -> None:
    model = add_attention(create_model("resnet20_cifar"), "se")
    s = summary(model, (3, 32, 32), verbose=False)
    assert len(s.attention_blocks) == 9
    assert s.attention_params == model.visattn_report.num_params
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="input_size"):
        summary(model, (32, 32))
    with pytest.raises(TypeError, match="model"):
        summary(nn.Linear, (3, 32, 32))  # type: ignore[arg-type]


def test_compile_matches_eager() -> None:
    """One test, so that the compiler's start-up is paid once per xdist worker."""
    cases = [
        (create_model("resnet20_cifar", num_classes=5, attention="cbam", attention_stages=(3,)),
         torch.randn(2, 3, 16, 16)),
        (create_model("stcnn", num_classes=5, input_size=28, transform="affine"),
         torch.randn(2, 1, 28, 28)),
    ]  # fmt: skip
    # PreservedAttention (the delta form of add_attention) compiles and keeps the output.
    seq = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3), nn.ReLU()
    )
    x = torch.randn(2, 3, 13, 13)
    with torch.no_grad():
        before = seq.eval()(x)
    cases.append((add_attention(seq, "cbam", reduction=4), x))
    for model, x in cases:
        model.eval()
        with torch.no_grad():
            expected = model(x)
            got = torch.compile(model)(x)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(expected, before, atol=1e-5, rtol=1e-5)


def test_attention_scan_and_forward_flops() -> None:
    """One scan (``visattn.models.scan``) serves summary, capture and the demo; one FLOP counter."""
    from visattn.models.scan import attention_modules
    from visattn.models.summary import forward_flops
    from visattn.viz import attention_layers

    model = create_model("resnet20_cifar", attention="cbam", attention_stages=(3,))
    outer = attention_modules(model)
    every = attention_modules(model, outermost=False)
    assert list(outer) == [f"layer3.{i}.se" for i in range(3)]
    assert [n for n in every if n not in outer] == [
        f"layer3.{i}.se.{part}" for i in range(3) for part in ("channel", "spatial")
    ]
    assert attention_layers(model) == {
        f"layer3.{i}.se.{part}": part for i in range(3) for part in ("channel", "spatial")
    }
    conv = nn.Conv2d(3, 4, 3, bias=False).train()
    assert forward_flops(conv, torch.zeros(1, 3, 6, 6)) == 2 * 27 * 4 * 16
    assert conv.training
    with pytest.raises(TypeError, match="model"):
        attention_modules(nn.Linear)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", visattn.list_attention())
def test_summary_of_every_mechanism(name: str) -> None:
    """For every registered mechanism in a ResNet-18: the attention's parameters are exactly
    what it adds to the plain network, its FLOPs the difference of the two forward passes'
    (FlopCounterMode, the same rule for both), and its blocks are the eight residual slots."""
    size = (1, 3, 64, 64)
    plain = summary(visattn.create_model("resnet18", num_classes=10), size, verbose=False)
    model = visattn.create_model("resnet18", num_classes=10, attention=name)
    s = summary(model, size, verbose=False)
    assert s.attention_params == s.params - plain.params
    assert s.attention_flops == s.flops - plain.flops
    assert len(s.attention_blocks) == 8
