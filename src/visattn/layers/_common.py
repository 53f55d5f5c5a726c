"""What every attention layer shares: its input check, and the bottleneck MLP of SE-style gates.

- :func:`map_kind`, :data:`MAP_KINDS`: the attention layers' protocol (a class attribute
  ``map_kind`` and a method ``attention(x)``, see ``docs/adding-a-mechanism.md``).
- :func:`check_channels`: the one check of a layer's input that :mod:`visattn.functional` cannot
  make (the layer's channel count); the functions check everything else, once per call.
- :func:`reduced_channels`, :func:`add_bottleneck`, :func:`bottleneck_weights`: the bottleneck
  MLP W_2 ReLU(W_1 z + b_1) + b_2 of SE (arXiv:1709.01507, eq. 3) and CBAM's channel attention
  (arXiv:1807.06521, eq. 2), as 1 x 1 convolutions ``fc1`` / ``fc2`` (timm's layout).

A new mechanism's layer imports these from here (``docs/adding-a-mechanism.md``).
Tests: ``tests/layers/test_layers_squeeze_excite.py``, ``tests/layers/test_layers_cbam.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_int, check_positive

__all__ = ["GATING_KINDS", "MAP_KINDS", "add_bottleneck", "bottleneck_weights", "check_channels",
           "map_kind", "reduced_channels"]  # fmt: skip

#: The ``map_kind`` values of attention layers, and what ``attention(x)`` returns for each (x is
#: the layer's input, (N, C, H, W)):
#:
#: - ``"se"``: SE's excitation, a gate (N, C, 1, 1); ``"channel"``: a channel gate (N, C, 1, 1);
#: - ``"spatial"``: a map over positions (N, 1, H, W);
#: - ``"mixed"``: a map over channels and positions, broadcastable to x ((N, C, H, W), or a
#:   product of factors such as (N, C, H, 1) (N, C, 1, W));
#:
#: and for all four the layer outputs ``x * attention(x)`` (:data:`GATING_KINDS`);
#:
#: - ``"residual"``: a term broadcastable to x that the layer adds: it outputs
#:   ``x + attention(x)`` (a global-context or non-local block);
#: - ``"select"``: the selection weights (N, M, C) of a layer that combines M branches with a
#:   softmax over them (Selective Kernel); its output is not a function of x and the weights
#:   alone (it replaces a convolution).
#:
#: The spatial transformer declares ``"stn"`` (it resamples instead; not in this tuple).
MAP_KINDS: tuple[str, ...] = ("se", "channel", "spatial", "mixed", "residual", "select")

#: The kinds whose layer outputs ``x * attention(x)``.
GATING_KINDS: tuple[str, ...] = ("se", "channel", "spatial", "mixed")


def map_kind(module: nn.Module) -> str | None:
    """The attention layers' protocol: the ``map_kind`` a module declares, or None. The model
    scan, ``add_attention`` and the visualisation's capture all ask this one question.

    A class declares it as a class attribute; an instance may override it with a plain attribute
    when a constructor option changes what ``attention(x)`` is (a gather-excite block with a
    global extent gives a channel gate, with a finite one a mixed map)."""
    own = vars(module).get("map_kind")
    return own if isinstance(own, str) else getattr(type(module), "map_kind", None)


def reduced_channels(
    channels: int,
    reduction: float,
    *,
    divisor: int = 1,
    rd_channels: int | None = None,
    round_limit: float = 0.9,
) -> int:
    """C / r, rounded to a multiple of ``divisor`` the way timm's ``make_divisible`` does.

    ``rd_channels`` overrides the computation. ``round_limit``: a result below this fraction of
    C / r gets one ``divisor`` more (timm's default 0.9; its CBAM modules pass 0, never more).
    Raises ``ValueError`` when ``reduction`` is larger than ``channels`` (the bottleneck would
    have less than one channel).
    """
    check_int(channels, "channels", minimum=1)
    if rd_channels is not None:
        return check_int(rd_channels, "rd_channels", minimum=1)
    check_positive(reduction, "reduction")
    if reduction > channels:
        raise ValueError(
            f"reduction: expected a value <= channels ({channels}) so that the bottleneck keeps "
            f"at least one channel, got {reduction}"
        )
    value = channels / reduction
    check_int(divisor, "divisor", minimum=1)
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


def add_bottleneck(layer: nn.Module, channels: int, hidden: int, bias: bool, factory: dict) -> None:
    """Give ``layer`` the bottleneck MLP of SE / CBAM as 1 x 1 convolutions (timm's layout, the
    state_dict keys ``fc1.*`` / ``fc2.*``): ``fc1`` is W_1, b_1 (C -> C/r), ``fc2`` W_2, b_2."""
    layer.fc1 = nn.Conv2d(channels, hidden, 1, bias=bias, **factory)
    layer.fc2 = nn.Conv2d(hidden, channels, 1, bias=bias, **factory)


def bottleneck_weights(layer: nn.Module) -> tuple:
    """(W_1, b_1, W_2, b_2) of a layer built by :func:`add_bottleneck` (biases may be None)."""
    return (layer.fc1.weight, layer.fc1.bias, layer.fc2.weight, layer.fc2.bias)


def check_channels(x: torch.Tensor, channels: int) -> None:
    """The one check of a layer's input that the functions cannot make: x (N, C, H, W) has the
    layer's C channels (everything else is checked by :mod:`visattn.functional`, once)."""
    if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] != channels:
        raise ValueError(f"x: expected {channels} channels, got shape {tuple(x.shape)}")
