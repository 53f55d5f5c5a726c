"""add_attention on torchvision / timm / visattn ResNets and VGG-style Sequentials.

Checks: output preserved at insertion (max abs diff <= 1e-5), every new parameter gets a
non-zero gradient, the gradients of the old parameters are unchanged, clear errors.
Implementation: ``src/visattn/models/integrate.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import visattn
from visattn.models import PreservedAttention, add_attention, create_model

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")


def _pretrained_like(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, like a trained network (fresh timm ResNets start with
    zero last-BN weights, where a residual branch outputs zeros and nothing can flow)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _vgg_sequential() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 48, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(48, 64, 3, padding=1),
        nn.ReLU(),
    )


FAMILIES: dict[str, tuple[Callable[[], nn.Module], int, int]] = {
    # name: (constructor, input size, expected number of insertions)
    "torchvision_resnet18": (lambda: torchvision.models.resnet18(num_classes=10), 32, 8),
    "timm_resnet18": (lambda: timm.create_model("resnet18", num_classes=10), 32, 8),
    "visattn_resnet18": (lambda: create_model("resnet18", num_classes=10), 32, 8),
    "torchvision_resnet50": (lambda: torchvision.models.resnet50(num_classes=10), 32, 16),
    "vgg_sequential": (_vgg_sequential, 19, 3),
    "torchvision_vgg11_features": (lambda: torchvision.models.vgg11().features, 32, 5),
}


CASES = [(f, k, False) for f in FAMILIES for k in ("se", "cbam")] + [
    # Train mode (BatchNorm on batch statistics) on the four families, both kinds covered.
    ("torchvision_resnet18", "cbam", True),
    ("timm_resnet18", "se", True),
    ("visattn_resnet18", "cbam", True),
    ("vgg_sequential", "se", True),
]


@pytest.mark.parametrize(("family", "kind", "train"), CASES)
def test_output_preserved_and_gradients(family: str, kind: str, train: bool) -> None:
    make, size, expected = FAMILIES[family]
    torch.manual_seed(torch.initial_seed() % 2**31)
    model = _pretrained_like(make()).train(train)
    reference = _pretrained_like(make()).train(train)
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, size, size)
    before = reference(x)
    before.square().mean().backward()
    old_grads = {n: p.grad.clone() for n, p in reference.named_parameters()}
    old_names = set(model.state_dict())

    # >= 16 hidden units per MLP: a ReLU unit that is off for the whole batch gets no gradient
    # (in any SE network); with 16 units "all off" is improbable enough for a test.
    out = add_attention(model, kind, reduction=2)
    assert out is model
    report = model.visattn_report
    assert len(report) == expected
    assert report.preserve_output and report.kind == kind
    # Existing parameters keep their names (old checkpoints still load, strict=False).
    assert old_names <= set(model.state_dict())
    result = model.load_state_dict(reference.state_dict(), strict=False)
    assert not result.unexpected_keys

    after = model(x)
    assert (after - before).abs().max() <= 1e-5
    after.square().mean().backward()
    new = {n: p for n, p in model.named_parameters() if n not in old_grads}
    assert new, "no new parameters"
    assert sum(p.numel() for p in new.values()) == report.num_params
    for name, p in new.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # Old weights get the same gradients (exactly in exact arithmetic; rounding of the gradient
    # sum dy + J^T dy - J0^T dy is amplified by train-mode BatchNorm over 2 x 1 x 1 maps, so the
    # comparison is made in eval mode).
    for name, g in old_grads.items() if not train else ():
        torch.testing.assert_close(
            dict(model.named_parameters())[name].grad, g, atol=1e-4, rtol=1e-3
        )
    for ins in report.insertions:
        assert isinstance(model.get_submodule(ins.path), PreservedAttention)


def test_inserted_attention_learns() -> None:
    """After a few optimiser steps on the new parameters only, the output moves."""
    model = _pretrained_like(create_model("resnet20_cifar")).eval()
    add_attention(model, "se", reduction=4)
    new = [p for n, p in model.named_parameters() if ".se." in n]
    for n, p in model.named_parameters():
        p.requires_grad_(".se." in n)
    x = torch.randn(4, 3, 16, 16)
    y0 = model(x).detach()
    opt = torch.optim.SGD(new, lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        model(x)[:, 0].sum().backward()
        opt.step()
    assert (model(x) - y0).abs().max() > 1e-4


def test_preserve_output_false_and_placements() -> None:
    model = create_model("resnet18")
    add_attention(model, "se", preserve_output=False, placement="pre", stages=(2, 3))
    assert model.layer1[0].se is None and model.layer4[0].se is None
    assert isinstance(model.layer2[0].se, visattn.SqueezeExcite)
    assert model.layer2[0].se.channels == 64  # "pre" sees the block input
    assert model.layer2[0].placement == "pre"
    assert [i.path for i in model.visattn_report.insertions] == [
        "layer2.0.se",
        "layer2.1.se",
        "layer3.0.se",
        "layer3.1.se",
    ]
    tv = torchvision.models.resnet18()
    add_attention(tv, "cbam", placement="post")
    assert isinstance(tv.layer1[0], visattn.models.BasicBlock)
    assert tv.layer1[0].placement == "post"
    tv(torch.randn(2, 3, 32, 32))


def test_custom_factory_and_channels_last() -> None:
    model = _pretrained_like(torchvision.models.resnet18()).eval()
    x = torch.randn(1, 3, 40, 40).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y0 = model(x)
    add_attention(model, lambda c: visattn.SqueezeExcite(c, reduction=8))
    with torch.no_grad():
        assert (model(x) - y0).abs().max() <= 1e-5
    assert model.visattn_report.kind == "<lambda>"


def test_whole_vgg_model() -> None:
    vgg = torchvision.models.vgg11(num_classes=10)
    add_attention(vgg, "se")
    assert [i.path for i in vgg.visattn_report.insertions][:2] == ["features.2.se", "features.5.se"]
    assert vgg(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_unsupported_models() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(ValueError, match=r"does not understand .*Odd"):
        add_attention(Odd(), "se")
    with pytest.raises(ValueError, match="found no Conv2d"):
        add_attention(nn.Linear(3, 4), "se")
    with pytest.raises(TypeError, match=r"model: expected an nn\.Module"):
        add_attention("resnet18", "se")  # type: ignore[arg-type]

    class Wrapper(nn.Module):  # an unknown block inside a Sequential
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Odd())

    with pytest.raises(ValueError, match=r"does not understand the module body\.2 of type .*Odd"):
        add_attention(Wrapper(), "se")
    # Convolutions in blocks it does not know (inverted residuals), even inside Sequentials.
    mobilenet = torchvision.models.mobilenet_v2()
    names = set(mobilenet.state_dict())
    with pytest.raises(ValueError, match=r"features\.1 of type .*InvertedResidual"):
        add_attention(mobilenet, "se")
    assert set(mobilenet.state_dict()) == names


def test_errors_leave_model_untouched() -> None:
    model = create_model("resnet18", attention="se", attention_stages=(4,))
    names = set(model.state_dict())
    with pytest.raises(ValueError, match=r"block 'layer4.0' .* already has an attention"):
        add_attention(model, "cbam")
    assert set(model.state_dict()) == names and model.layer1[0].se is None
    with pytest.raises(ValueError, match="name: expected one of"):
        add_attention(model, "nonexistent", stages=(1,))
    with pytest.raises(ValueError, match="placement"):
        add_attention(timm.create_model("resnet18"), "se", placement="pre")
    with pytest.raises(ValueError, match="stages"):
        add_attention(create_model("resnet18"), "se", stages=(7,))
    with pytest.raises(ValueError, match="placement"):
        add_attention(_vgg_sequential(), "se", placement="identity")
    add_attention(model, "cbam", stages=(1, 2, 3))  # the free stages are fine
    assert isinstance(model.layer1[0].se, PreservedAttention)
    # Sequentials: a second call, or a cnn built with attention, has occupied stages.
    seq = add_attention(_vgg_sequential(), "se", stages=(1,))
    names = set(seq.state_dict())
    with pytest.raises(ValueError, match=r"stage 1 of the model .* already has an attention"):
        add_attention(seq, "cbam")
    assert set(seq.state_dict()) == names
    add_attention(seq, "cbam", stages=(2, 3))
    assert [i.stage for i in seq.visattn_report.insertions] == [2, 3]
    cnn = create_model("cnn", attention="se", attention_kw={"reduction": 4})
    with pytest.raises(ValueError, match=r"stage 2 of features .* already has an attention"):
        add_attention(cnn, "cbam", stages=(2,))


class _ChannelGate(nn.Module):
    """A mechanism visattn does not know, registered by a user: x * sigma(w * GAP(x))."""

    map_kind = "channel"  # the attention layers' protocol (viz capture, the model scan)

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(channels, 1, 1))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.w * x.mean((2, 3), keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


def test_a_registered_mechanism_occupies_its_stages_like_the_known_ones(monkeypatch) -> None:
    """A layer that declares a map_kind counts as attention: a second add_attention on the same
    stage is refused. A stage that ends in a BatchNorm gets the layer appended as it is (no
    wrapper that would mark the stage), so only the protocol tells it is attention."""
    from visattn.layers import registry

    monkeypatch.setitem(registry._REGISTRY, "gate", _ChannelGate)
    seq = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
    add_attention(seq, "gate", preserve_output=False)
    assert isinstance(seq[2], _ChannelGate) and len(seq) == 3
    names = set(seq.state_dict())
    with pytest.raises(ValueError, match=r"stage 1 of the model .* already has an attention"):
        add_attention(seq, "gate", preserve_output=False)
    assert set(seq.state_dict()) == names


def _mechanisms() -> list[str]:
    return [n for n in visattn.list_attention() if n != "sk"]


@pytest.mark.parametrize("family", ["visattn_resnet18", "vgg_sequential"])
@pytest.mark.parametrize("kind", _mechanisms())
def test_every_mechanism_preserves_the_output_and_learns(family: str, kind: str) -> None:
    """Every registered mechanism (at its defaults; Selective Kernel is refused, below):
    the output is unchanged at insertion, the new modules get gradients, and a few optimiser
    steps on them alone move the output (a parameter-free mechanism through its scalar gate)."""
    make, size, expected = FAMILIES[family]
    torch.manual_seed(torch.initial_seed() % 2**31)
    model = _pretrained_like(make()).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        before = model(x)
    old = {n for n, _ in model.named_parameters()}
    add_attention(model, kind)
    assert len(model.visattn_report) == expected
    after = model(x)
    assert (after - before).abs().max() <= 1e-5
    after.square().mean().backward()
    new = [p for n, p in model.named_parameters() if n not in old]
    assert new and any(p.grad is not None and p.grad.abs().sum() > 0 for p in new), kind
    for n, p in model.named_parameters():
        p.requires_grad_(n not in old)
    opt = torch.optim.SGD(new, lr=0.5)
    direction = torch.randn_like(before)  # every output counts (a VGG's channel may be all 0)
    for _ in range(3):
        opt.zero_grad()
        (model(x) * direction).sum().backward()
        opt.step()
    with torch.no_grad():
        assert (model(x) - before).abs().max() > 1e-5, kind


def test_parameter_free_mechanism_gets_a_scalar_gate() -> None:
    """y = x + alpha (A(x) - x), alpha = 0: preserved, and alpha's gradient is (A(x) - x) . dy."""

    class Square(nn.Module):  # a parameter-free "mechanism"
        def forward(self, x):
            return x * x

    wrapped = PreservedAttention(Square())
    assert wrapped.reference is None and float(wrapped.alpha) == 0.0
    x = torch.randn(2, 3, 4, 5)
    y = wrapped(x)
    assert torch.equal(y, x)
    y.sum().backward()
    torch.testing.assert_close(wrapped.alpha.grad, (x * x - x).sum())


def test_a_convolution_replacement_is_refused() -> None:
    """A layer of map kind "select" (Selective Kernel) replaces a convolution: add_attention
    refuses it with a message naming the argument, before touching the model."""

    class Select(nn.Module):
        map_kind = "select"

        def __init__(self, channels: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    model = create_model("resnet18", num_classes=10)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"kind: .* is a convolution replacement"):
        add_attention(model, Select)
    assert model.state_dict().keys() == state.keys()
