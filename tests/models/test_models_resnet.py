"""ResNets with attention: parameter counts, placements, stages, CIFAR layout.

Implementation: ``src/visattn/models/resnet.py``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import visattn
from visattn.models import BasicBlock, Bottleneck, create_model


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "millions"),
    [
        ("resnet50", 25.56),  # He et al. / torchvision
        ("seresnet50", 28.09),  # SE paper Table 2 / timm
        ("cbam_resnet50", 28.09),  # CBAM paper Table 4
        ("resnet110_cifar", 1.7),  # He et al. Table 6
    ],
)
def test_parameter_counts(name: str, millions: float) -> None:
    n = _count(create_model(name))
    digits = 1 if millions == 1.7 else 2
    assert round(n / 1e6, digits) == millions, n


def test_cifar_layout() -> None:
    for depth in (20, 32, 56, 110):
        m = create_model(f"resnet{depth}_cifar")
        n = (depth - 2) // 6
        assert [len(m.layer1), len(m.layer2), len(m.layer3)] == [n, n, n]
        assert not hasattr(m, "layer4")
        convs = [x for x in m.modules() if isinstance(x, nn.Conv2d)]
        assert len(convs) + 1 == depth  # 6n + 1 convolutions and the fc layer
        assert m.layer3[-1].conv2.out_channels == 64
    m = create_model("resnet20_cifar", attention="se")
    assert isinstance(m.layer1[0].se, visattn.SqueezeExcite)
    assert m.layer1[0].se.fc1.out_channels == 1  # 16 / 16, as in the SE paper
    proj = create_model("resnet20_cifar", shortcut="B")
    assert isinstance(proj.layer2[0].downsample, nn.Sequential)
    assert _count(proj) > _count(create_model("resnet20_cifar"))


def test_attention_defaults_and_kw() -> None:
    m = create_model("seresnet18")
    assert m.layer1[0].se.fc1.out_channels == 8  # 64 / 16 rounded up to a multiple of 8 (timm)
    m = create_model("cbam_resnet50")
    assert isinstance(m.layer1[0].se, visattn.CBAM)
    assert isinstance(m.layer1[0].se.spatial.bn, nn.BatchNorm2d)
    m = create_model("resnet50", attention="cbam")
    assert _count(m) == _count(create_model("cbam_resnet50"))
    m = create_model("resnet18", attention="se", attention_kw={"reduction": 4, "divisor": 1})
    assert m.layer1[0].se.fc1.out_channels == 16
    m = create_model("resnet18", attention=lambda c: nn.Identity())
    assert isinstance(m.layer4[1].se, nn.Identity)


@pytest.mark.parametrize("placement", ["standard", "pre", "post", "identity"])
def test_placements(placement: str) -> None:
    m = create_model("resnet50", attention="se", placement=placement)
    block = m.layer2[0]
    assert block.placement == placement
    expected = 256 if placement == "pre" else 512  # input vs output channels of the block
    assert block.se.channels == expected
    # The unit is really used at its place: record the input it sees.
    seen = {}

    def hook(mod, inp, out):
        seen["shape"] = inp[0].shape

    block.se.register_forward_hook(hook)
    x = torch.randn(1, 3, 64, 64)
    out = m(x)
    assert seen["shape"][1] == expected
    out.sum().backward()
    assert block.se.fc1.weight.grad.abs().sum() > 0


def test_placement_semantics() -> None:
    """Each placement computes its formula (checked with a doubling 'attention')."""

    class Double(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.channels = channels

        def forward(self, x):
            return 2 * x

    x = torch.randn(2, 16, 8, 8)
    for placement in ("standard", "pre", "post", "identity"):
        block = BasicBlock(16, 16, se=Double(16), placement=placement).eval()
        plain = BasicBlock(16, 16).eval()
        plain.load_state_dict(block.state_dict())

        def f(t, m=plain):  # F(x) of a basic block (He et al., Fig. 2)
            return m.bn2(m.conv2(torch.relu(m.bn1(m.conv1(t)))))

        expected = {
            "standard": torch.relu(x + 2 * f(x)),
            "pre": torch.relu(x + f(2 * x)),
            "post": 2 * torch.relu(x + f(x)),
            "identity": torch.relu(2 * x + f(x)),
        }[placement]
        torch.testing.assert_close(block(x), expected)


def test_attention_stages() -> None:
    m = create_model("resnet34", attention="cbam", attention_stages=(3, 4))
    assert m.layer1[0].se is None and m.layer2[-1].se is None
    assert isinstance(m.layer3[0].se, visattn.CBAM) and isinstance(m.layer4[2].se, visattn.CBAM)
    with pytest.raises(ValueError, match="attention_stages"):
        create_model("resnet34", attention="se", attention_stages=(5,))
    with pytest.raises(ValueError, match="attention_stages"):
        create_model("resnet20_cifar", attention="se", attention_stages=(4,))


def test_other_options() -> None:
    with pytest.raises(ValueError, match="placement"):
        create_model("resnet18", attention="se", placement="middle")
    with pytest.raises(ValueError, match="shortcut"):
        create_model("resnet18", shortcut="C")
    m = create_model("resnet18", zero_init_residual=True)
    assert m.layer1[0].bn2.weight.abs().sum() == 0
    m = create_model("resnet50", zero_init_residual=True)
    assert isinstance(m.layer1[0], Bottleneck) and m.layer1[0].bn3.weight.abs().sum() == 0


def test_channels_last_and_odd_size() -> None:
    m = create_model("cbam_resnet18", num_classes=3).eval()
    x = torch.randn(2, 3, 37, 45)
    with torch.no_grad():
        ref = m(x)
        out = m(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
