"""Capture the attention of SE, CBAM and Spatial Transformer layers through forward hooks.

What is recorded, per layer (keyed by the layer's qualified name in ``model.named_modules()``):

- ``SqueezeExcite`` (Hu et al., arXiv:1709.01507, eq. 3): the excitation
  s = sigma(W_2 ReLU(W_1 z + b_1) + b_2), shape (N, C): the layer's ``excitation``.
- CBAM ``ChannelAttention`` (Woo et al., arXiv:1807.06521, eq. 2): M_c = sigma(sum_p MLP(pool_p F)),
  shape (N, C): the layer's ``attention``.
- CBAM ``SpatialAttention`` (eq. 3): M_s = sigma(f^{k x k}([...])), shape (N, 1, H, W): the
  layer's ``attention``.
- ``CBAM``: M_c and M_s as its order applies them (eq. 1, Table 3), from
  :func:`visattn.functional.cbam_arrange` with ``return_maps=True``, recorded under the names of
  its ``channel`` and ``spatial`` parts (unless a subclass called the parts, which record
  themselves).
- ``SpatialTransformer`` (Jaderberg et al., arXiv:1506.02025, §3.2): theta (N, P) and the sampling
  grid (N, H_out, W_out, 2) in normalised [-1, 1] (x, y) coordinates: input and output of the
  layer's ``grid_generator``; also the layer's input U and output V, to draw them.

Any other layer is captured the same way when it declares a ``map_kind`` (one of
:data:`visattn.layers._common.MAP_KINDS`: ``"se"``, ``"channel"``, ``"spatial"``, ``"mixed"``,
``"residual"``, ``"select"``) and gives its map as ``attention(x)``: that is all a new mechanism
needs (``docs/adding-a-mechanism.md``). It is recorded under the field of its kind.

The fused SE / CBAM kernels (:mod:`visattn.kernels`) never materialise the maps, so a forward
hook on each SE / CBAM layer recomputes them from the layer's input with the formula functions
of :mod:`visattn.functional` (through the layers' methods: no formula is written here), without
autograd and restoring any BatchNorm running statistics the recomputation touched. No global
state: all hooks are removed when the recorder closes.

Tests: ``tests/viz/test_viz_capture.py``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._checks import check_tensor
from ..functional import cbam_arrange
from ..layers import CBAM, SpatialTransformer
from ..layers._common import map_kind
from ..models.scan import attention_modules

__all__ = ["AttentionMaps", "AttentionRecorder", "attention_layers", "capture"]


@dataclass
class AttentionMaps:
    """Raw attention tensors of one or more forward passes (detached, on the CPU, float32).

    Attributes:
        output: the model's output for the captured inputs (e.g. logits (N, K)), or ``None``.
        se: SE layer name -> excitation s, (N, C).
        channel: CBAM channel-attention name -> M_c, (N, C).
        spatial: CBAM spatial-attention name -> M_s, (N, 1, H, W).
        mixed: name -> a map over channels and positions, (N, C, H, W) (expanded to the layer's
            input shape when ``attention(x)`` returns factors).
        residual: name -> the term the layer adds to its input, (N, C, H, W) (expanded).
        select: name -> selection weights over M branches, (N, M, C).
        theta: spatial-transformer name -> theta, (N, P).
        grid: spatial-transformer name -> sampling grid, (N, H_out, W_out, 2), (x, y) in [-1, 1].
        stn_input: spatial-transformer name -> its input U, (N, C, H, W).
        stn_output: spatial-transformer name -> its output V, (N, C, H_out, W_out).
    """

    output: torch.Tensor | None = None
    se: dict[str, torch.Tensor] = field(default_factory=dict)
    channel: dict[str, torch.Tensor] = field(default_factory=dict)
    spatial: dict[str, torch.Tensor] = field(default_factory=dict)
    mixed: dict[str, torch.Tensor] = field(default_factory=dict)
    residual: dict[str, torch.Tensor] = field(default_factory=dict)
    select: dict[str, torch.Tensor] = field(default_factory=dict)
    theta: dict[str, torch.Tensor] = field(default_factory=dict)
    grid: dict[str, torch.Tensor] = field(default_factory=dict)
    stn_input: dict[str, torch.Tensor] = field(default_factory=dict)
    stn_output: dict[str, torch.Tensor] = field(default_factory=dict)

    def is_empty(self) -> bool:
        """True when the model has no attention layer (nothing was recorded)."""
        maps = (self.se, self.channel, self.spatial, self.mixed, self.residual, self.select)
        return not (any(maps) or self.theta)


def attention_layers(model: nn.Module) -> dict[str, str]:
    """Name -> kind (one of :data:`visattn.layers._common.MAP_KINDS`, or ``"stn"``) of the
    attention layers: every module that declares one of these as its ``map_kind`` (a new
    mechanism is captured by declaring it and giving its map as ``attention(x)``)."""
    return {
        name: map_kind(m)
        for name, m in attention_modules(model, outermost=False).items()
        if map_kind(m) in _KINDS
    }


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().cpu()


class AttentionRecorder:
    """Context manager that records attention tensors of every forward pass of ``model``.

    >>> with AttentionRecorder(model) as rec:
    ...     model(x1); model(x2)
    >>> rec.maps().se["layer1.0.se"].shape   # (N1 + N2, C)

    Batches are concatenated along N. The hooks are removed on exit (or by :meth:`close`).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.kinds = attention_layers(model)
        self._store: dict[str, dict[str, list[torch.Tensor]]] = {
            k: defaultdict(list) for k in (*_MAPS, "theta", "grid", "stn_input", "stn_output")
        }
        self._handles: list[Any] = []

    # -- hook installation -------------------------------------------------------------
    def __enter__(self) -> AttentionRecorder:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Install the hooks (idempotent)."""
        if self._handles:
            return
        modules = dict(self.model.named_modules())
        for name, kind in self.kinds.items():
            if kind == "stn":
                self._hook_stn(name, modules[name])
            else:
                self._hook_map(name, modules[name], kind)
        for name, layer in modules.items():
            if isinstance(layer, CBAM):
                self._hook_cbam(name, layer)

    def close(self) -> None:
        """Remove every hook."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook_map(self, name: str, layer: nn.Module, kind: str) -> None:
        """Record ``attention(x)`` of a layer that declares a map kind (an SE layer, a CBAM part
        called as a module, any other mechanism)."""
        records = self._store[kind][name]
        value = _MAPS[kind]

        def post(_m: nn.Module, args: tuple, _out: Any) -> None:
            if args and isinstance(args[0], torch.Tensor):
                records.append(_cpu(_recompute(layer, lambda x: value(layer, x), args[0])))

        self._handles.append(layer.register_forward_hook(post))

    def _hook_cbam(self, name: str, layer: CBAM) -> None:
        """M_c and M_s of a CBAM block, which calls neither part as a module."""
        prefix = f"{name}." if name else ""
        channel = self._store["channel"][prefix + "channel"]
        spatial = self._store["spatial"][prefix + "spatial"]
        count = {"channel": 0, "spatial": 0}

        def pre(_m: nn.Module, _args: tuple) -> None:
            count.update(channel=len(channel), spatial=len(spatial))

        def maps(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            parts = (layer.channel.attention, layer.spatial.attention)
            return cbam_arrange(x, *parts, layer.order, return_maps=True)

        def post(_m: nn.Module, args: tuple, _out: Any) -> None:
            if len(channel) != count["channel"] or len(spatial) != count["spatial"]:
                return  # the parts ran as modules and were recorded by their own hooks
            if args and isinstance(args[0], torch.Tensor):
                _, m_c, m_s = _recompute(layer, maps, args[0])
                channel.append(_cpu(m_c).flatten(1))
                spatial.append(_cpu(m_s))

        self._handles.append(layer.register_forward_pre_hook(pre))
        self._handles.append(layer.register_forward_hook(post))

    def _hook_stn(self, name: str, layer: SpatialTransformer) -> None:
        thetas = self._store["theta"][name]
        grids = self._store["grid"][name]

        def on_grid(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            thetas.append(_cpu(args[0]))
            grids.append(_cpu(out))

        self._handles.append(layer.grid_generator.register_forward_hook(on_grid))
        inputs, outputs = self._store["stn_input"][name], self._store["stn_output"][name]

        def on_layer(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            inputs.append(_cpu(args[0]))
            outputs.append(_cpu(out))

        self._handles.append(layer.register_forward_hook(on_layer))

    # -- results -----------------------------------------------------------------------
    def maps(self, output: torch.Tensor | None = None) -> AttentionMaps:
        """Everything recorded so far, batches concatenated along N."""
        res = AttentionMaps(output=None if output is None else _cpu(output))
        for store, per_layer in self._store.items():
            target = getattr(res, store)
            for name, items in per_layer.items():
                if items:
                    target[name] = torch.cat(items, 0)
        return res

    def clear(self) -> None:
        """Forget what was recorded (hooks stay installed)."""
        for per_layer in self._store.values():
            for items in per_layer.values():
                items.clear()


def _expanded(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return layer.attention(x).expand_as(x)


#: How each kind of layer gives its map from its input x (formulas: visattn.functional): the
#: layer's ``attention(x)``, gates flattened to (N, C), maps broadcast to x's shape.
_MAPS: dict[str, Callable[[Any, torch.Tensor], torch.Tensor]] = {
    "se": lambda layer, x: layer.attention(x).flatten(1),
    "channel": lambda layer, x: layer.attention(x).flatten(1),
    "spatial": lambda layer, x: layer.attention(x),
    "mixed": _expanded,
    "residual": _expanded,
    "select": lambda layer, x: layer.attention(x),
}
_KINDS = (*_MAPS, "stn")


def _recompute(layer: nn.Module, fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Any:
    """fn(x) without autograd, leaving ``layer``'s buffers (BatchNorm running statistics in
    training mode) as the forward left them."""
    buffers = [b.clone() for b in layer.buffers()]
    with torch.no_grad():
        out = fn(x)
        for b, saved in zip(layer.buffers(), buffers, strict=True):
            b.copy_(saved)
    return out


def capture(model: nn.Module, x: torch.Tensor, *, grad: bool = False) -> AttentionMaps:
    """Run ``model(x)`` once and return its attention tensors per layer (see :class:`AttentionMaps`).

    Args:
        model: any module containing visattn ``SqueezeExcite``, ``CBAM`` (its ``ChannelAttention``
            / ``SpatialAttention``) or ``SpatialTransformer`` layers; its mode (train / eval) is
            left as it is, so call ``model.eval()`` first for inference statistics.
        x: input batch (N, C, H, W).
        grad: run with autograd enabled (default: under ``torch.no_grad()``).

    Returns:
        :class:`AttentionMaps` with ``output`` = ``model(x)`` and one tensor per attention layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    check_tensor(x, "x", ndim=4, layout="(N, C, H, W)")
    with AttentionRecorder(model) as rec, torch.set_grad_enabled(grad):
        out = model(x)
    return rec.maps(out if isinstance(out, torch.Tensor) else None)
