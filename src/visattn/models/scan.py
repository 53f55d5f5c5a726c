"""Which modules of a model are attention: the one scan used by ``summary``, ``visattn.viz``
(capture) and the commands (the demo's timing of attention).

A module is attention when it is one of :data:`ATTENTION_TYPES` (``SqueezeExcite``, ``CBAM``,
``ChannelAttention``, ``SpatialAttention``, ``SpatialTransformer`` and the
``PreservedAttention`` wrapper of :func:`visattn.add_attention`), when its class declares a
``map_kind`` (the attention layers' protocol, see :mod:`visattn.viz.capture`: a new mechanism
is found without being listed here), or when it sits in the ``se`` attribute of its parent
(timm's convention for the attention slot of residual blocks).

Tests: ``tests/models/test_models_summary.py``, ``tests/viz/test_viz_capture.py``.
"""

from __future__ import annotations

from torch import nn

from ..layers import CBAM, ChannelAttention, SpatialAttention, SpatialTransformer, SqueezeExcite
from ..layers._common import map_kind
from .integrate import PreservedAttention

__all__ = ["ATTENTION_TYPES", "attention_modules"]

ATTENTION_TYPES: tuple[type[nn.Module], ...] = (
    SqueezeExcite,
    CBAM,
    ChannelAttention,
    SpatialAttention,
    SpatialTransformer,
    PreservedAttention,
)


def attention_modules(model: nn.Module, *, outermost: bool = True) -> dict[str, nn.Module]:
    """Attention modules of ``model`` by qualified name, in ``named_modules`` order.

    Args:
        model: any module (``model`` itself is included when it is attention).
        outermost: keep only the outermost of nested attention modules (a CBAM, not its
            ``channel`` / ``spatial`` parts); ``False`` lists every one.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    found: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if outermost and (any(name.startswith(f"{k}.") for k in found) or (name and "" in found)):
            continue
        if (
            isinstance(m, ATTENTION_TYPES)
            or map_kind(m) is not None
            or name.rpartition(".")[2] == "se"
        ):
            found[name] = m
    return found
