"""The excitation MLP of SE (arXiv:1709.01507, eq. 3) and of CBAM's channel attention
(arXiv:1807.06521, eq. 2) with its hand-derived backward, in PyTorch ops (float32).

Pooled descriptors z_k (N, C), k over the K pools (SE: one; CBAM: avg then max), share the MLP:

    h_k = ReLU(W_1 z_k + b_1)                    (K, N, HID)
    l   = sum_k (W_2 h_k + b_2)                  (N, C)
    s   = gate(l)                                (N, C)    gate: one of visattn._modes.GATES

Backward, given ds = dL/ds (N, C):

    dl   = gate'(l) ds
    dh_k = (dl W_2) [h_k > 0]
    dz_k = dh_k W_1        -> cavg = dz_avg / (H W),  cmax = dz_max / n_c   (what dx needs)
    dW_1 = sum_k dh_k^T z_k,  db_1 = sum_k sum_n dh_k,  dW_2 = dl^T sum_k h_k,  db_2 = K sum_n dl

These (N, C)-sized parts run as PyTorch ops with the C++ kernels (:mod:`visattn.kernels.cpu`);
:mod:`visattn.kernels.triton_kernels` has the same three functions as Triton kernels, so that a
block on CUDA launches three kernels instead of about twenty small ops. Tests:
``tests/kernels/test_kernels_se_cbam.py`` (through the blocks) and
``tests/kernels/test_kernels_triton.py`` (the Triton versions against these).

Below the MLP, the registry of pluggable excitations s = E(z, *params) of the generic channel
gate y = x * E(pool(x), *params) (SE's MLP, ECA's 1-D convolution, effective SE's single FC,
Gather-Excite's parameter-free sigmoid, ...): :func:`register_excitation` (called by the
formulas' modules in :mod:`visattn.functional`), :func:`run_excitation` (the operator's
forward) and :func:`excitation_vjp` (its backward: autograd on the (N, C)-sized excitation, so
no mechanism hand-writes one). Tests: ``tests/kernels/test_kernels_channel_gate.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_choice
from .._modes import GATE_FUNCTIONS, GATES

__all__ = ["GATES", "Excitation", "as_gate", "excitation_function", "excitation_names", "excitation_vjp",
           "excite", "excite_backward", "excite_wgrad", "register_excitation",
           "run_excitation"]  # fmt: skip

# GATES (re-exported here for older imports) and the gate functions are visattn._modes'.

#: dL/dl of each gate s = gate(l) of visattn._modes.GATES, given s and ds = dL/ds (and the
#: logits l, read by hard_sigmoid and relu only); tests/kernels/test_kernels_contract.py checks
#: that every gate has one.
_GATE_GRADS: dict[str, Callable[[Tensor | None, Tensor, Tensor], Tensor]] = {
    "sigmoid": lambda l, s, ds: ds * s * (1 - s),
    "hard_sigmoid": lambda l, s, ds: ds * ((l > -3) & (l < 3)).float() / 6,
    "tanh": lambda l, s, ds: ds * (1 - s * s),
    "relu": lambda l, s, ds: ds * (l > 0).float(),
}


def _gate(name: str, l: Tensor) -> Tensor:
    return GATE_FUNCTIONS[check_choice(name, "gate", GATES)](l)


def _gate_grad(name: str, l: Tensor | None, s: Tensor, ds: Tensor) -> Tensor:
    return _GATE_GRADS[check_choice(name, "gate", GATES)](l, s, ds)


def excite(
    z: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None, gate: str
) -> tuple[Tensor, Tensor, Tensor]:
    """(h, l, s) from z (K, N, C), W_1 (HID, C), W_2 (C, HID), all float32."""
    h = torch.relu(F.linear(z, w1, b1))
    out = F.linear(h, w2, b2)
    l = out[0] if out.shape[0] == 1 else out.sum(0)
    return h, l, _gate(gate, l)


def excite_backward(
    ds: Tensor,
    l: Tensor | None,
    s: Tensor,
    h: Tensor,
    w1: Tensor,
    w2: Tensor,
    count: Tensor | None,
    positions: int,
    use_avg: bool,
    use_max: bool,
    gate: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """(dl, dh, cavg, cmax): cavg = dz_avg / positions (zeros without an avg pool), cmax =
    dz_max / count (None without a max pool); the avg pool is k = 0, the max pool k = K - 1.
    The logits l are read by the hard_sigmoid and relu gates only (None is fine otherwise)."""
    dl = _gate_grad(gate, l, s, ds)
    dh = (dl @ w2).unsqueeze(0) * (h > 0).float()
    dz = dh @ w1
    cavg = dz[0] / positions if use_avg else torch.zeros_like(dl)
    cmax = dz[-1] / count if use_max else None
    return dl, dh, cavg, cmax


def excite_wgrad(
    dl: Tensor, dh: Tensor, z: Tensor, h: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(dW_1 (HID, C), db_1 (HID,), dW_2 (C, HID), db_2 (C,)), float32."""
    dh2, z2 = dh.flatten(0, 1), z.flatten(0, 1)  # (K N, HID), (K N, C)
    dw2 = dl.t() @ (h[0] if h.shape[0] == 1 else h.sum(0))
    db2 = dl.sum(0) if z.shape[0] == 1 else dl.sum(0) * z.shape[0]
    return dh2.t() @ z2, dh2.sum(0), dw2, db2


