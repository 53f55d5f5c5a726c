"""ResNets with attention: parameter counts, placements, stages, CIFAR layout, the ResNet-D
stems and shortcuts, attention between stages and in every k-th block.

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
        ("resnet110_cifar", 1.7),  # He et al. Table 6
        # the attention ResNets: test_models_attention_resnets.py's PUBLISHED
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


def test_deep_stems_timm_layout() -> None:
    """ResNet-C/D stems (arXiv:1812.01187, Fig. 2b): three 3 x 3 convolutions in timm's
    ``conv1`` Sequential, widths (32, 32, 64), tiered (24, 32, 64), or from ``stem_width``."""
    for stem, widths in (("deep", (32, 32, 64)), ("tiered", (24, 32, 64))):
        m = create_model("resnet50", stem=stem)
        convs = [m.conv1[i] for i in (0, 3, 6)]
        assert [c.out_channels for c in convs] == list(widths)
        assert [c.kernel_size for c in convs] == [(3, 3)] * 3
        assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1)]
        assert [m.conv1[i].num_features for i in (1, 4)] == list(widths[:2])
        assert isinstance(m.conv1[2], nn.ReLU) and isinstance(m.conv1[5], nn.ReLU)
        assert len(m.conv1) == 7 and m.bn1.num_features == 64
        assert isinstance(m.maxpool, nn.MaxPool2d)
    m = create_model("resnet18", stem="deep", stem_width=64)
    assert m.conv1[6].out_channels == 128 and m.layer1[0].conv1.in_channels == 128
    assert m.layer1[0].downsample is not None  # 128 -> 64 channels: a projection
    # (N, 3, H, W) -> (N, 64, H / 4, W / 4) before the stages, as the 7 x 7 stem
    x = torch.randn(1, 3, 36, 52)
    for stem in ("imagenet", "deep", "tiered"):
        m = create_model("resnet18", stem=stem)
        assert m.maxpool(m.relu(m.bn1(m.conv1(x)))).shape == (1, 64, 9, 13)


def test_avg_down_shortcut() -> None:
    """ResNet-D's shortcut: AvgPool(2, stride) (ceil_mode, no padding counted), 1 x 1 conv with
    stride 1, BN; the pool is an Identity where the block keeps the resolution."""
    m = create_model("resnet50", avg_down=True)
    first = m.layer1[0].downsample
    assert isinstance(first[0], nn.Identity) and first[1].stride == (1, 1)
    for stage in (m.layer2, m.layer3, m.layer4):
        pool, conv, bn = stage[0].downsample
        assert isinstance(pool, nn.AvgPool2d) and isinstance(bn, nn.BatchNorm2d)
        assert (pool.kernel_size, pool.stride) == (2, 2)
        assert pool.ceil_mode and not pool.count_include_pad
        assert conv.stride == (1, 1) and conv.kernel_size == (1, 1)
        assert stage[0].conv2.stride == (2, 2)
    # Same parameters as the strided projection; any input size (odd maps: ceil_mode).
    assert _count(m) == _count(create_model("resnet50"))
    m = create_model("resnet18", avg_down=True, num_classes=3).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 45, 37))
    assert out.shape == (1, 3)
    x = torch.randn(1, 64, 7, 9)
    block = m.layer2[0]
    shortcut = block.downsample(x)
    assert shortcut.shape == block.bn2(block.conv2(block.conv1(x))).shape == (1, 128, 4, 5)
    # the shortcut's value: a 2 x 2 mean of the in-bounds pixels, then the projection
    pooled = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), 2) * 4
    counts = (
        torch.nn.functional.avg_pool2d(torch.nn.functional.pad(torch.ones_like(x), (0, 1, 0, 1)), 2)
        * 4
    )
    with torch.no_grad():
        expected = block.downsample[2](block.downsample[1](pooled / counts))
        torch.testing.assert_close(shortcut, expected)


class _Double(nn.Module):
    """A stand-in 'attention': 2 x, with a convolution whose initial weights must survive."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, channels, 1)
        nn.init.constant_(self.conv.weight, 0.25)

    def forward(self, x):
        return 2 * x


def test_attention_between_stages() -> None:
    """attention_at='stage': one module after each stage but the last (BAM's places), named
    <name><stage>; the forward is layer1 -> att1 -> layer2 -> att2 -> ... -> layer4."""
    m = create_model("resnet50", attention="se", attention_at="stage")
    assert list(m.named_attention_modules()) == ["se1", "se2", "se3"]
    assert [m.get_submodule(f"se{s}").channels for s in (1, 2, 3)] == [256, 512, 1024]
    assert all(b.se is None for layer in (m.layer1, m.layer4) for b in layer)
    m = create_model("resnet20_cifar", attention="cbam", attention_at="stage")
    assert list(m.named_attention_modules()) == ["cbam1", "cbam2"]  # 3 stages
    m = create_model("resnet18", attention="se", attention_at="stage", attention_stages=(4,))
    assert list(m.named_attention_modules()) == ["se4"]
    m = create_model("resnet18", attention=_Double, attention_at="stage", num_classes=3).eval()
    assert list(m.named_attention_modules()) == ["attention1", "attention2", "attention3"]
    assert m.attention2.conv.weight.detach().unique().tolist() == [0.25]  # not re-initialised
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        for stage in (m.layer1, m.layer2, m.layer3):
            h = 2 * stage(h)
        expected = m.fc(torch.flatten(m.avgpool(m.layer4(h)), 1))
        torch.testing.assert_close(m(x), expected)


def test_attention_every_kth_block() -> None:
    m = create_model("resnet34", attention=_Double, attention_every=2)
    # blocks 1, 3, 5 (0-based) of stages with 3, 4, 6, 3 blocks
    assert list(m.named_attention_modules()) == [
        "layer1.1.se",
        "layer2.1.se",
        "layer2.3.se",
        "layer3.1.se",
        "layer3.3.se",
        "layer3.5.se",
        "layer4.1.se",
    ]
    assert m.layer3[5].se.conv.weight.detach().unique().tolist() == [
        0.25
    ]  # attention keeps its init
    m = create_model("resnet34", attention="se", attention_every=3, attention_stages=(3,))
    assert list(m.named_attention_modules()) == ["layer3.2.se", "layer3.5.se"]


def test_resnet_d_and_stage_errors() -> None:
    cases = [
        ({"stem": "deeper"}, ValueError, "stem: expected one of"),
        ({"stem_width": 64}, ValueError, "stem_width: only used by stem='deep'"),
        ({"stem": "tiered", "stem_width": 3}, ValueError, "stem_width: expected an int >= 4"),
        ({"stem": "deep", "stem_width": 1.5}, TypeError, "stem_width: expected an int"),
        ({"avg_down": 1}, TypeError, "avg_down: expected a bool"),
        ({"attention_at": "layer"}, ValueError, "attention_at: expected one of"),
        ({"attention_every": 0}, ValueError, "attention_every: expected an int >= 1"),
        (
            {"attention": "se", "attention_at": "stage", "placement": "pre"},
            ValueError,
            "placement: attention_at='stage'",
        ),
        (
            {"attention": "se", "attention_at": "stage", "attention_every": 2},
            ValueError,
            "attention_every: attention_at='stage'",
        ),
    ]
    for kw, error, message in cases:
        with pytest.raises(error, match=message):
            create_model("resnet18", **kw)
    with pytest.raises(ValueError, match="avg_down: pools before the 1 x 1 projection"):
        create_model("resnet20_cifar", avg_down=True)  # option-A shortcuts
