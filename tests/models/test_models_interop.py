"""Checkpoint compatibility with torchvision and timm (no downloads: random weights).

``create_model("resnet50").load_state_dict(torchvision.models.resnet50().state_dict())`` and
``create_model("seresnet50").load_state_dict(timm.create_model("seresnet50").state_dict())``
with ``strict=True``, and the same logits in eval mode. Implementation:
``src/visattn/models/resnet.py``.
"""

from __future__ import annotations

import pytest
import torch
from test_models_add_attention import _pretrained_like
from torch import nn

from visattn.models import create_model

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")


def _check_same_logits(theirs: nn.Module, ours: nn.Module, size: int = 64) -> None:
    _pretrained_like(theirs)  # trained-looking BatchNorms: eval-mode outputs are not trivial
    missing = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    theirs.eval()
    ours.eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = theirs(x)
        got = ours(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert set(ours.state_dict()) == set(theirs.state_dict())


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_resnet(name: str) -> None:
    theirs = getattr(torchvision.models, name)(weights=None)
    _check_same_logits(theirs, create_model(name))


@pytest.mark.parametrize("name", ["resnet34", "seresnet18"])  # more: test_models_timm.py
def test_timm_resnet(name: str) -> None:
    theirs = timm.create_model(name, pretrained=False)
    _check_same_logits(theirs, create_model(name))


def test_other_direction_and_num_classes() -> None:
    """Our weights load into timm / torchvision too, also with another head size."""
    ours = create_model("seresnet18", num_classes=5)
    theirs = timm.create_model("seresnet18", pretrained=False, num_classes=5)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    tv = torchvision.models.resnet18(weights=None, num_classes=5)
    tv.load_state_dict(create_model("resnet18", num_classes=5).state_dict(), strict=True)