# ----------------------------------------------------------------------------- pluggable excitations
# The generic channel gate y = x * E(pool(x), *params) (the operator visattn::channel_gate of
# visattn.kernels.ops) keeps the full-size passes of the fused SE block and takes its (N, C)
# excitation E from this registry. Each mechanism registers its formula once, from its module in
# visattn.functional (the formula's single home; the kernels import nothing from there); E's
# backward comes from autograd on the small tensors, so no mechanism writes one by hand.

#: s = E(z, *params): z float32 (N, C), the parameters float32; s (N, C) (or (N, C, 1, 1)).
Excitation = Callable[..., Tensor]

_EXCITATIONS: dict[str, Excitation] = {}


def register_excitation(name: str, fn: Excitation) -> Excitation:
    """Register the excitation ``fn`` under ``name`` for :func:`visattn.functional.channel_gate`
    and the operator ``visattn::channel_gate``; returns ``fn``.

    ``fn(z, *params)`` maps the pooled descriptor z, float32 (N, C), and the mechanism's
    parameters (tensors, cast to float32 by the operator) to the gate s, (N, C) or (N, C, 1, 1),
    with differentiable PyTorch ops (the operator's backward differentiates it with autograd).
    Options that are not tensors (ECA's circular padding, a gate's name) are part of the name:
    register one name per variant. Registering a name again with another function is an error.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty str, got {name!r}")
    if not callable(fn):
        raise TypeError(f"fn: expected a callable excitation E(z, *params), got {fn!r}")
    old = _EXCITATIONS.setdefault(name, fn)
    if old is not fn:
        raise ValueError(f"name: excitation {name!r} is already registered, to {old!r}")
    return fn


def excitation_names() -> tuple[str, ...]:
    """The registered excitations' names, sorted."""
    return tuple(sorted(_EXCITATIONS))


def excitation_function(name: str) -> Excitation:
    """The function registered as ``name`` (ValueError naming the registered ones otherwise)."""
    if name not in _EXCITATIONS:
        check_choice(name, "excitation", excitation_names())
    return _EXCITATIONS[name]


def as_gate(name: str, s: Tensor, z: Tensor) -> Tensor:
    """The excitation ``name``'s output s reshaped like z, (N, C) (from (N, C) or (N, C, 1, 1)),
    or a ValueError naming the excitation."""
    trailing_ones = s.dim() == 4 and s.shape[2:] == (1, 1) and s.shape[:2] == z.shape
    if s.shape != z.shape and not trailing_ones:
        raise ValueError(
            f"excitation {name!r}: expected a gate of shape {tuple(z.shape)} (or with two "
            f"trailing 1s) for z of shape {tuple(z.shape)}, got shape {tuple(s.shape)}"
        )
    return s.reshape(z.shape)


def run_excitation(name: str, z: Tensor, params: Sequence[Tensor]) -> Tensor:
    """s = E(z, *params) of the excitation ``name``, float32 (N, C), contiguous."""
    return as_gate(name, excitation_function(name)(z, *params), z).float().contiguous()


@contextlib.contextmanager
def _autograd_on() -> Iterator[None]:
    """Autograd recording inside an operator's implementation.

    A custom operator's implementation runs below the dispatcher's autograd keys (they are in
    the thread's excluded set there, and grad mode is off in a backward pass): tensors made
    inside record no graph. This lifts that exclusion and enables grad mode for the block, so
    that ``torch.autograd.grad`` differentiates the small excitation there. ``torch.func.vjp``
    would do it too, but its wrapped tensors break under ``torch.library.opcheck``'s schema
    check (a tensor without storage)."""
    keys = torch._C.DispatchKey
    with (
        torch._C._SetExcludeDispatchKeyGuard(keys.AutogradFunctionality, False),
        torch._C._SetExcludeDispatchKeyGuard(keys.AutogradOther, False),
        torch.enable_grad(),
    ):
        yield


def excitation_vjp(
    name: str, z: Tensor, params: Sequence[Tensor], ds: Tensor
) -> tuple[Tensor, list[Tensor]]:
    """(dz, dparams) of s = E(z, *params) for the cotangent ds = dL/ds (N, C): autograd on the
    (N, C)-sized excitation, recomputed from z (cheaper than keeping its graph across two
    operators). Gradients of parameters that E does not use are zeros; all float32."""
    fn = excitation_function(name)
    with _autograd_on():
        leaves = [t.detach().requires_grad_(True) for t in (z, *params)]
        s = as_gate(name, fn(*leaves), z)
        if s.requires_grad:
            grads = torch.autograd.grad(s, leaves, ds.to(s.dtype), allow_unused=True)
        else:  # a gate that depends on neither z nor a parameter
            grads = (None,) * len(leaves)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves, strict=True)]
    return grads[0], grads[1:]
