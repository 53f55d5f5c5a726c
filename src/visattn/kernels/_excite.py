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
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_choice
from .._modes import GATE_FUNCTIONS, GATES

__all__ = ["GATES", "excite", "excite_backward", "excite_wgrad"]

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
