"""Triton kernels of the excitation MLP of SE (Hu et al., arXiv:1709.01507, eq. 3) and of CBAM's
channel attention (Woo et al., arXiv:1807.06521, eq. 2), forward and hand-derived backward.

The formulas, in PyTorch ops, are :mod:`visattn.kernels._excite` (the CPU backend's):

    h_k = ReLU(W_1 z_k + b_1),  l = sum_k (W_2 h_k + b_2),  s = gate(l)
    dl = gate'(l) ds,  dh_k = (dl W_2) [h_k > 0],  dz_k = dh_k W_1
    dW_1 = sum_k dh_k^T z_k,  db_1 = sum_k sum_n dh_k,  dW_2 = dl^T sum_k h_k,  db_2 = K sum_n dl

The (N, C)-sized part of SE / CBAM: three launches (``excite``, ``excite_backward``,
``excite_wgrad``) instead of about twenty small PyTorch ops per block, forward + backward. Each
program of ``_excite_kernel`` / ``_excite_bwd_kernel`` takes BLOCK_N samples and runs the two
matrix products in phases; a phase reads what the previous one stored (h, dl, dh in global
memory), hence the barriers. float32 products (tl.dot with IEEE precision: no TF32). No atomics:
deterministic. The ``GATE`` constant is the gate's id in :data:`visattn._modes.GATE_IDS`.

Tests: ``tests/kernels/test_kernels_se_cbam.py::test_triton_excitation_kernels_match_their_pytorch_formulas``
and ``tests/kernels/test_kernels_triton.py`` (interpreter),
``tests/kernels/test_kernels_triton_compile.py`` (sm_90 compile).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._modes import GATE_IDS
from ._triton_common import BLOCK_H, BLOCK_K, BLOCK_N

__all__ = ["excite", "excite_backward", "excite_wgrad"]

# The gates' ids as compile-time constants of the kernels (visattn._modes.GATE_IDS).
SIGMOID = tl.constexpr(GATE_IDS["sigmoid"])
HARD_SIGMOID = tl.constexpr(GATE_IDS["hard_sigmoid"])
TANH = tl.constexpr(GATE_IDS["tanh"])
RELU = tl.constexpr(GATE_IDS["relu"])


@triton.jit
def _gate_fwd(l, GATE: tl.constexpr):
    if GATE == SIGMOID:
        out = 1.0 / (1.0 + tl.exp(-l))
    elif GATE == HARD_SIGMOID:
        out = tl.minimum(tl.maximum(l + 3.0, 0.0), 6.0) / 6.0
    elif GATE == TANH:
        out = 2.0 / (1.0 + tl.exp(-2.0 * l)) - 1.0
    else:  # RELU
        out = tl.maximum(l, 0.0)
    return out


@triton.jit
def _gate_bwd(l, s, ds, GATE: tl.constexpr):
    if GATE == SIGMOID:
        out = ds * s * (1.0 - s)
    elif GATE == HARD_SIGMOID:
        out = tl.where((l > -3.0) & (l < 3.0), ds / 6.0, 0.0)
    elif GATE == TANH:
        out = ds * (1.0 - s * s)
    else:  # RELU
        out = tl.where(l > 0.0, ds, 0.0)
    return out


@triton.jit
def _rows_dot(a_ptr, ns, nm, D, b_ptr, os, om, SO, SD, BLOCK_N: tl.constexpr,
              BLOCK_O: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    """acc[i, o] = sum_d A[ns_i, d] B[os_o, d]: rows ns of the row-major A (N, D) at a_ptr times
    B, whose element (o, d) is at b_ptr + o SO + d SD (so W or W^T alike); a float32
    (BLOCK_N, BLOCK_O) tile from IEEE float32 products."""
    acc = tl.zeros([BLOCK_N, BLOCK_O], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        dm = ds < D
        at = tl.load(a_ptr + ns[:, None] * D + ds[None, :], mask=nm[:, None] & dm[None, :],
                     other=0.0)  # fmt: skip
        bt = tl.load(b_ptr + os[None, :] * SO + ds[:, None] * SD, mask=dm[:, None] & om[None, :],
                     other=0.0)  # fmt: skip
        acc += tl.dot(at, bt, input_precision="ieee")
    return acc


@triton.jit
def _excite_kernel(z_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, h_ptr, l_ptr, s_ptr, N, C, HID,
                   K: tl.constexpr, GATE: tl.constexpr, HAS_B1: tl.constexpr,
                   HAS_B2: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
                   BLOCK_K: tl.constexpr):  # fmt: skip
    ns = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = ns < N
    # phase 1: h_k = ReLU(z_k W_1^T + b_1), (BLOCK_N, HID) per pool, stored in h (K, N, HID)
    for k in tl.static_range(K):
        for j0 in range(0, HID, BLOCK_H):
            js = j0 + tl.arange(0, BLOCK_H)
            jm = js < HID
            acc = _rows_dot(z_ptr + k * N * C, ns, nm, C, w1_ptr, js, jm, C, 1, BLOCK_N, BLOCK_H,
                            BLOCK_K)  # fmt: skip
            if HAS_B1:
                acc += tl.load(b1_ptr + js, mask=jm, other=0.0)[None, :]
            tl.store(h_ptr + (k * N + ns[:, None]) * HID + js[None, :], tl.maximum(acc, 0.0),
                     mask=nm[:, None] & jm[None, :])  # fmt: skip
    tl.debug_barrier()
    # phase 2: l = sum_k (h_k W_2^T + b_2), s = gate(l)
    for c0 in range(0, C, BLOCK_K):
        cs = c0 + tl.arange(0, BLOCK_K)
        cm = cs < C
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k in tl.static_range(K):
            acc += _rows_dot(h_ptr + k * N * HID, ns, nm, HID, w2_ptr, cs, cm, HID, 1, BLOCK_N,
                             BLOCK_K, BLOCK_H)  # fmt: skip
        if HAS_B2:
            acc += K * tl.load(b2_ptr + cs, mask=cm, other=0.0)[None, :]
        out = ns[:, None] * C + cs[None, :]
        m = nm[:, None] & cm[None, :]
        tl.store(l_ptr + out, acc, mask=m)
        tl.store(s_ptr + out, _gate_fwd(acc, GATE), mask=m)


def _mlp_grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK_N),)


def excite(
    z: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor,
    b2: torch.Tensor | None,
    gate: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as :func:`visattn.kernels._excite.excite`: (h, l, s)."""
    kk, n, c = z.shape
    hid = w1.shape[0]
    z, w1, w2 = z.contiguous(), w1.contiguous(), w2.contiguous()
    h = torch.empty(kk, n, hid, dtype=torch.float32, device=z.device)
    l = torch.empty(n, c, dtype=torch.float32, device=z.device)
    s = torch.empty_like(l)
    _excite_kernel[_mlp_grid(n)](
        z, w1, b1 if b1 is not None else w1, w2, b2 if b2 is not None else w2, h, l, s, n, c,
        hid, K=kk, GATE=GATE_IDS[gate], HAS_B1=b1 is not None, HAS_B2=b2 is not None,
        BLOCK_N=BLOCK_N, BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K,
    )  # fmt: skip
    return h, l, s


