"""Model registry: ``create_model(name, num_classes=..., attention=...)`` and ``list_models()``.

Registered names (see docs/models.md):

- ImageNet ResNets (He et al., arXiv:1512.03385): ``resnet18`` ... ``resnet152``; with
  Squeeze-and-Excitation (Hu et al., arXiv:1709.01507) ``seresnet18`` ... ``seresnet152``; with
  CBAM (Woo et al., arXiv:1807.06521) ``cbam_resnet18`` ... ``cbam_resnet152``.
- ResNet-D / -T of the "bag of tricks" (He et al., arXiv:1812.01187) in timm's layout:
  ``resnet50d``, ``resnet26t``; timm's ECA networks ``ecaresnet50d``, ``ecaresnet26t``.
- ResNet-50 with the attention of a paper that uses it there, where the paper puts it
  (:data:`PAPER_RESNETS`): ``bam_resnet50``, ``eca_resnet50``, ``gc_resnet50``,
  ``ge_resnet50``, ``nonlocal_resnet50``, ``simam_resnet50``, ``triplet_resnet50``. These and
  the ECA networks need their mechanism in ``visattn.list_attention()``; ``create_model`` says
  so when it is missing.
- Selective Kernel ResNets (Li et al., arXiv:1903.06586), timm's layouts: ``skresnet18``,
  ``skresnet34``, ``skresnet50``, and the paper's SKNet-50, ``skresnext50_32x4d``.
- CIFAR ResNets: ``resnet20_cifar``, ``resnet32_cifar``, ``resnet44_cifar``, ``resnet56_cifar``,
  ``resnet110_cifar``.
- Spatial Transformer paper networks (Jaderberg et al., arXiv:1506.02025): ``fcn``, ``cnn``,
  ``stfcn``, ``stcnn``.

Tests: ``tests/models/test_models_registry.py``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn

from .._checks import check_int
from ..layers.registry import list_attention
from .resnet import cifar_resnet, imagenet_resnet
from .sknet import sk_resnet
from .stn_nets import cnn, fcn, stcnn, stfcn

__all__ = ["PAPER_RESNETS", "ModelEntry", "create_model", "list_models", "register_model"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its factory, default number of classes and a one-line description."""

    name: str
    factory: Callable[..., nn.Module]
    default_num_classes: int
    description: str
    fixed_attention: str | None = None  # e.g. "se" for seresnet50: attention= must not differ


_MODELS: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    factory: Callable[..., nn.Module],
    *,
    default_num_classes: int = 1000,
    description: str = "",
    fixed_attention: str | None = None,
    overwrite: bool = False,
) -> ModelEntry:
    """Register ``factory(*, num_classes, in_chans, attention, attention_kw, **kw)`` as ``name``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory: expected a callable, got {type(factory).__name__}")
    if name in _MODELS and not overwrite:
        raise ValueError(f"name: {name!r} is already registered (pass overwrite=True)")
    entry = ModelEntry(name, factory, default_num_classes, description, fixed_attention)
    _MODELS[name] = entry
    return entry


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a shell-style ``pattern`` (``"*resnet5*"``)."""
    names = sorted(_MODELS)
    if pattern is None:
        return names
    if not isinstance(pattern, str):
        raise TypeError(f"pattern: expected a string or None, got {type(pattern).__name__}")
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    attention: Any = None,
    attention_kw: dict[str, Any] | None = None,
    **kw: Any,
) -> nn.Module:
    """Build the model registered as ``name``.

    Args:
        name: one of :func:`list_models`.
        num_classes: outputs of the classifier; default 1000 for the ImageNet ResNets, 10 for
            the CIFAR ResNets and the spatial-transformer networks.
        in_chans: input channels; default 3 for the ResNets and 1 for the spatial-transformer
            networks (single-channel MNIST in the paper).
        attention: attention registry name (``"se"``, ``"cbam"``, ...; see
            ``visattn.list_attention()``) or factory ``channels -> nn.Module`` placed in every
            residual block (ResNets) or after every convolution (``cnn`` / ``stcnn``).
        attention_kw: keyword arguments for the attention module (e.g. ``{"reduction": 8}``).
        **kw: model options, e.g. ``placement="pre"``, ``attention_stages=(3, 4)``,
            ``attention_at="stage"``, ``stem="deep"``, ``avg_down=True`` for ResNets,
            ``input_size=42, transform="tps", num_transformers=2, arrangement="series"`` for
            ``stcnn``.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid names), a named network whose
            attention mechanism is not registered (``ecaresnet50d`` without ``"eca"``), or bad
            options.
    """
    if not isinstance(name, str) or name not in _MODELS:
        raise ValueError(f"name: expected one of {', '.join(list_models())}, got {name!r}")
    entry = _MODELS[name]
    if num_classes is None:
        num_classes = entry.default_num_classes
    check_int(num_classes, "num_classes", minimum=1)
    if in_chans is not None:
        check_int(in_chans, "in_chans", minimum=1)
        kw["in_chans"] = in_chans
    if entry.fixed_attention is not None:
        if entry.fixed_attention not in list_attention():
            raise ValueError(
                f"name: {name!r} needs the attention mechanism {entry.fixed_attention!r}, which "
                f"is not registered (visattn.list_attention(): {', '.join(list_attention())})"
            )
        if attention is not None and attention != entry.fixed_attention:
            raise ValueError(
                f"attention: {name!r} always uses {entry.fixed_attention!r}, got {attention!r} "
                f"(use the plain ResNet name with attention={attention!r})"
            )
        attention = entry.fixed_attention
    if attention_kw is not None and not isinstance(attention_kw, dict):
        raise TypeError(f"attention_kw: expected a dict or None, got {type(attention_kw).__name__}")
    return entry.factory(
        num_classes=num_classes,
        attention=attention,
        attention_kw=attention_kw,
        **kw,
    )


