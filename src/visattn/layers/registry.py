"""Registry of channel-attention layers, so models and the command line can ask for one by name.

``create_attention("se", 256, reduction=8)`` builds ``SqueezeExcite(256, reduction=8)``.
Registered names: ``"se"`` (SqueezeExcite), ``"cbam"`` (CBAM), ``"channel"`` (CBAM's
ChannelAttention), ``"spatial"`` (CBAM's SpatialAttention; ignores ``channels``), ``"bam"``
(BAM), ``"ceca"`` (CECA), ``"coord"`` (CoordAttention), ``"eca"`` (ECA), ``"ese"`` (ESE),
``"gc"`` (GlobalContext), ``"ge"`` (GatherExcite), ``"lcbam"`` (LightCBAM, timm's light CBAM),
``"nonlocal"`` (NonLocal), ``"simam"`` (SimAM; ignores ``channels``), ``"sk"``
(SelectiveKernel(channels, channels), a convolution replacement; groups gcd(32, channels) unless
given, so that any channel count works: the paper's G = 32 where 32 divides it), ``"triplet"``
(TripletAttention; ignores ``channels``). Third-party layers join with
:func:`register_attention`.

Tests: ``tests/layers/test_layers_registry.py``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from torch import nn

from ..functional.simam_block import SIMAM_LAMBDA
from .bam import BAM
from .cbam import CBAM, ChannelAttention, LightCBAM, SpatialAttention
from .coord import CoordAttention
from .eca import CECA, ECA, ESE
from .gather_excite import GatherExcite
from .global_context import GlobalContext
from .non_local import NonLocal
from .selective_kernel import SelectiveKernel
from .simam import SimAM
from .squeeze_excite import SqueezeExcite
from .triplet import TripletAttention

__all__ = ["attention_options", "create_attention", "list_attention", "register_attention"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_attention(
    name: str, factory: Callable[..., nn.Module] | None = None, *, overwrite: bool = False
) -> Any:
    """Register ``factory(channels, **kwargs) -> nn.Module`` under ``name`` (usable as decorator)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty string, got {name!r}")

    def add(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"name: {name!r} is already registered (pass overwrite=True)")
        _REGISTRY[name] = f
        return f

    return add if factory is None else add(factory)


def list_attention() -> list[str]:
    """Sorted names accepted by :func:`create_attention`."""
    return sorted(_REGISTRY)


def create_attention(name: str, channels: int, **kwargs: Any) -> nn.Module:
    """Build the attention layer registered as ``name`` for ``channels`` channels.

    Shape of the result: (N, channels, H, W) -> (N, channels, H, W).
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"name: expected one of {', '.join(map(repr, list_attention()))}, got {name!r}"
        )
    return _REGISTRY[name](channels, **kwargs)


def attention_options(name: str) -> frozenset[str]:
    """The keyword options the factory of ``name`` names in its signature (besides the channel
    count), e.g. ``{"reduction", "squeeze", ...}`` for ``"se"``: what a caller may pass to every
    mechanism that takes it (the demo passes ``reduction`` only to those that name it). A factory
    that forwards ``**kwargs`` names none."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"name: expected one of {', '.join(map(repr, list_attention()))}, got {name!r}"
        )
    params = inspect.signature(_REGISTRY[name]).parameters.values()
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return frozenset(p.name for p in params if p.kind in named) - {"channels", "self"}


def _spatial(channels: int, **kwargs: Any) -> nn.Module:
    del channels  # spatial attention works for any number of channels
    return SpatialAttention(**kwargs)


def _selective_kernel(channels: int, *, groups: int | None = None, **kwargs: Any) -> nn.Module:
    """SelectiveKernel(channels, channels) with G = gcd(32, channels) unless ``groups`` is given:
    the paper's G = 32 where 32 divides C (all of SKNet's widths), its largest divisor else."""
    if groups is None:
        valid = isinstance(channels, int) and not isinstance(channels, bool) and channels > 0
        groups = math.gcd(32, channels) if valid else 32  # invalid: SelectiveKernel says why
    return SelectiveKernel(channels, channels, groups=groups, **kwargs)


def _triplet(channels: int, **kwargs: Any) -> nn.Module:
    del channels  # triplet attention works for any number of channels
    return TripletAttention(**kwargs)


def _simam(channels: int, *, e_lambda: float = SIMAM_LAMBDA) -> nn.Module:
    del channels  # parameter-free: works for any number of channels
    return SimAM(e_lambda=e_lambda)


register_attention("se", SqueezeExcite)
register_attention("cbam", CBAM)
register_attention("channel", ChannelAttention)
register_attention("spatial", _spatial)
register_attention("bam", BAM)
register_attention("coord", CoordAttention)
register_attention("triplet", _triplet)
register_attention("ceca", CECA)
register_attention("eca", ECA)
register_attention("ese", ESE)
register_attention("gc", GlobalContext)
register_attention("ge", GatherExcite)
register_attention("sk", _selective_kernel)
register_attention("lcbam", LightCBAM)
register_attention("nonlocal", NonLocal)
register_attention("simam", _simam)