@triton.jit
def _excite_bwd_kernel(ds_ptr, l_ptr, s_ptr, h_ptr, w1_ptr, w2_ptr, cnt_ptr, dl_ptr, dh_ptr,
                       cavg_ptr, cmax_ptr, N, C, HID, inv_p, K: tl.constexpr,
                       GATE: tl.constexpr, HAS_AVG: tl.constexpr, HAS_MAX: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
                       BLOCK_K: tl.constexpr):  # fmt: skip
    ns = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = ns < N
    # phase 1: dl = gate'(l) ds
    for c0 in range(0, C, BLOCK_K):
        cs = c0 + tl.arange(0, BLOCK_K)
        m = nm[:, None] & (cs < C)[None, :]
        off = ns[:, None] * C + cs[None, :]
        sv = tl.load(s_ptr + off, mask=m, other=0.0)
        if GATE == HARD_SIGMOID or GATE == RELU:  # their derivatives read the logits
            lv = tl.load(l_ptr + off, mask=m, other=0.0)
        else:
            lv = sv
        dsv = tl.load(ds_ptr + off, mask=m, other=0.0)
        tl.store(dl_ptr + off, _gate_bwd(lv, sv, dsv, GATE), mask=m)
    tl.debug_barrier()
    # phase 2: dh_k = (dl W_2) [h_k > 0]
    for j0 in range(0, HID, BLOCK_H):
        js = j0 + tl.arange(0, BLOCK_H)
        jm = js < HID
        acc = _rows_dot(dl_ptr, ns, nm, C, w2_ptr, js, jm, 1, HID, BLOCK_N, BLOCK_H, BLOCK_K)
        m = nm[:, None] & jm[None, :]
        for k in tl.static_range(K):
            off = (k * N + ns[:, None]) * HID + js[None, :]
            hv = tl.load(h_ptr + off, mask=m, other=0.0)
            tl.store(dh_ptr + off, tl.where(hv > 0.0, acc, 0.0), mask=m)
    tl.debug_barrier()
    # phase 3: dz_k = dh_k W_1 -> cavg = dz_avg / P (k = 0), cmax = dz_max / count (k = K - 1)
    for c0 in range(0, C, BLOCK_K):
        cs = c0 + tl.arange(0, BLOCK_K)
        cm = cs < C
        m = nm[:, None] & cm[None, :]
        off = ns[:, None] * C + cs[None, :]
        for k in tl.static_range(K):
            acc = _rows_dot(dh_ptr + k * N * HID, ns, nm, HID, w1_ptr, cs, cm, 1, C, BLOCK_N,
                            BLOCK_K, BLOCK_H)  # fmt: skip
            if HAS_AVG and k == 0:
                tl.store(cavg_ptr + off, acc * inv_p, mask=m)
            if HAS_MAX and k == K - 1:
                cnt = tl.load(cnt_ptr + off, mask=m, other=1.0)
                tl.store(cmax_ptr + off, acc / cnt, mask=m)
        if not HAS_AVG:
            tl.store(cavg_ptr + off, tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32), mask=m)


