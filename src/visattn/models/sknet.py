"""Selective Kernel ResNets (Li, Wang, Hu, Yang, CVPR 2019, arXiv:1903.06586) in timm's layouts.

An SK network replaces the 3 x 3 convolution of every residual block (with its BatchNorm and
ReLU) by a Selective Kernel convolution (:class:`visattn.layers.SelectiveKernel`, eq. 1-6):

- :class:`SelectiveKernelBasic` (ResNet-18 / 34): F(x) = BN(conv_3x3(SK(x))), the first 3 x 3
  convolution is the SK unit (it carries the block's stride);
- :class:`SelectiveKernelBottleneck` (ResNet-50): F(x) = BN(conv_1x1(SK(ReLU(BN(conv_1x1(x)))))),
  the middle 3 x 3 is the SK unit (stride there, groups = the cardinality), as in the paper's
  Table 1.

y = ReLU(x' + F(x)) as in a plain ResNet, x' the shortcut (identity or 1 x 1 projection + BN);
the blocks keep the ``se`` slot of :mod:`visattn.models.resnet` (``attention=`` adds SE, CBAM...
before the sum). Parameter names are timm's (``layer1.0.conv1.paths.0.conv.weight``,
``...conv1.attn.fc_reduce.weight``, ``...conv2.conv.weight``, ``...conv2.bn.*``), so
``timm.create_model("skresnet50").state_dict()`` loads with ``strict=True``.

The SK options of each model (``sk_kw``), timm's:

- ``skresnet18``, ``skresnet34``: the input split across the two paths, no groups, d = C/8
  rounded to a multiple of 16 (:data:`SKRESNET_BASIC_OPTIONS`);
- ``skresnet50``: the input split, no groups, d = C/16 rounded to a multiple of 8
  (:data:`SKRESNET50_OPTIONS`);
- ``skresnext50_32x4d``: the paper's SKNet-50 (Table 1: ResNeXt-50 32x4d with SK[M=2, G=32,
  r=16], L = 32): the layer's own defaults, 27.48M parameters (the paper: 27.5M).

Tests: ``tests/models/test_models_sknet.py``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._checks import check_int, check_pair
from ..layers.selective_kernel import ConvBnAct, SelectiveKernel
from .resnet import IMAGENET_ATTENTION_DEFAULTS, AttentionSpec, ResNet, _Block

__all__ = [
    "SKRESNET50_OPTIONS",
    "SKRESNET_BASIC_OPTIONS",
    "SelectiveKernelBasic",
    "SelectiveKernelBottleneck",
    "sk_resnet",
]

#: timm's ``skresnet18`` / ``skresnet34`` SK units: rd_ratio 1/8, rd_divisor 16, split input.
SKRESNET_BASIC_OPTIONS: dict[str, Any] = {
    "groups": 1,
    "split_input": True,
    "reduction": 8,
    "divisor": 16,
    "min_attn_channels": 1,
}
#: timm's ``skresnet50`` SK units: rd_ratio 1/16, rd_divisor 8, split input (groups: the
#: bottleneck's cardinality, 1).
SKRESNET50_OPTIONS: dict[str, Any] = {
    "split_input": True,
    "reduction": 16,
    "divisor": 8,
    "min_attn_channels": 1,
}


class SelectiveKernelBasic(_Block):
    """SK unit (stride here) -> 3 x 3 conv -> BN: F(x) = BN(conv(SK(x))), ``planes`` channels.

    ``sk_kw``: options of the SK unit (:class:`visattn.layers.SelectiveKernel`).
    """

    expansion = 1
    _layer_names = ("conv1", "conv2", "relu")

    @staticmethod
    def _make_layers(
        inplanes: int, planes: int, stride: int, f: dict[str, Any], *, sk_kw=None
    ) -> dict:
        return {
            "conv1": SelectiveKernel(inplanes, planes, stride=stride, **(sk_kw or {}), **f),
            "conv2": ConvBnAct(planes, planes, 3, act=False, **f),
            "relu": nn.ReLU(inplace=True),
        }

    def _branch_conv(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2.conv(self.conv1(x))

    def _last_norm(self) -> nn.Module:
        return self.conv2.bn


class SelectiveKernelBottleneck(_Block):
    """1 x 1 conv-BN-ReLU -> SK unit (stride, groups = ``cardinality``) -> 1 x 1 conv-BN, output
    ``4 * planes`` channels; the SK unit has ``width = planes * base_width / 64 * cardinality``
    channels (ResNeXt's width; ``planes`` for a ResNet).

    ``sk_kw``: options of the SK unit (:class:`visattn.layers.SelectiveKernel`) but ``groups``.
    """

    expansion = 4
    _layer_names = ("conv1", "conv2", "conv3", "relu")

    @staticmethod
    def _make_layers(
        inplanes: int, planes: int, stride: int, f: dict[str, Any], *, sk_kw=None,
        cardinality: int = 1, base_width: int = 64,
    ) -> dict:  # fmt: skip
        check_int(cardinality, "cardinality", minimum=1)
        check_int(base_width, "base_width", minimum=1)
        if sk_kw and "groups" in sk_kw:
            raise ValueError(
                f"sk_kw: the bottleneck's SK groups are its cardinality (pass cardinality=), "
                f"got groups={sk_kw['groups']!r}"
            )
        width = int(planes * base_width / 64) * cardinality
        out = planes * SelectiveKernelBottleneck.expansion
        sk = SelectiveKernel(width, width, stride=stride, groups=cardinality, **(sk_kw or {}), **f)
        return {
            "conv1": ConvBnAct(inplanes, width, 1, **f),
            "conv2": sk,
            "conv3": ConvBnAct(width, out, 1, act=False, **f),
            "relu": nn.ReLU(inplace=True),
        }

    def _branch_conv(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3.conv(self.conv2(self.conv1(x)))

    def _last_norm(self) -> nn.Module:
        return self.conv3.bn


_DEPTHS: dict[int, tuple[type[_Block], tuple[int, ...], dict[str, Any]]] = {
    18: (SelectiveKernelBasic, (2, 2, 2, 2), SKRESNET_BASIC_OPTIONS),
    34: (SelectiveKernelBasic, (3, 4, 6, 3), SKRESNET_BASIC_OPTIONS),
    50: (SelectiveKernelBottleneck, (3, 4, 6, 3), SKRESNET50_OPTIONS),
}


def sk_resnet(
    depth: int,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    attention: AttentionSpec = None,
    attention_kw: dict[str, Any] | None = None,
    input_size: int | tuple[int, int] | None = None,
    sk_kw: dict[str, Any] | None = None,
    cardinality: int = 1,
    base_width: int = 64,
    **kw: Any,
) -> ResNet:
    """SK-ResNet-``depth`` (18, 34 or 50), timm's ``skresnet<depth>`` layout.

    Args:
        sk_kw: options of every SK unit (:class:`visattn.layers.SelectiveKernel`); default
            timm's for the depth (:data:`SKRESNET_BASIC_OPTIONS`, :data:`SKRESNET50_OPTIONS`);
            ``{}`` gives the paper's unit (G = 32 in basic blocks, r = 16, L = 32, no split).
        cardinality, base_width: ResNeXt's groups and width of the depth-50 bottlenecks
            (32, 4 with ``sk_kw={}``: the paper's SKNet-50, ``skresnext50_32x4d``).
        attention, attention_kw, **kw: as for :func:`visattn.models.resnet.imagenet_resnet`
            (an attention module in each block's ``se`` slot, placements, ...).

    ``input_size`` is accepted (and checked) for a uniform ``create_model`` interface.
    """
    if input_size is not None:
        check_pair(input_size, "input_size")
    if depth not in _DEPTHS:
        raise ValueError(f"depth: expected one of {sorted(_DEPTHS)}, got {depth!r}")
    block, layers, defaults = _DEPTHS[depth]
    if sk_kw is not None and not isinstance(sk_kw, dict):
        raise TypeError(f"sk_kw: expected a dict or None, got {type(sk_kw).__name__}")
    block_kw: dict[str, Any] = {"sk_kw": dict(defaults if sk_kw is None else sk_kw)}
    if block is SelectiveKernelBottleneck:
        block_kw.update(cardinality=cardinality, base_width=base_width)
    elif (cardinality, base_width) != (1, 64):
        raise ValueError(
            f"cardinality: the basic blocks of depth {depth} have no groups or width options, "
            f"got cardinality={cardinality!r}, base_width={base_width!r}"
        )
    kw.setdefault("attention_defaults", IMAGENET_ATTENTION_DEFAULTS)
    return ResNet(
        block,
        layers,
        num_classes=num_classes,
        in_chans=in_chans,
        attention=attention,
        attention_kw=attention_kw,
        block_kw=block_kw,
        **kw,
    )
