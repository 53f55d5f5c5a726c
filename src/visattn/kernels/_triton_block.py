"""Triton kernels of the SE / CBAM blocks' full-size passes (Hu et al., arXiv:1709.01507;
Woo et al., arXiv:1807.06521): the pools, the product, and the backward's reductions.

Forward: ``stats_c`` (sum_p x, max_p x: SE's squeeze, eq. 2, and CBAM's channel pools, eq. 2),
``stats_p`` (sum_c a_c x, max_c a_c x: CBAM's spatial pools, eq. 3) and ``apply``
(y = x a_c [b_p], SE eq. 4 / CBAM eq. 1). Backward (the formulas in
:mod:`visattn.kernels.ops`): ``bwd_reduce`` / ``bwd_reduce_norm`` (the sums over positions and
channels of dy), ``bwd_channel`` / ``bwd_channel_norm`` (the spatial map's gradient brought back
to the channels) and ``bwd_apply`` (dx). Each function keeps the contract of
:class:`visattn.kernels._contract.BlockKernels` and mirrors :mod:`visattn.kernels.cpu` one for
one. Reductions that run across tiles write per-tile partial sums that ``torch.sum`` adds
afterwards: no atomics, deterministic.

Tests: ``tests/kernels/test_kernels_triton.py`` (these against the reference formulas, under the
interpreter), ``tests/kernels/test_kernels_triton_compile.py`` (sm_90 compile),
``tests/kernels/test_kernels_contract.py`` (the signatures).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._backend import as_dtype, flat_f32
from ._triton_common import bn_x, layout, like, norm_rows, strides, tiles

__all__ = [
    "apply",
    "bwd_apply",
    "bwd_channel",
    "bwd_channel_norm",
    "bwd_reduce",
    "bwd_reduce_norm",
    "stats_c",
    "stats_p",
]


@triton.jit
def _stats_c_kernel(x_ptr, nrm_ptr, sum_ptr, max_ptr, C, P, sxn, sxc, sxp, AFF: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    n = tl.program_id(0)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = cs < C
    base = x_ptr + n.to(tl.int64) * sxn
    if AFF:
        al, be = norm_rows(nrm_ptr, cs, cm, C)
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    mx = tl.full([BLOCK_C, BLOCK_P], float("-inf"), dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        m = cm[:, None] & (ps < P)[None, :]
        v = tl.load(base + cs[:, None] * sxc + ps[None, :] * sxp, mask=m, other=0.0).to(tl.float32)
        if AFF:
            v = tl.where(m, bn_x(v, al[:, None], be[:, None], x_ptr.dtype.element_ty), 0.0)
        acc += v
        mx = tl.maximum(mx, tl.where(m, v, float("-inf")))
    tl.store(sum_ptr + n * C + cs, tl.sum(acc, 1), mask=cm)
    tl.store(max_ptr + n * C + cs, tl.max(mx, 1), mask=cm)


def stats_c(x: torch.Tensor, norm: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`visattn.kernels.cpu.stats_c`."""
    x = layout(x)
    n, c, h, w = x.shape
    norm = flat_f32(norm)
    s = torch.empty(n, c, dtype=torch.float32, device=x.device)
    m = torch.empty_like(s)
    bc, bp = tiles(h * w)
    _stats_c_kernel[(n, triton.cdiv(c, bc))](x, norm if norm is not None else s, s, m, c, h * w,
                                             *strides(x), AFF=norm is not None, BLOCK_C=bc,
                                             BLOCK_P=bp)  # fmt: skip
    return s, m


@triton.jit
def _apply_kernel(x_ptr, y_ptr, a_ptr, b_ptr, nrm_ptr, C, P, sxn, sxc, sxp, syn, syc, syp,
                  HAS_B: tl.constexpr, AFF: tl.constexpr, BLOCK_C: tl.constexpr,
                  BLOCK_P: tl.constexpr):  # fmt: skip
    n = tl.program_id(0)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ps = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    cm = cs < C
    pm = ps < P
    m = cm[:, None] & pm[None, :]
    n64 = n.to(tl.int64)
    v = tl.load(x_ptr + n64 * sxn + cs[:, None] * sxc + ps[None, :] * sxp, mask=m, other=0.0)
    v = v.to(tl.float32)
    if AFF:
        al, be = norm_rows(nrm_ptr, cs, cm, C)
        v = bn_x(v, al[:, None], be[:, None], x_ptr.dtype.element_ty)
    av = tl.load(a_ptr + n * C + cs, mask=cm, other=0.0)
    v = v * av[:, None]
    if HAS_B:
        bv = tl.load(b_ptr + n * P + ps, mask=pm, other=0.0)
        v = v * bv[None, :]
    tl.store(y_ptr + n64 * syn + cs[:, None] * syc + ps[None, :] * syp,
             v.to(y_ptr.dtype.element_ty), mask=m)  # fmt: skip


