"""``torch.library`` custom operators of the fused channel gate (namespace ``visattn::``).

y = x * E(pool(x), *params) with a pluggable excitation E (:mod:`visattn.kernels._excite`,
registered by the formulas: ECA, circular ECA, effective SE, gather-excite's parameter-free
gate, ...): SE's full-size passes of :mod:`visattn.kernels.ops` (``stats_c``, ``apply``;
``bwd_reduce``, ``bwd_apply`` of the backend's :class:`~visattn.kernels._contract.BlockKernels`)
around the (N, C)-sized E, whose backward is autograd on the small tensors inside the backward
operator::

    z = pool_p(x),  s = E(z, *params),  y = x s
    q = sum_p dy x,  (dz, dparams) = vjp of E at (z, params) with cotangent q
    dx = s dy + dz / (H W)                 (avg)
    dx = s dy + [x == z] dz / n            (max, n the tied positions)

Imported by :mod:`visattn.kernels.ops`, which re-exports the two operators.
Tests: ``tests/kernels/test_kernels_channel_gate.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_choice
from .._modes import POOLS
from ._backend import as_dtype
from ._excite import excitation_function, excitation_vjp, run_excitation
from .ops import _f32, _no_autocast, block_kernels

__all__ = ["channel_gate", "channel_gate_backward"]

_CHANNEL_GATE = "(Tensor x, Tensor[] params, str excitation, str squeeze, str impl)"
_CHANNEL_GATE_BACKWARD = (
    "(Tensor dy, Tensor x, Tensor s, Tensor z, Tensor[] params, str excitation, str squeeze, "
    "str impl, bool need_dx)"
)


@torch.library.custom_op(
    "visattn::channel_gate", mutates_args=(), schema=f"{_CHANNEL_GATE} -> (Tensor, Tensor, Tensor)"
)
@_no_autocast
def channel_gate(
    x: Tensor, params: list[Tensor], excitation: str, squeeze: str, impl: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Fused channel gate forward: (y, s, z) with z = pool_p(x) (``squeeze`` ``"avg"`` or
    ``"max"``), s = E(z, *params) of the registered excitation ``excitation``
    (:func:`visattn.kernels._excite.register_excitation`; parameters cast to float32) and
    y = x * s in x's dtype and layout; s and z float32 (N, C), kept for backward. 3 full-size
    passes (read x; read x and write y)."""
    check_choice(squeeze, "squeeze", POOLS)
    k = block_kernels(impl)
    total, peak = k.stats_c(x)
    z = total / (x.shape[2] * x.shape[3]) if squeeze == "avg" else peak
    s = run_excitation(excitation, z, [_f32(p) for p in params])
    return k.apply(x, s), s, z


@channel_gate.register_fake
def _(x, params, excitation, squeeze, impl):
    vec = x.new_empty(x.shape[0], x.shape[1], dtype=torch.float32)
    return torch.empty_like(x), vec, torch.empty_like(vec)


@torch.library.custom_op(
    "visattn::channel_gate_backward",
    mutates_args=(),
    schema=f"{_CHANNEL_GATE_BACKWARD} -> (Tensor, Tensor[])",
)
@_no_autocast
def channel_gate_backward(
    dy: Tensor, x: Tensor, s: Tensor, z: Tensor, params: list[Tensor], excitation: str,
    squeeze: str, impl: str, need_dx: bool,
) -> tuple[Tensor, list[Tensor]]:  # fmt: skip
    """Gradients (dx, [dparams]) of the fused channel gate (dx empty unless ``need_dx``), from
    its saved s, z: q = sum_p dy x (1 pass over dy and x), (dz, dparams) = vjp of E at (z,
    params) with cotangent q (autograd on (N, C)-sized tensors), then one pass
    dx = s dy + dz / (H W) (avg) or s dy + [x == z] dz / n (max, n the tied positions). The
    parameters' gradients have the parameters' dtypes."""
    k = block_kernels(impl)
    is_max = squeeze == "max"
    zmax = z if is_max else None
    q, _, count, _ = k.bwd_reduce(dy, x, s, None, zmax, None)
    dz, dparams = excitation_vjp(excitation, z, [_f32(p) for p in params], q)
    if need_dx:
        cavg = torch.zeros_like(dz) if is_max else dz / (x.shape[2] * x.shape[3])
        cmax = dz / count if is_max else None
        dx = k.bwd_apply(dy, x, s, None, None, None, None, cavg, cmax, zmax)
    else:
        dx = x.new_empty(0)
    return dx, [as_dtype(g, p.dtype) for g, p in zip(dparams, params, strict=True)]


@channel_gate_backward.register_fake
def _(dy, x, s, z, params, excitation, squeeze, impl, need_dx):
    dx = torch.empty_like(x) if need_dx else x.new_empty(0)
    return dx, [torch.empty_like(p) for p in params]


def _channel_gate_setup(ctx, inputs, output):
    x, params, *options = inputs
    _, s, z = output
    ctx.save_for_backward(x, s, z, *params)
    ctx.options = tuple(options)
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(s, z)


def _channel_gate_backward(ctx, dy, *_):
    x, s, z, *params = ctx.saved_tensors
    need_x, need_params = ctx.needs_input_grad[:2]  # a bool, a list of bools (one per param)
    if dy is None:
        return None, [None] * len(params), None, None, None
    dx, dparams = torch.ops.visattn.channel_gate_backward(dy, x, s, z, params, *ctx.options,
                                                          bool(need_x))  # fmt: skip
    dparams = [g if n else None for g, n in zip(dparams, need_params, strict=True)]
    return dx if need_x else None, dparams, None, None, None


channel_gate.register_autograd(_channel_gate_backward, setup_context=_channel_gate_setup)

# ----------------------------------------------------------------------------- FLOP counts
# As the plain formula counts them (see visattn.kernels.ops): E's own matrix products /
# convolutions forward, twice that backward.


def _excitation_flops(x_shape, param_shapes, excitation: str) -> int:
    """What ``FlopCounterMode`` counts for the channel gate's excitation E at these shapes (run
    on meta tensors: E's own matrix products / convolutions, as the plain formula counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    z = torch.empty(x_shape[0], x_shape[1], device="meta")
    params = [torch.empty(shape, device="meta") for shape in param_shapes]
    with FlopCounterMode(display=False) as counter:
        excitation_function(excitation)(z, *params)
    return counter.get_total_flops()


try:
    from torch.utils.flop_counter import register_flop_formula
except ImportError:  # pragma: no cover - old torch
    register_flop_formula = None

if register_flop_formula is not None:

    @register_flop_formula(torch.ops.visattn.channel_gate)
    def _channel_gate_flops(x, params, excitation, *args, out_shape=None, **kwargs) -> int:
        return _excitation_flops(x, params, excitation)

    @register_flop_formula(torch.ops.visattn.channel_gate_backward)
    def _channel_gate_backward_flops(dy, x, s, z, params, excitation, *args, out_shape=None,
                                     **kwargs) -> int:  # fmt: skip
        return 2 * _excitation_flops(x, params, excitation)
