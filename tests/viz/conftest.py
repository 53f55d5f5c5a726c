"""Tiny models with every attention type, shared by the tests in tests/viz/."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visattn.layers import CBAM, SpatialTransformer, SqueezeExcite


class TinyNet(nn.Module):
    """conv - [attention] - conv - [attention] - pool - fc, optionally behind an STN."""

    def __init__(self, attn: str | None = None, *, in_ch: int = 1, size: int = 12, k: int = 3):
        super().__init__()
        self.stn = (
            SpatialTransformer("affine", in_channels=in_ch, input_size=size)
            if attn == "stn"
            else None
        )
        self.conv1 = nn.Conv2d(in_ch, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)

        def make(c: int) -> nn.Module:
            if attn == "se":
                return SqueezeExcite(c, reduction=4)
            if attn == "cbam":
                return CBAM(c, reduction=4, kernel_size=3)
            return nn.Identity()

        self.attn1 = make(8)
        self.attn2 = make(16)
        self.fc = nn.Linear(16, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stn is not None:
            x = self.stn(x)
        x = self.attn1(torch.relu(self.conv1(x)))
        x = nn.functional.max_pool2d(x, 2)
        x = self.attn2(torch.relu(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def tiny_net():
    torch.manual_seed(int(torch.randint(0, 10_000, ()).item()))
    return TinyNet


def write_run(folder, *, model="cnn", attention=None, size=28, distortion="none", classes=None,
              **model_args):  # fmt: skip
    """A ``model.safetensors`` as ``visattn.engine.train`` writes it, for an untrained model.

    Returns (path, model in eval mode).
    """
    from visattn.engine import TrainOptions, build_model, write_safetensors
    from visattn.engine.checkpoint import MODEL_FORMAT

    classes = classes or [f"class{i}" for i in range(10)]
    model_args = {"channels": [4, 8], "kernel_sizes": [3, 3], **model_args}
    opts = TrainOptions(model=model, attention=attention, model_args=model_args,
                        distortion=distortion)  # fmt: skip
    net = build_model(model, num_classes=len(classes), in_chans=1, input_size=size,
                      attention=attention, model_args=model_args)  # fmt: skip
    data = {"classes": classes, "in_chans": 1, "input_size": size, "mean": [0.3], "std": [0.35],
            "dataset": "fashion-mnist-small", "distortion": distortion}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = write_safetensors(folder / "model.safetensors", net.state_dict(), MODEL_FORMAT,
                             {"options": opts.to_dict(), "data": data})  # fmt: skip
    return path, net.eval()


@pytest.fixture
def make_run():
    return write_run