def excite_backward(
    ds: torch.Tensor,
    l: torch.Tensor | None,
    s: torch.Tensor,
    h: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    count: torch.Tensor | None,
    positions: int,
    use_avg: bool,
    use_max: bool,
    gate: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Same contract as :func:`visattn.kernels._excite.excite_backward`: (dl, dh, cavg, cmax)."""
    kk, n, hid = h.shape
    c = s.shape[1]
    ds, s, h = ds.contiguous(), s.contiguous(), h.contiguous()
    l = l.contiguous() if l is not None else s  # not read by the sigmoid / tanh gates
    w1, w2 = w1.contiguous(), w2.contiguous()
    dl = torch.empty_like(s)
    dh = torch.empty_like(h)
    cavg = torch.empty_like(s)
    cmax = torch.empty_like(s) if use_max else None
    cnt = count.contiguous() if use_max else s
    _excite_bwd_kernel[_mlp_grid(n)](
        ds, l, s, h, w1, w2, cnt, dl, dh, cavg, cmax if cmax is not None else cavg, n, c, hid,
        1.0 / positions, K=kk, GATE=GATE_IDS[gate], HAS_AVG=use_avg, HAS_MAX=use_max,
        BLOCK_N=BLOCK_N, BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K,
    )  # fmt: skip
    return dl, dh, cavg, cmax


@triton.jit
def _excite_wgrad_kernel(dl_ptr, dh_ptr, z_ptr, h_ptr, dw1_ptr, db1_ptr, dw2_ptr, db2_ptr, N, C,
                         HID, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
                         BLOCK_K: tl.constexpr):  # fmt: skip
    js = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    cs = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    jm = js < HID
    cm = cs < C
    dw1 = tl.zeros([BLOCK_H, BLOCK_K], dtype=tl.float32)  # sum_k dh_k^T z_k
    dw2 = tl.zeros([BLOCK_K, BLOCK_H], dtype=tl.float32)  # dl^T sum_k h_k
    db1 = tl.zeros([BLOCK_H, BLOCK_N], dtype=tl.float32)  # reduced over samples at the end
    db2 = tl.zeros([BLOCK_K, BLOCK_N], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        nm = ns < N
        # dl^T: a (BLOCK_K, BLOCK_N) tile
        dlt = tl.load(dl_ptr + ns[None, :] * C + cs[:, None], mask=cm[:, None] & nm[None, :],
                      other=0.0)  # fmt: skip
        db2 += dlt
        hsum = tl.zeros([BLOCK_N, BLOCK_H], dtype=tl.float32)
        for k in tl.static_range(K):
            hk = (k * N + ns[:, None]) * HID + js[None, :]
            hsum += tl.load(h_ptr + hk, mask=nm[:, None] & jm[None, :], other=0.0)
            # dh_k^T: a (BLOCK_H, BLOCK_N) tile
            dht = tl.load(dh_ptr + (k * N + ns[None, :]) * HID + js[:, None],
                          mask=jm[:, None] & nm[None, :], other=0.0)  # fmt: skip
            # z_k: a (BLOCK_N, BLOCK_K) tile
            zt = tl.load(z_ptr + (k * N + ns[:, None]) * C + cs[None, :],
                         mask=nm[:, None] & cm[None, :], other=0.0)  # fmt: skip
            dw1 += tl.dot(dht, zt, input_precision="ieee")
            db1 += dht
        dw2 += tl.dot(dlt, hsum, input_precision="ieee")
    tl.store(dw1_ptr + js[:, None] * C + cs[None, :], dw1, mask=jm[:, None] & cm[None, :])
    tl.store(dw2_ptr + cs[:, None] * HID + js[None, :], dw2, mask=cm[:, None] & jm[None, :])
    if tl.program_id(1) == 0:
        tl.store(db1_ptr + js, tl.sum(db1, 1), mask=jm)
    if tl.program_id(0) == 0:
        tl.store(db2_ptr + cs, tl.sum(db2, 1) * K, mask=cm)


def excite_wgrad(
    dl: torch.Tensor, dh: torch.Tensor, z: torch.Tensor, h: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as :func:`visattn.kernels._excite.excite_wgrad`: (dW_1, db_1, dW_2, db_2)."""
    kk, n, hid = h.shape
    c = dl.shape[1]
    dl, dh, z, h = dl.contiguous(), dh.contiguous(), z.contiguous(), h.contiguous()
    dev = dl.device
    dw1 = torch.empty(hid, c, dtype=torch.float32, device=dev)
    dw2 = torch.empty(c, hid, dtype=torch.float32, device=dev)
    db1 = torch.empty(hid, dtype=torch.float32, device=dev)
    db2 = torch.empty(c, dtype=torch.float32, device=dev)
    grid = (triton.cdiv(hid, BLOCK_H), triton.cdiv(c, BLOCK_K))
    _excite_wgrad_kernel[grid](dl, dh, z, h, dw1, db1, dw2, db2, n, c, hid, K=kk, BLOCK_N=BLOCK_N,
                               BLOCK_H=BLOCK_H, BLOCK_K=BLOCK_K)  # fmt: skip
    return dw1, db1, dw2, db2
