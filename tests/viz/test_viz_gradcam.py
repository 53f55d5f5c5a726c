"""Tests of visattn.viz.grad_cam against Grad-CAM's eq. 1-2 computed by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from visattn.viz import find_target_layer, grad_cam


class GapNet(nn.Module):
    """logits = W mean_ij(A) + b with A = relu(conv(x)): dy_c/dA_k = W_ck / (h w)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 5, 3, padding=1, stride=2)
        self.act = nn.ReLU()
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("n", [1, 3])
def test_matches_closed_form(n):
    model = GapNet()
    x = torch.randn(n, 1, 11, 9)
    cam, logits = grad_cam(model, x, layer="act")
    a = model.act(model.conv(x)).detach()
    cls = logits.argmax(1)
    w = model.fc.weight.detach()[cls] / (a.shape[2] * a.shape[3])  # alpha, eq. 1
    ref = F.relu((w[:, :, None, None] * a).sum(1, keepdim=True))  # eq. 2
    ref = F.interpolate(ref, size=(11, 9), mode="bilinear", align_corners=False)[:, 0]
    ref = ref / ref.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    torch.testing.assert_close(cam, ref)
    assert cam.shape == (n, 11, 9) and cam.min() >= 0 and cam.max() <= 1


def test_default_layer_and_targets(tiny_net):
    for attn in (None, "se", "cbam", "stn"):
        model = tiny_net(attn).eval()
        x = torch.randn(2, 1, 12, 12)
        assert find_target_layer(model, x) == "attn2"
        cam, _ = grad_cam(model, x, target=torch.tensor([0, 2]))
        assert cam.shape == (2, 12, 12)
        cam1, _ = grad_cam(model, x, target=1)
        assert torch.isfinite(cam1).all()
        assert all(p.grad is None for p in model.parameters())


def test_errors(tiny_net):
    model = tiny_net("se")
    x = torch.randn(1, 1, 12, 12)
    with pytest.raises(ValueError, match="target"):
        grad_cam(model, x, target=7)
    with pytest.raises(ValueError, match="layer"):
        grad_cam(model, x, layer="nope")
    with pytest.raises(ValueError, match="model: expected at least one"):
        find_target_layer(nn.Sequential(nn.Flatten(), nn.Linear(144, 2)), x)
