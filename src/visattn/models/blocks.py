"""The residual blocks of :mod:`visattn.models.resnet`, with their attention slot.

- ``BasicBlock`` (two 3 x 3 convolutions) and ``Bottleneck`` (1 x 1, 3 x 3, 1 x 1, stride on
  the 3 x 3, "v1.5") of He et al. (arXiv:1512.03385), with torchvision / timm parameter names;
  the attention module sits in the slot ``se`` at one of the placements of the SE paper's
  §6.5 / Fig. 5 (:data:`PLACEMENTS`; the formulas are in :mod:`visattn.models.resnet`'s
  docstring);
- ``ZeroPadShortcut``: the CIFAR ResNets' parameter-free "option A" shortcut;
- the deep stems of ResNet-C/D (timm's ``stem_type="deep"`` / ``"deep_tiered"``).

Tests: ``tests/models/test_models_resnet.py``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_choice
from ..layers.fusion import batchnorm_attention

__all__ = ["PLACEMENTS", "BasicBlock", "Bottleneck", "ZeroPadShortcut"]

PLACEMENTS = ("standard", "pre", "post", "identity")


def _conv3x3(cin: int, cout: int, stride: int = 1, **f: Any) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False, **f)


def _conv1x1(cin: int, cout: int, stride: int = 1, **f: Any) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False, **f)


class ZeroPadShortcut(nn.Module):
    """Parameter-free shortcut of the CIFAR ResNets ("option A", He et al. §4.2).

    x' = [x[:, :, ::s, ::s]; 0], the new channels filled with zeros.
    Shape: (N, C_in, H, W) -> (N, C_out, ceil(H / s), ceil(W / s)).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"out_channels: expected >= in_channels ({in_channels}), got {out_channels}"
            )
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - self.in_channels))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class _Block(nn.Module):
    """Shared constructor and forward of the residual blocks; see the module docstring for the
    placements.

    A subclass lists its layers in ``_layer_names`` (the last one is the branch's final norm,
    :meth:`_last_norm` otherwise) and builds them in :meth:`_make_layers` (which gets the
    constructor's extra keywords, e.g. the SK blocks' ``sk_kw``), in torchvision's registration
    order; ``downsample``,
    ``stride``, ``placement`` and the attention slot ``se`` are set here, after the layers, so
    parameter names and order are those of torchvision / timm.
    """

    expansion = 1
    _layer_names: tuple[str, ...] = ()
    se: nn.Module | None
    downsample: nn.Module | None
    placement: str

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        se: nn.Module | None = None,
        placement: str = "standard",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **layer_kw: Any,
    ) -> None:
        super().__init__()
        f = {"device": device, "dtype": dtype}
        layers = self._make_layers(inplanes, planes, stride, f, **layer_kw)
        for name, layer in layers.items():  # registration order: torchvision's
            setattr(self, name, layer)
        self._attach(downsample, stride, placement, se)

    def _attach(
        self, downsample: nn.Module | None, stride: int, placement: str, se: nn.Module | None
    ) -> None:
        self.downsample = downsample
        self.stride = stride
        self.placement = check_choice(placement, "placement", PLACEMENTS)
        self.se = se

    @staticmethod
    def _make_layers(inplanes: int, planes: int, stride: int, f: dict[str, Any]) -> dict:
        """The block's layers by name (the names of ``_layer_names``), in registration order."""
        raise NotImplementedError

    def _branch_conv(self, x: torch.Tensor) -> torch.Tensor:
        """F(x) up to its last convolution: F(x) = norm(_branch_conv(x)), norm the
        :meth:`_last_norm`."""
        raise NotImplementedError

    def _last_norm(self) -> nn.Module:
        """The branch's final norm: the last of ``_layer_names`` (``bn2`` / ``bn3``)."""
        return getattr(self, self._layer_names[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        se, placement = self.se, self.placement
        out = se(x) if se is not None and placement == "pre" else x
        out = self._branch_conv(out)
        norm = self._last_norm()
        if se is not None and placement == "standard":
            # se(norm(out)); SE / CBAM keep only the BatchNorm's input (layers/fusion.py)
            out = batchnorm_attention(norm, se, out)
        else:
            out = norm(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        if se is not None and placement == "identity":
            shortcut = se(shortcut)
        out = self.relu(out + shortcut)
        if se is not None and placement == "post":
            out = se(out)
        return out

    @classmethod
    def adopt(cls, block: nn.Module, *, se: nn.Module | None, placement: str = "standard"):
        """A block of this class that owns ``block``'s layers (same names, same computation).

        Used by :func:`visattn.add_attention` to give torchvision's blocks an ``se`` slot without
        changing the names of their parameters.
        """
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for name in cls._layer_names:
            setattr(new, name, getattr(block, name))
        new._attach(getattr(block, "downsample", None), getattr(block, "stride", 1), placement, se)
        new.train(block.training)
        return new

    def extra_repr(self) -> str:
        return f"placement={self.placement!r}" if self.se is not None else ""


class BasicBlock(_Block):
    """Two 3 x 3 convolutions: F(x) = BN(conv(ReLU(BN(conv(x))))), output channels ``planes``."""

    expansion = 1
    _layer_names = ("conv1", "bn1", "relu", "conv2", "bn2")

    @staticmethod
    def _make_layers(inplanes: int, planes: int, stride: int, f: dict[str, Any]) -> dict:
        return {
            "conv1": _conv3x3(inplanes, planes, stride, **f),
            "bn1": nn.BatchNorm2d(planes, **f),
            "relu": nn.ReLU(inplace=True),
            "conv2": _conv3x3(planes, planes, **f),
            "bn2": nn.BatchNorm2d(planes, **f),
        }

    def _branch_conv(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.bn1(self.conv1(x))))


class Bottleneck(_Block):
    """1 x 1 -> 3 x 3 (stride here) -> 1 x 1 convolutions, output channels ``4 * planes``."""

    expansion = 4
    _layer_names = ("conv1", "bn1", "relu", "conv2", "bn2", "conv3", "bn3")

    @staticmethod
    def _make_layers(inplanes: int, planes: int, stride: int, f: dict[str, Any]) -> dict:
        out = planes * Bottleneck.expansion
        return {
            "conv1": _conv1x1(inplanes, planes, **f),
            "bn1": nn.BatchNorm2d(planes, **f),
            "conv2": _conv3x3(planes, planes, stride, **f),
            "bn2": nn.BatchNorm2d(planes, **f),
            "conv3": _conv1x1(planes, out, **f),
            "bn3": nn.BatchNorm2d(out, **f),
            "relu": nn.ReLU(inplace=True),
        }

    def _branch_conv(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.conv3(out)


def _deep_stem(stem: str, in_chans: int, stem_width: int, f: dict[str, Any]) -> nn.Sequential:
    """timm's deep stem (``conv1`` of ``stem_type="deep"`` / ``"deep_tiered"``): three 3 x 3
    convolutions, the first with stride 2, of widths (w, w, 2w) or tiered (3 * (w // 4), w, 2w),
    BN + ReLU between them (the stem's last BN is the model's ``bn1``)."""
    c0 = stem_width if stem == "deep" else 3 * (stem_width // 4)
    return nn.Sequential(
        _conv3x3(in_chans, c0, 2, **f),
        nn.BatchNorm2d(c0, **f),
        nn.ReLU(inplace=True),
        _conv3x3(c0, stem_width, **f),
        nn.BatchNorm2d(stem_width, **f),
        nn.ReLU(inplace=True),
        _conv3x3(stem_width, 2 * stem_width, **f),
    )
