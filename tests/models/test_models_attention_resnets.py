"""Every registered attention mechanism in the ResNets, and the papers' attention ResNets.

- every name of ``visattn.list_attention()`` builds into the CIFAR
  ResNet-20 (in every block and between stages) and the ImageNet ResNet-18 / -50, runs forward
  and backward, and every module is called once per forward;
- the named networks of ``PAPER_RESNETS`` (``bam_resnet50``, ``eca_resnet50``, ...) put their
  mechanism where the paper does (paths and channels written out here);
- parameter counts as published (:data:`PUBLISHED`) and the exact cost of ECA, SimAM and
  triplet attention.

A mechanism that is not registered yet skips with the reason. Implementation:
``src/visattn/models/resnet.py``, ``src/visattn/models/registry.py``.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

import visattn
from visattn.models import create_model
from visattn.models.registry import PAPER_RESNETS

# Every registered name, "sk" too (an extra Selective Kernel convolution in each slot; the SK
# paper's networks, where it replaces the 3 x 3 convolution, are test_models_sknet.py's).
NAMES = visattn.list_attention()

RESNET50_LAYERS = (3, 4, 6, 3)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _params(name: str) -> int:
    """Parameters of ``create_model(name)``, built on the meta device (no initialisation)."""
    return _count(create_model(name, device="meta"))


def _skip_unless_registered(attention: str | None) -> None:
    if attention is not None and attention not in visattn.list_attention():
        pytest.skip(f"attention {attention!r} is not registered (visattn.list_attention())")


def _run(model: nn.Module, x: torch.Tensor, expected: int, backward: bool = True) -> None:
    """Forward (every attention module called exactly once) and, optionally, backward."""
    modules = model.named_attention_modules()
    assert len(modules) == expected, list(modules)
    calls = dict.fromkeys(modules, 0)
    for name, m in modules.items():
        m.register_forward_pre_hook(
            lambda mod, args, name=name: calls.__setitem__(name, calls[name] + 1)
        )
    with torch.set_grad_enabled(backward):
        out = model(x)
    assert out.shape == (x.shape[0], model.num_classes)
    assert torch.isfinite(out).all()
    assert set(calls.values()) == {1}, calls
    if not backward:
        return
    out.square().mean().backward()
    assert model.fc.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("attention_at", ["block", "stage"])
@pytest.mark.parametrize("name", NAMES)
def test_cifar_resnet20_every_mechanism(name: str, attention_at: str) -> None:
    model = create_model("resnet20_cifar", attention=name, attention_at=attention_at)
    # 9 blocks; between stages: after stages 1 and 2 (not after the last)
    _run(model, torch.randn(2, 3, 32, 32), 9 if attention_at == "block" else 2)


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("name", NAMES)
def test_imagenet_resnets_every_mechanism(name: str, depth: int) -> None:
    model = create_model(f"resnet{depth}", attention=name, num_classes=5)
    # forward only (train-mode BatchNorm): the backward is covered by the CIFAR test
    _run(model, torch.randn(2, 3, 32, 32), 8 if depth == 18 else 16, backward=False)


def _every_block(stages=(1, 2, 3, 4)) -> list[str]:
    return [f"layer{s}.{j}.se" for s in stages for j in range(RESNET50_LAYERS[s - 1])]


# Where each paper puts its mechanism in ResNet-50 (paths of the attention modules).
PAPER_PLACES: dict[str, list[str]] = {
    "bam_resnet50": ["bam1", "bam2", "bam3"],  # BAM §3.2: at the bottlenecks, before pooling
    "eca_resnet50": _every_block(),
    "gc_resnet50": _every_block((2, 3, 4)),  # GCNet: all blocks of c3, c4, c5
    "ge_resnet50": _every_block(),
    # non-local 5-block: 2 in res3, 3 in res4, every other block, after the block
    "nonlocal_resnet50": [
        "layer2.1.se",
        "layer2.3.se",
        "layer3.1.se",
        "layer3.3.se",
        "layer3.5.se",
    ],
    "simam_resnet50": _every_block(),
    "triplet_resnet50": _every_block(),
}


def test_paper_places_cover_every_paper_resnet() -> None:
    assert set(PAPER_PLACES) == set(PAPER_RESNETS)


@pytest.mark.parametrize("name", sorted(PAPER_PLACES))
def test_paper_resnets_place_their_mechanism(name: str) -> None:
    attention = PAPER_RESNETS[name][0]
    _skip_unless_registered(attention)
    model = create_model(name, num_classes=4)
    assert model.attention == attention
    modules = model.named_attention_modules()
    assert list(modules) == PAPER_PLACES[name]
    # Each module sees its stage's output: 256, 512, 1024 or 2048 channels.
    seen = {}
    for path, m in modules.items():
        m.register_forward_pre_hook(
            lambda mod, args, path=path: seen.__setitem__(path, args[0].shape[1])
        )
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 32, 32))
    assert set(seen) == set(modules)
    for path, channels in seen.items():
        stage = int(re.search(r"\d", path).group())  # bam<stage>, layer<stage>.<block>.se
        assert channels == 256 * 2 ** (stage - 1), (path, channels)
    if name == "nonlocal_resnet50":
        assert {model.get_submodule(p[: -len(".se")]).placement for p in modules} == {"post"}


def psi(channels: int, gamma: float = 2, b: float = 1) -> int:
    """ECA's eq. 12, written here from the paper: t = int(|log2(C) / gamma + b / gamma|), odd."""
    t = int(abs(math.log2(channels) / gamma + b / gamma))
    return t if t % 2 else t + 1