for _depth in (18, 34, 50, 101, 152):
    register_model(
        f"resnet{_depth}",
        partial(imagenet_resnet, _depth),
        description=f"ResNet-{_depth} (ImageNet layout, torchvision/timm parameter names)",
    )
    register_model(
        f"seresnet{_depth}",
        partial(imagenet_resnet, _depth),
        description=f"SE-ResNet-{_depth} (timm's seresnet{_depth} layout)",
        fixed_attention="se",
    )
    register_model(
        f"cbam_resnet{_depth}",
        partial(imagenet_resnet, _depth),
        description=f"CBAM-ResNet-{_depth} (official CBAM layout)",
        fixed_attention="cbam",
    )
# ResNet-D / -T (arXiv:1812.01187, Fig. 2; timm's stem_width=32 models).
_RESNET_D = {"stem": "deep", "avg_down": True}
_RESNET_T = {"stem": "tiered", "avg_down": True}
register_model(
    "resnet50d",
    partial(imagenet_resnet, 50, **_RESNET_D),
    description="ResNet-50-D (deep stem, average-pool shortcuts; timm's resnet50d)",
)
register_model(
    "resnet26t",
    partial(imagenet_resnet, 26, **_RESNET_T),
    description="ResNet-26-T (tiered deep stem, average-pool shortcuts; timm's resnet26t)",
)
register_model(
    "ecaresnet50d",
    partial(imagenet_resnet, 50, **_RESNET_D),
    description="ECA-ResNet-50-D (timm's ecaresnet50d: ECA in every block of ResNet-50-D)",
    fixed_attention="eca",
)
register_model(
    "ecaresnet26t",
    partial(imagenet_resnet, 26, **_RESNET_T),
    description="ECA-ResNet-26-T (timm's ecaresnet26t: ECA in every block of ResNet-26-T)",
    fixed_attention="eca",
)

#: ResNet-50 with each mechanism where its paper puts it: name -> (attention, ResNet options,
#: description). Every block (the standard slot, like SE) unless the options say otherwise.
PAPER_RESNETS: dict[str, tuple[str, dict[str, Any], str]] = {
    "bam_resnet50": (
        "bam",
        {"attention_at": "stage"},
        "BAM-ResNet-50 (arXiv:1807.06514): BAM after stages 1-3, before each downsampling",
    ),
    "eca_resnet50": ("eca", {}, "ECA-Net50 (arXiv:1910.03151): ECA in every block"),
    "gc_resnet50": (
        "gc",
        {"attention_stages": (2, 3, 4)},
        "GC-ResNet-50 (arXiv:1904.11492): GC in every block of c3-c5 (stages 2-4)",
    ),
    "ge_resnet50": ("ge", {}, "GE-ResNet-50 (arXiv:1810.12348): gather-excite in every block"),
    "nonlocal_resnet50": (
        "nonlocal",
        {"attention_stages": (2, 3), "attention_every": 2, "placement": "post"},
        "ResNet-50 with the non-local paper's 5 blocks (arXiv:1711.07971): after every other "
        "block of res3 and res4",
    ),
    "simam_resnet50": ("simam", {}, "SimAM-ResNet-50 (ICML 2021): SimAM in every block"),
    "triplet_resnet50": (
        "triplet",
        {},
        "Triplet-attention ResNet-50 (arXiv:2010.03045): triplet attention in every block",
    ),
}
for _name, (_attention, _options, _description) in PAPER_RESNETS.items():
    register_model(
        _name,
        partial(imagenet_resnet, 50, **_options),
        description=_description,
        fixed_attention=_attention,
    )
for _depth in (18, 34, 50):
    register_model(
        f"skresnet{_depth}",
        partial(sk_resnet, _depth),
        description=f"SK-ResNet-{_depth} (timm's skresnet{_depth} layout: split input, no groups)",
    )
register_model(
    "skresnext50_32x4d",
    partial(sk_resnet, 50, cardinality=32, base_width=4, sk_kw={}),
    description="SKNet-50 of the SK paper (ResNeXt-50 32x4d, SK[M=2, G=32, r=16], L=32)",
)
for _depth in (20, 32, 44, 56, 110):
    register_model(
        f"resnet{_depth}_cifar",
        partial(cifar_resnet, _depth),
        default_num_classes=10,
        description=f"CIFAR ResNet-{_depth} (16/32/64 channels, option-A shortcuts)",
    )
register_model("fcn", fcn, default_num_classes=10, description="ST paper's FCN baseline")
register_model("cnn", cnn, default_num_classes=10, description="ST paper's CNN baseline")
register_model("stfcn", stfcn, default_num_classes=10, description="ST-FCN (ST paper)")
register_model("stcnn", stcnn, default_num_classes=10, description="ST-CNN (ST paper)")