def apply(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None = None,
    norm: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Same contract as :func:`visattn.kernels.cpu.apply`."""
    x = layout(x)
    n, c, h, w = x.shape
    p = h * w
    a, b, norm = map(flat_f32, (a, b, norm))
    y = like(x)
    bc, bp = tiles(p)
    grid = (n, triton.cdiv(c, bc), triton.cdiv(p, bp))
    _apply_kernel[grid](x, y, a, b if b is not None else a, norm if norm is not None else a, c, p,
                        *strides(x), *strides(y), HAS_B=b is not None, AFF=norm is not None,
                        BLOCK_C=bc, BLOCK_P=bp)  # fmt: skip
    return y


@triton.jit
def _stats_p_kernel(x_ptr, a_ptr, nrm_ptr, sum_ptr, max_ptr, C, P, sxn, sxc, sxp,
                    AFF: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    n = tl.program_id(0)
    ps = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = ps < P
    base = x_ptr + n.to(tl.int64) * sxn
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    mx = tl.full([BLOCK_C, BLOCK_P], float("-inf"), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        cm = cs < C
        m = cm[:, None] & pm[None, :]
        v = tl.load(base + cs[:, None] * sxc + ps[None, :] * sxp, mask=m, other=0.0).to(tl.float32)
        if AFF:
            al, be = norm_rows(nrm_ptr, cs, cm, C)
            v = bn_x(v, al[:, None], be[:, None], x_ptr.dtype.element_ty)
        av = tl.load(a_ptr + n * C + cs, mask=cm, other=0.0)
        v = av[:, None] * v
        acc += v
        mx = tl.maximum(mx, tl.where(m, v, float("-inf")))
    tl.store(sum_ptr + n * P + ps, tl.sum(acc, 0), mask=pm)
    tl.store(max_ptr + n * P + ps, tl.max(mx, 0), mask=pm)


def stats_p(
    x: torch.Tensor, a: torch.Tensor, norm: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`visattn.kernels.cpu.stats_p`."""
    x = layout(x)
    n, c, h, w = x.shape
    p = h * w
    a, norm = flat_f32(a), flat_f32(norm)
    s = torch.empty(n, p, dtype=torch.float32, device=x.device)
    m = torch.empty_like(s)
    bc, bp = tiles(p)
    _stats_p_kernel[(n, triton.cdiv(p, bp))](x, a, norm if norm is not None else a, s, m, c, p,
                                             *strides(x), AFF=norm is not None, BLOCK_C=bc,
                                             BLOCK_P=bp)  # fmt: skip
    return s, m


@triton.jit
def _position_block(b_ptr, pmax_ptr, n, pb, P, CBAM: tl.constexpr, CNT: tl.constexpr,
                    BLOCK_P: tl.constexpr):  # fmt: skip
    """The backward reductions' block of positions: (ps, mask, b_p (1 for SE), pmax_p (CBAM with
    max pools; else b_p as a placeholder))."""
    ps = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = ps < P
    if CBAM:
        bv = tl.load(b_ptr + n * P + ps, mask=pm, other=0.0)
    else:
        bv = tl.where(pm, 1.0, 0.0)
    pmx = bv
    if CBAM and CNT:
        pmx = tl.load(pmax_ptr + n * P + ps, mask=pm, other=0.0)
    return ps, pm, bv, pmx


@triton.jit
def _bwd_reduce_kernel(dy_ptr, x_ptr, a_ptr, b_ptr, zmax_ptr, pmax_ptr, nrm_ptr, out_ptr, db_ptr,
                       pc_ptr, N, C, P, NPB, sdn, sdc, sdp, sxn, sxc, sxp, CBAM: tl.constexpr,
                       CNT: tl.constexpr, AFF: tl.constexpr, BLOCK_C: tl.constexpr,
                       BLOCK_P: tl.constexpr):  # fmt: skip
    """Per-tile partial sums, rows of out (K, N, NPB, C): q = sum_p dy x b_p[, tie count];
    with a folded BatchNorm (AFF) sum dy b, sum dy b d, sum d[, tie count, sum over ties of d]
    (see cpu.bwd_reduce / bwd_reduce_norm). db_p and the per-position tie counts are whole."""
    n = tl.program_id(0)
    pb = tl.program_id(1)
    n64 = n.to(tl.int64)
    ps, pm, bv, pmx = _position_block(b_ptr, pmax_ptr, n, pb, P, CBAM, CNT, BLOCK_P)
    dbacc = tl.zeros([BLOCK_P], dtype=tl.float32)
    pcacc = tl.zeros([BLOCK_P], dtype=tl.float32)
    row = N * NPB * C
    zrow = 3 if AFF else 1
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        cm = cs < C
        m = cm[:, None] & pm[None, :]
        v = tl.load(x_ptr + n64 * sxn + cs[:, None] * sxc + ps[None, :] * sxp, mask=m,
                    other=0.0).to(tl.float32)  # fmt: skip
        e = tl.load(dy_ptr + n64 * sdn + cs[:, None] * sdc + ps[None, :] * sdp, mask=m,
                    other=0.0).to(tl.float32)  # fmt: skip
        out = (n64 * NPB + pb) * C + cs
        if AFF:
            al, be = norm_rows(nrm_ptr, cs, cm, C)
            mu = tl.load(nrm_ptr + 2 * C + cs, mask=cm, other=0.0)
            d = tl.where(m, v - mu[:, None], 0.0)
            v = bn_x(v, al[:, None], be[:, None], x_ptr.dtype.element_ty)
            eb = e * bv[None, :]
            tl.store(out_ptr + out, tl.sum(eb, 1), mask=cm)
            tl.store(out_ptr + row + out, tl.sum(eb * d, 1), mask=cm)
            tl.store(out_ptr + 2 * row + out, tl.sum(d, 1), mask=cm)
        else:
            tl.store(out_ptr + out, tl.sum((e * v) * bv[None, :], 1), mask=cm)
        if CBAM:
            av = tl.load(a_ptr + n * C + cs, mask=cm, other=0.0)
            dbacc += tl.sum((e * v) * av[:, None], 0)
        if CNT:
            zm = tl.load(zmax_ptr + n * C + cs, mask=cm, other=0.0)
            hit = m & (v == zm[:, None])
            tl.store(out_ptr + zrow * row + out, tl.sum(tl.where(hit, 1.0, 0.0), 1), mask=cm)
            if AFF:
                tl.store(out_ptr + 4 * row + out, tl.sum(tl.where(hit, d, 0.0), 1), mask=cm)
            if CBAM:
                hitp = m & ((av[:, None] * v) == pmx[None, :])
                pcacc += tl.sum(tl.where(hitp, 1.0, 0.0), 0)
    if CBAM:
        tl.store(db_ptr + n * P + ps, dbacc, mask=pm)
        if CNT:
            tl.store(pc_ptr + n * P + ps, pcacc, mask=pm)


def _reduce(dy, x, a, b, zmax, pmax, norm):
    """Launch _bwd_reduce_kernel: (its rows summed over the tiles (K, N, C), db, pcnt)."""
    x = layout(x)
    dy = layout(as_dtype(dy, x.dtype))
    n, c, h, w = x.shape
    p = h * w
    bc, bp = tiles(p)
    npb = triton.cdiv(p, bp)
    a, b, zmax, pmax, norm = map(flat_f32, (a, b, zmax, pmax, norm))
    dev = x.device
    rows = (3 if norm is not None else 1) + (2 if norm is not None else 1) * (zmax is not None)
    parts = torch.empty(rows, n, npb, c, dtype=torch.float32, device=dev)
    db = torch.empty(n, p, dtype=torch.float32, device=dev) if b is not None else None
    pc = (
        torch.empty(n, p, dtype=torch.float32, device=dev)
        if (b is not None and zmax is not None)
        else None
    )
    _bwd_reduce_kernel[(n, npb)](
        dy, x, a, b if b is not None else a, zmax if zmax is not None else a,
        pmax if pmax is not None else a, norm if norm is not None else a, parts,
        db if db is not None else a, pc if pc is not None else a, n, c, p, npb, *strides(dy),
        *strides(x), CBAM=b is not None, CNT=zmax is not None, AFF=norm is not None,
        BLOCK_C=bc, BLOCK_P=bp,
    )  # fmt: skip
    return parts.sum(2), db, pc


def bwd_reduce(
    dy: torch.Tensor,
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor | None = None,
    zmax: torch.Tensor | None = None,
    pmax: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Same contract as :func:`visattn.kernels.cpu.bwd_reduce`."""
    sums, db, pc = _reduce(dy, x, a, b, zmax, pmax, None)
    return sums[0], db, (sums[1] if zmax is not None else None), pc


def bwd_reduce_norm(
    dy: torch.Tensor,
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor | None,
    zmax: torch.Tensor | None,
    pmax: torch.Tensor | None,
    norm: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Same contract as :func:`visattn.kernels.cpu.bwd_reduce_norm`."""
    return _reduce(dy, x, a, b, zmax, pmax, norm)


@triton.jit
def _bwd_channel_kernel(x_ptr, a_ptr, gavg_ptr, gmax_ptr, pmax_ptr, nrm_ptr, out_ptr, N, C, P,
                        sxn, sxc, sxp, MAXP: tl.constexpr, AFF: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """out (N, C): sum_p x w_p, w_p = gavg_p + [a_c x == pmax_p] gmax_p; with a folded BatchNorm
    (AFF) rows (2, N, C): sum_p [a_c x~ == pmax_p] gmax_p and sum_p d w_p (cpu.bwd_channel_norm)."""
    n = tl.program_id(0)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = cs < C
    base = x_ptr + n.to(tl.int64) * sxn
    av = tl.load(a_ptr + n * C + cs, mask=cm, other=0.0)
    if AFF:
        al, be = norm_rows(nrm_ptr, cs, cm, C)
        mu = tl.load(nrm_ptr + 2 * C + cs, mask=cm, other=0.0)
    hacc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        pm = ps < P
        m = cm[:, None] & pm[None, :]
        raw = tl.load(base + cs[:, None] * sxc + ps[None, :] * sxp, mask=m,
                      other=0.0).to(tl.float32)  # fmt: skip
        v = raw
        if AFF:
            v = bn_x(raw, al[:, None], be[:, None], x_ptr.dtype.element_ty)
        wgt = tl.load(gavg_ptr + n * P + ps, mask=pm, other=0.0)[None, :]
        if MAXP:
            gm = tl.load(gmax_ptr + n * P + ps, mask=pm, other=0.0)
            pmx = tl.load(pmax_ptr + n * P + ps, mask=pm, other=0.0)
            hv = tl.where(m & ((av[:, None] * v) == pmx[None, :]), gm[None, :], 0.0)
            hacc += hv
            wgt = wgt + hv
        if AFF:
            acc += tl.where(m, raw - mu[:, None], 0.0) * wgt
        else:
            acc += v * wgt
    if AFF:
        tl.store(out_ptr + n * C + cs, tl.sum(hacc, 1), mask=cm)
        tl.store(out_ptr + N * C + n * C + cs, tl.sum(acc, 1), mask=cm)
    else:
        tl.store(out_ptr + n * C + cs, tl.sum(acc, 1), mask=cm)


def _channel(x, a, gavg, gmax, pmax, norm):
    x = layout(x)
    n, c, h, w = x.shape
    a, gavg, gmax, pmax, norm = map(flat_f32, (a, gavg, gmax, pmax, norm))
    out = torch.empty(2 if norm is not None else 1, n, c, dtype=torch.float32, device=x.device)
    bc, bp = tiles(h * w)
    _bwd_channel_kernel[(n, triton.cdiv(c, bc))](
        x, a, gavg, gmax if gmax is not None else gavg, pmax if pmax is not None else gavg,
        norm if norm is not None else gavg, out, n, c, h * w, *strides(x),
        MAXP=gmax is not None, AFF=norm is not None, BLOCK_C=bc, BLOCK_P=bp,
    )  # fmt: skip
    return out


def bwd_channel(
    x: torch.Tensor,
    a: torch.Tensor,
    gavg: torch.Tensor,
    gmax: torch.Tensor | None = None,
    pmax: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as :func:`visattn.kernels.cpu.bwd_channel`."""
    return _channel(x, a, gavg, gmax, pmax, None)[0]


def bwd_channel_norm(
    x: torch.Tensor,
    a: torch.Tensor,
    gavg: torch.Tensor,
    gmax: torch.Tensor | None,
    pmax: torch.Tensor | None,
    norm: torch.Tensor,
) -> torch.Tensor:
    """Same contract as :func:`visattn.kernels.cpu.bwd_channel_norm`."""
    return _channel(x, a, gavg, gmax, pmax, norm)


@triton.jit
def _bwd_apply_kernel(dy_ptr, x_ptr, a_ptr, b_ptr, gavg_ptr, gmax_ptr, pmax_ptr, cavg_ptr,
                      cmax_ptr, zmax_ptr, nrm_ptr, dx_ptr, C, P, sdn, sdc, sdp, sxn, sxc, sxp, son,
                      soc, sop, CBAM: tl.constexpr, MAXP: tl.constexpr, MAXC: tl.constexpr,
                      AFF: tl.constexpr, BLOCK_C: tl.constexpr,
                      BLOCK_P: tl.constexpr):  # fmt: skip
    n = tl.program_id(0)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ps = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    cm = cs < C
    pm = ps < P
    m = cm[:, None] & pm[None, :]
    n64 = n.to(tl.int64)
    v = tl.load(x_ptr + n64 * sxn + cs[:, None] * sxc + ps[None, :] * sxp, mask=m, other=0.0)
    d = tl.load(dy_ptr + n64 * sdn + cs[:, None] * sdc + ps[None, :] * sdp, mask=m, other=0.0)
    raw = v.to(tl.float32)
    v = raw
    if AFF:
        al, be = norm_rows(nrm_ptr, cs, cm, C)
        v = bn_x(raw, al[:, None], be[:, None], x_ptr.dtype.element_ty)
    g = d.to(tl.float32)
    av = tl.load(a_ptr + n * C + cs, mask=cm, other=0.0)
    if CBAM:
        bv = tl.load(b_ptr + n * P + ps, mask=pm, other=0.0)
        ga = tl.load(gavg_ptr + n * P + ps, mask=pm, other=0.0)
        g = g * bv[None, :] + ga[None, :]
    if MAXP:
        gm = tl.load(gmax_ptr + n * P + ps, mask=pm, other=0.0)
        pmx = tl.load(pmax_ptr + n * P + ps, mask=pm, other=0.0)
        g = g + tl.where((av[:, None] * v) == pmx[None, :], gm[None, :], 0.0)
    ca = tl.load(cavg_ptr + n * C + cs, mask=cm, other=0.0)
    r = av[:, None] * g + ca[:, None]
    if MAXC:
        cmx = tl.load(cmax_ptr + n * C + cs, mask=cm, other=0.0)
        zm = tl.load(zmax_ptr + n * C + cs, mask=cm, other=0.0)
        r = r + tl.where(v == zm[:, None], cmx[:, None], 0.0)
    if AFF:  # dL/dc = al r + v (c - mu) + w: the folded BatchNorm's backward
        mu = tl.load(nrm_ptr + 2 * C + cs, mask=cm, other=0.0)
        nv = tl.load(nrm_ptr + 3 * C + cs, mask=cm, other=0.0)
        nw = tl.load(nrm_ptr + 4 * C + cs, mask=cm, other=0.0)
        r = al[:, None] * r + nv[:, None] * (raw - mu[:, None]) + nw[:, None]
    tl.store(dx_ptr + n64 * son + cs[:, None] * soc + ps[None, :] * sop,
             r.to(dx_ptr.dtype.element_ty), mask=m)  # fmt: skip


def bwd_apply(
    dy: torch.Tensor,
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor | None,
    gavg: torch.Tensor | None,
    gmax: torch.Tensor | None,
    pmax: torch.Tensor | None,
    cavg: torch.Tensor,
    cmax: torch.Tensor | None,
    zmax: torch.Tensor | None,
    norm: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as :func:`visattn.kernels.cpu.bwd_apply`."""
    x = layout(x)
    dy = layout(as_dtype(dy, x.dtype))
    n, c, h, w = x.shape
    p = h * w
    a, b, gavg, gmax, pmax = map(flat_f32, (a, b, gavg, gmax, pmax))
    cavg, cmax, zmax, norm = map(flat_f32, (cavg, cmax, zmax, norm))
    dx = like(x)
    bc, bp = tiles(p)
    grid = (n, triton.cdiv(c, bc), triton.cdiv(p, bp))
    _bwd_apply_kernel[grid](
        dy, x, a, b if b is not None else a, gavg if gavg is not None else a,
        gmax if gmax is not None else a, pmax if pmax is not None else a, cavg,
        cmax if cmax is not None else a, zmax if zmax is not None else a,
        norm if norm is not None else a, dx, c, p, *strides(dy), *strides(x), *strides(dx),
        CBAM=b is not None, MAXP=gmax is not None, MAXC=cmax is not None, AFF=norm is not None,
        BLOCK_C=bc, BLOCK_P=bp,
    )  # fmt: skip
    return dx