# Parameters as published, in millions at the papers' 2 decimals: name -> (attention, millions).
PUBLISHED: dict[str, tuple[str | None, float]] = {
    "resnet50": (None, 25.56),  # He et al.; torchvision
    "seresnet50": ("se", 28.09),  # SE paper, Table 2
    "cbam_resnet50": ("cbam", 28.09),  # CBAM paper, Table 4
    "bam_resnet50": ("bam", 25.92),  # BAM paper, Table 3
    "triplet_resnet50": ("triplet", 25.56),  # triplet attention paper, Table 2
    "eca_resnet50": ("eca", 25.56),  # ECA paper: + 80 parameters (see test_eca_cost)
    "simam_resnet50": ("simam", 25.56),  # SimAM: parameter-free
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_parameter_counts(name: str) -> None:
    attention, millions = PUBLISHED[name]
    _skip_unless_registered(attention)
    n = _params(name)
    assert round(n / 1e6, 2) == millions, n


RESNET50_PARAMS = 25_557_032  # torchvision's resnet50 (checked in test_models_interop.py)


def test_resnet50_reference_count() -> None:
    assert _params("resnet50") == RESNET50_PARAMS


def test_eca_cost() -> None:
    """ECA adds k = psi(C) weights per block (eq. 12): C = 256, 512, 1024, 2048 give k = 5, 5,
    5, 7, so 3 * 5 + 4 * 5 + 6 * 5 + 3 * 7 = 86 weights to ResNet-50 (the paper's abstract says
    80, which k = 3 in the first stage would give)."""
    _skip_unless_registered("eca")
    extra = sum(n * psi(256 * 2**i) for i, n in enumerate(RESNET50_LAYERS))
    assert extra == 86
    assert _params("eca_resnet50") - RESNET50_PARAMS == extra
    assert _params("ecaresnet50d") - _params("resnet50d") == extra


def test_simam_and_triplet_cost() -> None:
    if "simam" in visattn.list_attention():
        assert _params("simam_resnet50") == RESNET50_PARAMS  # parameter-free
    if "triplet" in visattn.list_attention():
        # 16 blocks x 3 branches x (7 x 7 x 2 convolution weights + the BatchNorm's 2): 4.8K
        extra = _params("triplet_resnet50") - RESNET50_PARAMS
        assert extra == 16 * 3 * (7 * 7 * 2 + 2)
    if not {"simam", "triplet"} & set(visattn.list_attention()):
        pytest.skip("attention 'simam' and 'triplet' are not registered")
