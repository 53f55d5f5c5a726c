"""The networks of the Spatial Transformer paper's distorted-MNIST experiments.

Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015, arXiv:1506.02025, §4.1 and
Appendix A. Our reading of the architecture (widths are keyword options):

- ``fcn``: Flatten -> FC(hidden) -> ReLU -> FC(hidden) -> ReLU -> FC(num_classes); three weight
  layers, ``hidden=128``.
- ``cnn``: conv 9 x 9 (32) -> ReLU -> max-pool 2 -> conv 7 x 7 (64) -> ReLU -> max-pool 2 ->
  FC(num_classes): two max-pooling layers and three weight layers. Convolutions are padded
  ("same"), so every input size works: 28 x 28 -> 7 x 7 x 64 features, 42 -> 10 x 10,
  60 -> 15 x 15.
- ``stfcn`` / ``stcnn``: one or more spatial transformers on the input, then ``fcn`` / ``cnn``.
  The localisation net of ``stfcn`` is fully connected (FC 32 -> ReLU -> FC 32 -> ReLU ->
  regression), the one of ``stcnn`` convolutional (conv 5 x 5 (20) -> ReLU -> max-pool 2 ->
  conv 5 x 5 (20) -> ReLU -> max-pool 2 -> FC 50 -> ReLU -> regression). The regression layer
  starts at the identity transform (zero weights, identity bias; see ``SpatialTransformer``).
  ``transform=`` is any family of ``visattn.functional.TRANSFORMS`` (``"affine"``,
  ``"projective"``, ``"tps"``, ...).
- Several transformers (``num_transformers=K``), as in the paper's multi-ST set-ups:
  ``arrangement="parallel"``: K transformers look at the same input and their outputs are
  concatenated along the channels (K * C channels into the classifier; the MNIST-addition and
  2x / 4x-ST CUB arrangement); ``"series"``: each transformer warps the output of the previous one
  (each with its own localisation net).

``in_chans`` and ``input_size`` are free (1-channel 28/42/60 as in the paper, or e.g. 3-channel
32 x 32); ``st_output_size`` sets the transformer's output size (the paper's cluttered-MNIST
model samples a 60 x 60 input down to 30 x 30). ``attention=`` (registry name) adds a channel
attention module after each convolution of ``cnn`` / ``stcnn`` (before its pooling).

The transformers are ``model.transformers`` (an ``nn.ModuleList``); the latest parameters
and grids are in each one's ``last_theta`` / ``last_grid``.

Tests: ``tests/models/test_models_stn.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._checks import check_choice, check_int, check_pair, check_tensor
from ..functional.grids import TRANSFORMS, num_params
from ..layers.spatial_transformer import SpatialTransformer
from .resnet import AttentionSpec, build_attention

__all__ = ["ARRANGEMENTS", "STNClassifier", "cnn", "fcn", "stcnn", "stfcn"]

ARRANGEMENTS = ("parallel", "series")


def _fc_localisation(in_features: int, num_outputs: int, hidden: int = 32) -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_outputs),
    )


def _conv_localisation(
    in_chans: int, size: tuple[int, int], num_outputs: int, channels: int = 20, hidden: int = 50
) -> nn.Sequential:
    h, w = size[0] // 2 // 2, size[1] // 2 // 2
    if h < 1 or w < 1:
        raise ValueError(
            f"input_size: expected at least 4 x 4 for a convolutional localisation net, got {size}"
        )
    return nn.Sequential(
        nn.Conv2d(in_chans, channels, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(channels, channels, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(channels * h * w, hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, num_outputs),
    )


class STNClassifier(nn.Module):
    """Optional spatial transformers, then a classifier (``features`` + ``classifier``).

    Args:
        kind: ``"fcn"`` or ``"cnn"`` (the classifier after the transformers).
        num_classes, in_chans, input_size: classes, channels and (H, W) of the input.
        transform: family of the transformers, ``None`` for the plain ``fcn`` / ``cnn``.
        num_transformers, arrangement: K transformers in ``"parallel"`` or ``"series"``.
        st_output_size: (H, W) of the transformers' output (default ``input_size``).
        localisation: ``"fc"`` or ``"conv"`` (default: ``"fc"`` for fcn, ``"conv"`` for cnn).
        hidden: width of the FCN's hidden layers.
        channels, kernel_sizes: filters and kernel sizes of the CNN's two convolutions.
        attention, attention_kw: attention module after each CNN convolution (before pooling).
        tps_grid_size, align_corners, padding_mode: passed to ``SpatialTransformer``.

    Shape: (N, in_chans, *input_size) -> (N, num_classes).
    """

    def __init__(
        self,
        kind: str,
        *,
        num_classes: int = 10,
        in_chans: int = 1,
        input_size: int | tuple[int, int] = 28,
        transform: str | None = None,
        num_transformers: int = 1,
        arrangement: str = "parallel",
        st_output_size: int | tuple[int, int] | None = None,
        localisation: str | None = None,
        hidden: int = 128,
        channels: Sequence[int] = (32, 64),
        kernel_sizes: Sequence[int] = (9, 7),
        attention: AttentionSpec = None,
        attention_kw: dict[str, Any] | None = None,
        tps_grid_size: int | tuple[int, int] = (4, 4),
        align_corners: bool = False,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        self.kind = check_choice(kind, "kind", ("fcn", "cnn"))
        check_int(num_classes, "num_classes", minimum=1)
        self.in_chans = check_int(in_chans, "in_chans", minimum=1)
        self.input_size = check_pair(input_size, "input_size")
        self.arrangement = check_choice(arrangement, "arrangement", ARRANGEMENTS)
        check_int(num_transformers, "num_transformers", minimum=1)
        check_int(hidden, "hidden", minimum=1)
        if transform is not None:
            check_choice(transform, "transform", TRANSFORMS)
        elif num_transformers != 1 or st_output_size is not None or localisation is not None:
            raise ValueError(
                "transform: expected a transform family when num_transformers, st_output_size "
                f"or localisation is given, got None (plain {kind})"
            )
        if kind == "fcn" and attention is not None:
            raise ValueError(
                f"attention: expected None for the fully connected {kind!r} (it has no "
                f"convolution stages), got {attention!r}"
            )
        localisation = localisation or ("fc" if kind == "fcn" else "conv")
        check_choice(localisation, "localisation", ("fc", "conv"))
        self.transform = transform

        self.transformers = nn.ModuleList()
        size = self.input_size
        if transform is not None:
            out_size = check_pair(
                st_output_size if st_output_size is not None else self.input_size,
                "st_output_size",
            )
            for k in range(num_transformers):
                in_size = size if (arrangement == "parallel" or k == 0) else out_size
                st_kw = {"tps_grid_size": tps_grid_size}
                p = num_params(transform, tps_grid_size=tps_grid_size)
                if localisation == "fc":
                    loc = _fc_localisation(in_chans * in_size[0] * in_size[1], p)
                else:
                    loc = _conv_localisation(in_chans, in_size, p)
                self.transformers.append(
                    SpatialTransformer(
                        transform,
                        in_channels=in_chans,
                        input_size=in_size,
                        localisation=loc,
                        output_size=out_size,
                        align_corners=align_corners,
                        padding_mode=padding_mode,
                        **st_kw,
                    )
                )
            size = out_size
        feat_chans = in_chans * (num_transformers if arrangement == "parallel" else 1)
        if transform is None:
            feat_chans = in_chans

        if kind == "fcn":
            self.features = nn.Identity()
            self.classifier = nn.Sequential(
                nn.Flatten(),
                nn.Linear(feat_chans * size[0] * size[1], hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, num_classes),
            )
        else:
            channels, kernel_sizes = tuple(channels), tuple(kernel_sizes)
            if len(channels) != 2 or len(kernel_sizes) != 2:
                raise ValueError(
                    f"channels, kernel_sizes: expected two values each, got {channels}, "
                    f"{kernel_sizes}"
                )
            for k in kernel_sizes:
                check_int(k, "kernel_sizes", minimum=1)
                if k % 2 == 0:
                    raise ValueError(f"kernel_sizes: expected odd sizes, got {kernel_sizes}")
            h, w = size[0] // 2 // 2, size[1] // 2 // 2
            if h < 1 or w < 1:
                raise ValueError(f"input_size: expected at least 4 x 4 for the cnn, got {size}")
            layers: list[nn.Module] = []
            cin = feat_chans
            for c, k in zip(channels, kernel_sizes, strict=True):
                check_int(c, "channels", minimum=1)
                layers += [nn.Conv2d(cin, c, k, padding=k // 2), nn.ReLU(inplace=True)]
                se = build_attention(attention, c, attention_kw)
                if se is not None:
                    layers.append(se)
                layers.append(nn.MaxPool2d(2))
                cin = c
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cin * h * w, num_classes))

    def transform_input(self, x: torch.Tensor) -> torch.Tensor:
        """The transformers' output (the classifier's input), or ``x`` without transformers."""
        if not len(self.transformers):
            return x
        if self.arrangement == "parallel":
            return torch.cat([st(x) for st in self.transformers], dim=1)
        for st in self.transformers:
            x = st(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", ndim=4, layout="(N, C, H, W)")
        if x.shape[1] != self.in_chans or tuple(x.shape[2:]) != self.input_size:
            raise ValueError(
                f"x: expected shape (N, {self.in_chans}, {self.input_size[0]}, "
                f"{self.input_size[1]}), got {tuple(x.shape)}"
            )
        return self.classifier(self.features(self.transform_input(x)))

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind!r}, transform={self.transform!r}, "
            f"arrangement={self.arrangement!r}, input_size={self.input_size}"
        )


def fcn(*, num_classes: int = 10, in_chans: int = 1, input_size=28, **kw: Any) -> STNClassifier:
    """The paper's fully connected baseline (no transformer)."""
    return STNClassifier(
        "fcn", num_classes=num_classes, in_chans=in_chans, input_size=input_size, **kw
    )


def cnn(*, num_classes: int = 10, in_chans: int = 1, input_size=28, **kw: Any) -> STNClassifier:
    """The paper's convolutional baseline (no transformer)."""
    return STNClassifier(
        "cnn", num_classes=num_classes, in_chans=in_chans, input_size=input_size, **kw
    )


def stfcn(
    *, num_classes: int = 10, in_chans: int = 1, input_size=28, transform: str = "affine", **kw: Any
) -> STNClassifier:
    """ST-FCN: spatial transformer(s) with a fully connected localisation net, then ``fcn``."""
    return STNClassifier(
        "fcn", num_classes=num_classes, in_chans=in_chans, input_size=input_size,
        transform=transform, **kw,
    )  # fmt: skip


def stcnn(
    *, num_classes: int = 10, in_chans: int = 1, input_size=28, transform: str = "affine", **kw: Any
) -> STNClassifier:
    """ST-CNN: spatial transformer(s) with a convolutional localisation net, then ``cnn``."""
    return STNClassifier(
        "cnn", num_classes=num_classes, in_chans=in_chans, input_size=input_size,
        transform=transform, **kw,
    )  # fmt: skip
