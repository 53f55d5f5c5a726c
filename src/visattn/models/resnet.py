"""Residual networks with attention in every block.

- ResNet (He et al., CVPR 2016, arXiv:1512.03385): ImageNet ResNet-18/34/50/101/152 (Table 1,
  stride of the bottleneck on its 3 x 3 convolution as in torchvision / timm, "v1.5") and the
  CIFAR ResNets of §4.2 (6n + 2 layers, three stages of basic blocks with 16/32/64 channels,
  parameter-free zero-padding shortcuts, "option A").
- Squeeze-and-Excitation (Hu et al., CVPR 2018, arXiv:1709.01507): the SE unit inside a residual
  block, with the placements of the paper's §6.5 / Fig. 5:

      standard   y = ReLU(x' + SE(F(x)))          (SE on the residual branch, before the sum)
      pre        y = ReLU(x' + F(SE(x)))          (SE before the residual unit, on its branch)
      post       y = SE(ReLU(x' + F(x)))          (SE after the sum and its ReLU)
      identity   y = ReLU(SE(x') + F(x))          (SE on the shortcut, in parallel with F)

  where F is the residual branch (convolutions and BatchNorms) and x' the shortcut (x or the
  projection ``downsample(x)``; the "identity" placement applies the unit to x' after the
  projection, so it always sees the block's output channels).
- CBAM (Woo et al., ECCV 2018, arXiv:1807.06521): the same slot holds a CBAM module (§3.3,
  Fig. 3: on the residual branch before the sum); so does any registered mechanism.
- "Bag of tricks" ResNet-D (He et al., CVPR 2019, arXiv:1812.01187, Fig. 2): ``stem="deep"``
  (three 3 x 3 convolutions instead of the 7 x 7, ResNet-C), ``stem="tiered"`` (timm's
  ``deep_tiered``: widths 3 * (w // 4), w, 2w) and ``avg_down=True`` (the projection shortcut
  averages 2 x 2 with stride 2 before a stride-1 1 x 1 convolution, ResNet-D), in timm's layout.
- Attention between stages (``attention_at="stage"``): one module after each stage but the last,
  where the feature map is about to be downsampled, as BAM (Park et al., BMVC 2018,
  arXiv:1807.06514, §3.2 / Fig. 1) places its modules; named ``<name><stage>`` (``bam1``,
  ``bam2``, ``bam3``, the official BAM code's names).
- Every k-th block only (``attention_every=k``: blocks k - 1, 2k - 1, ... of each stage, as the
  non-local paper's "every other residual block", Wang et al., CVPR 2018, arXiv:1711.07971, §4.1).

Parameter names follow torchvision and timm (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer2.0.downsample.0`` / ``.1``, ``fc``; the attention module of a block is ``se``), so
``torchvision.models.resnet50().state_dict()`` loads into ``ResNet`` for ``resnet50`` and
``timm.create_model("seresnet50").state_dict()`` into ``seresnet50`` with ``strict=True``. The
deep stems are timm's ``conv1`` Sequential (``conv1.0`` / ``.1`` / ``.3`` / ``.4`` / ``.6``:
convolution, BN, ReLU, convolution, BN, ReLU, convolution) followed by ``bn1``; with
``avg_down`` the shortcut is ``downsample.0`` (the pooling, an Identity where the stride is 1),
``.1`` (convolution) and ``.2`` (BN), so ``timm.create_model("ecaresnet50d")`` loads too.

Attention defaults chosen so that the models match the published numbers (see docs/models.md):
SE in the ImageNet ResNets uses timm's layout (1 x 1 convolutions with biases, C/16 rounded to a
multiple of 8; SE-ResNet-50 has 28.09M parameters); CBAM uses the official code's layout (MLP with
biases, 7 x 7 spatial convolution without bias followed by BatchNorm, C/16 hidden channels;
CBAM-ResNet-50 has 28.09M parameters, the paper's Table 4). In the CIFAR ResNets SE and CBAM use
C/16 without rounding, as in the SE paper.

Tests: ``tests/models/test_models_resnet.py``, ``tests/models/test_models_interop.py``,
``tests/models/test_models_timm.py``, ``tests/models/test_models_attention_resnets.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .._checks import check_choice, check_int, check_pair
from ..layers.registry import create_attention
from .blocks import (
    PLACEMENTS,
    BasicBlock,
    Bottleneck,
    ZeroPadShortcut,
    _Block,
    _conv1x1,
    _conv3x3,
    _deep_stem,
)

__all__ = [
    "ATTENTION_AT",
    "PLACEMENTS",
    "STEMS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "ZeroPadShortcut",
    "cifar_resnet",
    "imagenet_resnet",
]

STEMS = ("imagenet", "cifar", "deep", "tiered")
ATTENTION_AT = ("block", "stage")

AttentionSpec = str | Callable[[int], nn.Module] | None

# Defaults per attention name, merged under the user's ``attention_kw``.
IMAGENET_ATTENTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "se": {"divisor": 8},  # timm's SEModule: rd_divisor=8
    "cbam": {"norm": True, "bias": True},  # official CBAM code: BN after the 7x7 conv, MLP bias
}
CIFAR_ATTENTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "cbam": {"norm": True, "bias": True},
}


def build_attention(
    attention: AttentionSpec,
    channels: int,
    attention_kw: dict[str, Any] | None = None,
    defaults: dict[str, dict[str, Any]] | None = None,
) -> nn.Module | None:
    """The attention module for ``channels`` channels: a registry name, a factory or ``None``."""
    if attention is None:
        if attention_kw:
            raise ValueError(
                f"attention_kw: expected None or {{}} when attention is None, got {attention_kw!r}"
            )
        return None
    kw = dict((defaults or {}).get(attention, {})) if isinstance(attention, str) else {}
    kw.update(attention_kw or {})
    if isinstance(attention, str):
        return create_attention(attention, channels, **kw)
    if callable(attention):
        module = attention(channels, **kw)
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"attention: expected the factory to return an nn.Module, got "
                f"{type(module).__name__}"
            )
        return module
    raise TypeError(
        f"attention: expected a registry name, a factory channels -> nn.Module or None, got "
        f"{type(attention).__name__}"
    )


class ResNet(nn.Module):
    """ResNet with optional attention in its residual blocks or between its stages.

    Args:
        block: ``BasicBlock``, ``Bottleneck`` or another residual block of this module's
            ``_Block`` kind (the SK blocks of :mod:`visattn.models.sknet`).
        layers: number of blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
        num_classes: outputs of ``fc``.
        in_chans: input channels of ``conv1``.
        widths: ``planes`` of the stages (64, 128, 256, 512 for ImageNet; 16, 32, 64 for CIFAR).
        stem: ``"imagenet"`` (7 x 7 stride-2 convolution, BN, ReLU, 3 x 3 stride-2 max pooling),
            ``"cifar"`` (3 x 3 convolution, BN, ReLU), ``"deep"`` (ResNet-C/D: three 3 x 3
            convolutions of widths ``stem_width``, ``stem_width``, 2 ``stem_width``, the first
            with stride 2, then BN, ReLU and the max pooling; timm's ``stem_type="deep"``) or
            ``"tiered"`` (the same with widths 3 * (``stem_width`` // 4), ``stem_width``,
            2 ``stem_width``; timm's ``"deep_tiered"``).
        stem_width: width of the deep stems (default 32, timm's ResNet-D / -T); the stem
            outputs 2 ``stem_width`` channels. Only for ``stem="deep"`` / ``"tiered"``.
        shortcut: ``"B"`` (1 x 1 projection + BN where the shape changes, torchvision / timm)
            or ``"A"`` (parameter-free zero padding, the CIFAR ResNets of the paper).
        avg_down: ResNet-D's projection shortcut: 2 x 2 average pooling with the block's stride
            (``ceil_mode=True``, ``count_include_pad=False``, as timm), then a stride-1 1 x 1
            convolution and BN. Needs ``shortcut="B"``.
        attention: registry name (``"se"``, ``"cbam"``, ...), a factory ``channels -> Module``,
            or ``None``; ``attention_kw`` are passed to it (over ``attention_defaults``).
        attention_at: ``"block"`` (default: inside the residual blocks, in the slot ``se``) or
            ``"stage"`` (one module after each selected stage, named ``<attention><stage>``,
            e.g. ``bam1``, or ``attention<stage>`` for a factory; BAM's placement).
        placement: where the unit sits in a block: ``"standard"``, ``"pre"``, ``"post"`` or
            ``"identity"`` (see the module docstring). Only ``"standard"`` with
            ``attention_at="stage"``.
        attention_stages: 1-based stages that get attention (default: all stages for
            ``attention_at="block"``; all but the last, i.e. before every downsampling, for
            ``"stage"``).
        attention_every: within a selected stage, only blocks k - 1, 2k - 1, ... (0-based) get
            attention (k = ``attention_every``; 1: every block, 2: every other block).
        zero_init_residual: start the last BN of every block at zero (torchvision option).
        block_kw: extra keyword arguments of every block (e.g. the SK blocks' ``sk_kw``).

    Shape: (N, in_chans, H, W) -> (N, num_classes). Any H, W >= 1 (global average pooling).
    """

    def __init__(
        self,
        block: type[_Block],
        layers: Sequence[int],
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: str = "imagenet",
        stem_width: int | None = None,
        shortcut: str = "B",
        avg_down: bool = False,
        attention: AttentionSpec = None,
        attention_kw: dict[str, Any] | None = None,
        attention_defaults: dict[str, dict[str, Any]] | None = None,
        attention_at: str = "block",
        placement: str = "standard",
        attention_stages: Sequence[int] | None = None,
        attention_every: int = 1,
        zero_init_residual: bool = False,
        block_kw: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_int(num_classes, "num_classes", minimum=1)
        check_int(in_chans, "in_chans", minimum=1)
        check_choice(stem, "stem", STEMS)
        check_choice(shortcut, "shortcut", ("A", "B"))
        check_choice(placement, "placement", PLACEMENTS)
        check_choice(attention_at, "attention_at", ATTENTION_AT)
        check_int(attention_every, "attention_every", minimum=1)
        deep = stem in ("deep", "tiered")
        if stem_width is None:
            stem_width = 32
        elif not deep:
            raise ValueError(
                f"stem_width: only used by stem='deep' or 'tiered', got {stem_width!r} with "
                f"stem={stem!r}"
            )
        check_int(stem_width, "stem_width", minimum=4 if stem == "tiered" else 1)
        if not isinstance(avg_down, bool):
            raise TypeError(f"avg_down: expected a bool, got {avg_down!r}")
        if avg_down and shortcut != "B":
            raise ValueError(
                f"avg_down: pools before the 1 x 1 projection of shortcut='B', got "
                f"avg_down=True with shortcut={shortcut!r}"
            )
        if attention_at == "stage" and placement != "standard":
            raise ValueError(
                f"placement: attention_at='stage' puts modules between stages, not in blocks; "
                f"expected 'standard', got {placement!r}"
            )
        if attention_at == "stage" and attention_every != 1:
            raise ValueError(
                f"attention_every: attention_at='stage' puts one module per stage; expected 1, "
                f"got {attention_every}"
            )
        if not (isinstance(block, type) and issubclass(block, _Block)):
            raise TypeError(
                f"block: expected BasicBlock, Bottleneck or another residual block class, "
                f"got {block!r}"
            )
        layers, widths = tuple(layers), tuple(widths)
        if len(layers) != len(widths) or not layers:
            raise ValueError(
                f"layers: expected one block count per stage width {widths}, got {layers}"
            )
        for n in layers:
            check_int(n, "layers", minimum=1)
        stages = tuple(range(1, len(layers) + 1))
        if attention_stages is None:
            attention_stages = stages if attention_at == "block" else stages[:-1] or stages
        attention_stages = tuple(attention_stages)
        for s in attention_stages:
            if isinstance(s, bool) or not isinstance(s, int) or s not in stages:
                raise ValueError(
                    f"attention_stages: expected stage numbers from {stages}, got "
                    f"{attention_stages!r}"
                )
        if attention is None and attention_kw:
            raise ValueError(
                f"attention_kw: expected None or {{}} when attention is None, got {attention_kw!r}"
            )
        f = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        # A name only (a factory may be a lambda, which would make the model unpicklable).
        self.attention = (
            attention
            if attention is None or isinstance(attention, str)
            else getattr(attention, "__name__", type(attention).__name__)
        )
        self.attention_at = attention_at
        self.placement = placement
        self.attention_stages = attention_stages
        self.attention_every = attention_every
        self.stem = stem
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, widths[0], 7, stride=2, padding=3, bias=False, **f)
        elif stem == "cifar":
            self.conv1 = _conv3x3(in_chans, widths[0], **f)
        else:
            self.conv1 = _deep_stem(stem, in_chans, stem_width, f)
        self.inplanes = 2 * stem_width if deep else widths[0]
        self.bn1 = nn.BatchNorm2d(self.inplanes, **f)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if stem == "cifar" else nn.MaxPool2d(3, 2, 1)
        # (stage module name, name of the attention module after it or None), in forward order.
        self._stages: list[tuple[str, str | None]] = []
        for i, (n, width) in enumerate(zip(layers, widths, strict=True)):
            stage = i + 1
            in_blocks = attention_at == "block" and stage in attention_stages
            layer = self._make_layer(
                block,
                width,
                n,
                stride=1 if i == 0 else 2,
                shortcut=shortcut,
                avg_down=avg_down,
                attention=attention if in_blocks else None,
                attention_kw=attention_kw,
                defaults=attention_defaults,
                placement=placement,
                every=attention_every,
                factory=f,
                block_kw=block_kw or {},
            )
            setattr(self, f"layer{stage}", layer)
            after = None
            if attention is not None and attention_at == "stage" and stage in attention_stages:
                after = self._stage_attention_name(attention, stage)
                module = build_attention(
                    attention, width * block.expansion, attention_kw, attention_defaults
                )
                setattr(self, after, module.to(**{k: v for k, v in f.items() if v is not None}))
            self._stages.append((f"layer{stage}", after))
        self.num_features = widths[-1] * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.num_features, num_classes, **f)
        self._init_weights(zero_init_residual)

    def _stage_attention_name(self, attention: AttentionSpec, stage: int) -> str:
        """``<registry name><stage>`` (``bam1``), or ``attention<stage>`` for a factory or a
        name that is no identifier or would shadow one of the network's own attributes."""
        name = f"{attention}{stage}" if isinstance(attention, str) else ""
        if not name.isidentifier() or hasattr(self, name):
            name = f"attention{stage}"
        return name

    def _make_layer(
        self, block, planes, blocks, *, stride, shortcut, avg_down, attention, attention_kw,
        defaults, placement, every, factory, block_kw,
    ) -> nn.Sequential:  # fmt: skip
        out = planes * block.expansion
        modules = []
        for j in range(blocks):
            s = stride if j == 0 else 1
            downsample = None
            if s != 1 or self.inplanes != out:
                if shortcut == "A":
                    downsample = ZeroPadShortcut(self.inplanes, out, s)
                elif avg_down:
                    pool = (
                        nn.AvgPool2d(2, s, ceil_mode=True, count_include_pad=False)
                        if s != 1
                        else nn.Identity()
                    )
                    downsample = nn.Sequential(
                        pool,
                        _conv1x1(self.inplanes, out, **factory),
                        nn.BatchNorm2d(out, **factory),
                    )
                else:
                    downsample = nn.Sequential(
                        _conv1x1(self.inplanes, out, s, **factory),
                        nn.BatchNorm2d(out, **factory),
                    )
            se_channels = self.inplanes if placement == "pre" else out
            se = None
            if j % every == every - 1:
                se = build_attention(attention, se_channels, attention_kw, defaults)
            if se is not None:
                se = se.to(**{k: v for k, v in factory.items() if v is not None})
            kw = {"se": se, "placement": placement, **factory, **block_kw}
            modules.append(block(self.inplanes, planes, s, downsample, **kw))
            self.inplanes = out
        return nn.Sequential(*modules)

    def named_attention_modules(self) -> dict[str, nn.Module]:
        """The attention modules by qualified name: every block's ``se`` that holds one
        (``layer1.0.se``, ...) and the modules between stages (``bam1``, ...), in forward order."""
        found = {}
        for name, after in self._stages:
            for j, blk in enumerate(getattr(self, name)):
                if getattr(blk, "se", None) is not None:
                    found[f"{name}.{j}.se"] = blk.se
            if after is not None:
                found[after] = getattr(self, after)
        return found

    def _init_weights(self, zero_init_residual: bool) -> None:
        # Attention modules keep their own initialisation.
        skip = {id(m) for a in self.named_attention_modules().values() for m in a.modules()}
        for m in self.modules():
            if id(m) in skip:
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, _Block):
                    nn.init.zeros_(m._last_norm().weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map of the last stage, (N, num_features, H', W')."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name, after in self._stages:
            x = getattr(self, name)(x)
            if after is not None:
                x = getattr(self, after)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


_IMAGENET_DEPTHS: dict[int, tuple[type[_Block], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    26: (Bottleneck, (2, 2, 2, 2)),  # timm's resnet26 (ecaresnet26t)
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def imagenet_resnet(
    depth: int,
    *,
    num_classes: int = 1000,
    in_chans: int = 3,
    attention: AttentionSpec = None,
    attention_kw: dict[str, Any] | None = None,
    input_size: int | tuple[int, int] | None = None,
    **kw: Any,
) -> ResNet:
    """ImageNet ResNet-``depth`` (18, 26, 34, 50, 101 or 152), torchvision / timm parameter names.

    26 is timm's ResNet-26 (bottleneck blocks, two per stage). ``**kw`` are :class:`ResNet`'s
    options (``stem="deep"``, ``avg_down=True``, ``attention_at="stage"``, ...).

    ``input_size`` is accepted (and checked) for a uniform ``create_model`` interface; the
    network works at any size (global average pooling).
    """
    if input_size is not None:
        check_pair(input_size, "input_size")
    if depth not in _IMAGENET_DEPTHS:
        raise ValueError(f"depth: expected one of {sorted(_IMAGENET_DEPTHS)}, got {depth!r}")
    block, layers = _IMAGENET_DEPTHS[depth]
    kw.setdefault("attention_defaults", IMAGENET_ATTENTION_DEFAULTS)
    return ResNet(
        block,
        layers,
        num_classes=num_classes,
        in_chans=in_chans,
        attention=attention,
        attention_kw=attention_kw,
        **kw,
    )


def cifar_resnet(
    depth: int,
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    attention: AttentionSpec = None,
    attention_kw: dict[str, Any] | None = None,
    input_size: int | tuple[int, int] | None = None,
    **kw: Any,
) -> ResNet:
    """CIFAR ResNet-``depth`` (depth = 6n + 2): three stages of n basic blocks, 16/32/64 channels.

    3 x 3 convolution stem without pooling, option-A shortcuts by default (``shortcut="B"`` for
    projections), global average pooling and ``fc``. ResNet-110 has 1.73M parameters.
    """
    if input_size is not None:
        check_pair(input_size, "input_size")  # accepted for a uniform interface; any size works
    check_int(depth, "depth", minimum=8)
    if (depth - 2) % 6:
        raise ValueError(f"depth: expected 6n + 2 (20, 32, 44, 56, 110, ...), got {depth}")
    n = (depth - 2) // 6
    kw.setdefault("shortcut", "A")
    kw.setdefault("attention_defaults", CIFAR_ATTENTION_DEFAULTS)
    return ResNet(
        BasicBlock,
        (n, n, n),
        num_classes=num_classes,
        in_chans=in_chans,
        widths=(16, 32, 64),
        stem="cifar",
        attention=attention,
        attention_kw=attention_kw,
        **kw,
    )
