"""Triton kernels of the fused SE / CBAM blocks (arXiv:1709.01507, arXiv:1807.06521) and of the
bilinear sampler (Jaderberg et al., arXiv:1506.02025, eq. 5-7).

x is addressed as (N, C, P) with P = H W through its strides, so NCHW and channels_last tensors
take the same kernels (Triton specialises unit strides, which gives coalesced tiles either way).
The SE / CBAM functions mirror :mod:`visattn.kernels.cpu` one for one (same names, arguments and
formulas, listed in :mod:`visattn.kernels._cpu_source`). Reductions that run across tiles write
per-tile partial sums that ``torch.sum`` adds afterwards: no atomics, deterministic.

Sampler: ``sample_forward`` gathers the four corners (eq. 5); ``sample_backward_grid`` evaluates
eq. 7 per output pixel (a gather, summed over channels inside the program); the input gradient
(eq. 6) is a scatter in the paper's form, computed here deterministically as a gather: the
4 N H_out W_out (corner -> input pixel) pairs are stably sorted by input pixel, and one program
per block of input pixels walks its pixels' segments in that fixed order. Zero padding only.

Runs on CUDA and, with ``TRITON_INTERPRET=1`` set before ``triton`` is imported, on CPU tensors.
Tests: ``tests/kernels/test_kernels_triton.py`` (interpreter) and the CUDA-parametrised cases of
``tests/kernels/test_kernels_se_cbam.py`` / ``test_kernels_sampler.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._backend import as_dtype, flat_f32

__all__ = [
    "apply",
    "bwd_apply",
    "bwd_channel",
    "bwd_channel_norm",
    "bwd_reduce",
    "bwd_reduce_norm",
    "excite",
    "excite_backward",
    "excite_wgrad",
    "fold",
    "fold_backward",
    "sample_backward",
    "sample_forward",
    "stats_c",
    "stats_p",
]

_TILE = 4096  # elements of an x tile (BLOCK_C x BLOCK_P)


def _tiles(p: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P) by stage: 128 positions per tile where H W >= 128 (ResNet stages 1-3:
    32 x 128), fewer where the map is small, with more channels, so that a 7 x 7 map fills 49 of
    64 positions instead of 49 of 128 (64 x 64)."""
    bp = max(16, min(128, triton.next_power_of_2(p)))
    return _TILE // bp, bp


def _layout(x: torch.Tensor) -> torch.Tensor:
    """x with strides that flatten (H, W) into one P axis (NCHW or channels_last)."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(3)


def _like(x: torch.Tensor) -> torch.Tensor:
    cl = (not x.is_contiguous()) and x.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if cl else torch.contiguous_format
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)


# ----------------------------------------------------------------------------- SE / CBAM


@triton.jit
def _bn_x(v, al, be, DT: tl.constexpr):
    """x~ = c al + be of a folded BatchNorm (one fma, rounded to c's type as nn.BatchNorm2d's
    output is): the same expression in every kernel, so maxima are recognised by equality."""
    x = tl.fma(v, al, be)
    if DT == tl.bfloat16:  # round to nearest even by hand: the interpreter's cast truncates
        u = x.to(tl.uint32, bitcast=True)
        r = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
        x = tl.where(x != x, x, r)
    elif DT != tl.float32:
        x = x.to(DT).to(tl.float32)
    return x


@triton.jit
def _norm_rows(nrm_ptr, cs, cm, C):
    """Rows al, be of the folded BatchNorm (1 and 0 where cm is False)."""
    al = tl.load(nrm_ptr + cs, mask=cm, other=1.0)
    be = tl.load(nrm_ptr + C + cs, mask=cm, other=0.0)
    return al, be


@triton.jit
def _stats_c_kernel(x_ptr, nrm_ptr, sum_ptr, max_ptr, C, P, sxn, sxc, sxp, AFF: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    n = tl.program_id(0)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = cs < C
    base = x_ptr + n.to(tl.int64) * sxn
    if AFF:
        al, be = _norm_rows(nrm_ptr, cs, cm, C)
    acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
    mx = tl.full([BLOCK_C, BLOCK_P], float("-inf"), dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        m = cm[:, None] & (ps < P)[None, :]
        v = tl.load(base + cs[:, None] * sxc + ps[None, :] * sxp, mask=m, other=0.0).to(tl.float32)
        if AFF:
            v = tl.where(m, _bn_x(v, al[:, None], be[:, None], x_ptr.dtype.element_ty), 0.0)
        acc += v
        mx = tl.maximum(mx, tl.where(m, v, float("-inf")))
    tl.store(sum_ptr + n * C + cs, tl.sum(acc, 1), mask=cm)
    tl.store(max_ptr + n * C + cs, tl.max(mx, 1), mask=cm)


def stats_c(x: torch.Tensor, norm: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`visattn.kernels.cpu.stats_c`."""
    x = _layout(x)
    n, c, h, w = x.shape
    norm = flat_f32(norm)
    s = torch.empty(n, c, dtype=torch.float32, device=x.device)
    m = torch.empty_like(s)
    bc, bp = _tiles(h * w)
    _stats_c_kernel[(n, triton.cdiv(c, bc))](x, norm if norm is not None else s, s, m, c, h * w,
                                             *_strides(x), AFF=norm is not None, BLOCK_C=bc,
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
        al, be = _norm_rows(nrm_ptr, cs, cm, C)
        v = _bn_x(v, al[:, None], be[:, None], x_ptr.dtype.element_ty)
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
    x = _layout(x)
    n, c, h, w = x.shape
    p = h * w
    a, b, norm = map(flat_f32, (a, b, norm))
    y = _like(x)
    bc, bp = _tiles(p)
    grid = (n, triton.cdiv(c, bc), triton.cdiv(p, bp))
    _apply_kernel[grid](x, y, a, b if b is not None else a, norm if norm is not None else a, c, p,
                        *_strides(x), *_strides(y), HAS_B=b is not None, AFF=norm is not None,
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
            al, be = _norm_rows(nrm_ptr, cs, cm, C)
            v = _bn_x(v, al[:, None], be[:, None], x_ptr.dtype.element_ty)
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
    x = _layout(x)
    n, c, h, w = x.shape
    p = h * w
    a, norm = flat_f32(a), flat_f32(norm)
    s = torch.empty(n, p, dtype=torch.float32, device=x.device)
    m = torch.empty_like(s)
    bc, bp = _tiles(p)
    _stats_p_kernel[(n, triton.cdiv(p, bp))](x, a, norm if norm is not None else a, s, m, c, p,
                                             *_strides(x), AFF=norm is not None, BLOCK_C=bc,
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
            al, be = _norm_rows(nrm_ptr, cs, cm, C)
            mu = tl.load(nrm_ptr + 2 * C + cs, mask=cm, other=0.0)
            d = tl.where(m, v - mu[:, None], 0.0)
            v = _bn_x(v, al[:, None], be[:, None], x_ptr.dtype.element_ty)
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
    x = _layout(x)
    dy = _layout(as_dtype(dy, x.dtype))
    n, c, h, w = x.shape
    p = h * w
    bc, bp = _tiles(p)
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
        db if db is not None else a, pc if pc is not None else a, n, c, p, npb, *_strides(dy),
        *_strides(x), CBAM=b is not None, CNT=zmax is not None, AFF=norm is not None,
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
        al, be = _norm_rows(nrm_ptr, cs, cm, C)
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
            v = _bn_x(raw, al[:, None], be[:, None], x_ptr.dtype.element_ty)
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
    x = _layout(x)
    n, c, h, w = x.shape
    a, gavg, gmax, pmax, norm = map(flat_f32, (a, gavg, gmax, pmax, norm))
    out = torch.empty(2 if norm is not None else 1, n, c, dtype=torch.float32, device=x.device)
    bc, bp = _tiles(h * w)
    _bwd_channel_kernel[(n, triton.cdiv(c, bc))](
        x, a, gavg, gmax if gmax is not None else gavg, pmax if pmax is not None else gavg,
        norm if norm is not None else gavg, out, n, c, h * w, *_strides(x),
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
        al, be = _norm_rows(nrm_ptr, cs, cm, C)
        v = _bn_x(raw, al[:, None], be[:, None], x_ptr.dtype.element_ty)
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
    x = _layout(x)
    dy = _layout(as_dtype(dy, x.dtype))
    n, c, h, w = x.shape
    p = h * w
    a, b, gavg, gmax, pmax = map(flat_f32, (a, b, gavg, gmax, pmax))
    cavg, cmax, zmax, norm = map(flat_f32, (cavg, cmax, zmax, norm))
    dx = _like(x)
    bc, bp = _tiles(p)
    grid = (n, triton.cdiv(c, bc), triton.cdiv(p, bp))
    _bwd_apply_kernel[grid](
        dy, x, a, b if b is not None else a, gavg if gavg is not None else a,
        gmax if gmax is not None else a, pmax if pmax is not None else a, cavg,
        cmax if cmax is not None else a, zmax if zmax is not None else a,
        norm if norm is not None else a, dx, c, p, *_strides(dy), *_strides(x), *_strides(dx),
        CBAM=b is not None, MAXP=gmax is not None, MAXC=cmax is not None, AFF=norm is not None,
        BLOCK_C=bc, BLOCK_P=bp,
    )  # fmt: skip
    return dx


# ----------------------------------------------------------------------------- excitation MLP
# The (N, C)-sized part of SE / CBAM (formulas in visattn.kernels._excite): three launches
# instead of about twenty small PyTorch ops per block, forward + backward. Each program of
# _excite_kernel / _excite_bwd_kernel takes BLOCK_N samples and runs the two matrix products
# in phases; a phase reads what the previous one stored (h, dl, dh in global memory), hence the
# barriers. float32 products (tl.dot with IEEE precision: no TF32). No atomics: deterministic.

_GATE_IDS = {"sigmoid": 0, "hard_sigmoid": 1, "tanh": 2, "relu": 3}
_BN = 16  # samples per program (tl.dot needs >= 16)
_BH = 32  # hidden units per tile
_BK = 64  # channels per tile


@triton.jit
def _gate_fwd(l, GATE: tl.constexpr):
    if GATE == 0:
        out = 1.0 / (1.0 + tl.exp(-l))
    elif GATE == 1:
        out = tl.minimum(tl.maximum(l + 3.0, 0.0), 6.0) / 6.0
    elif GATE == 2:
        out = 2.0 / (1.0 + tl.exp(-2.0 * l)) - 1.0
    else:
        out = tl.maximum(l, 0.0)
    return out


@triton.jit
def _gate_bwd(l, s, ds, GATE: tl.constexpr):
    if GATE == 0:
        out = ds * s * (1.0 - s)
    elif GATE == 1:
        out = tl.where((l > -3.0) & (l < 3.0), ds / 6.0, 0.0)
    elif GATE == 2:
        out = ds * (1.0 - s * s)
    else:
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
    return (triton.cdiv(n, _BN),)


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
        hid, K=kk, GATE=_GATE_IDS[gate], HAS_B1=b1 is not None, HAS_B2=b2 is not None,
        BLOCK_N=_BN, BLOCK_H=_BH, BLOCK_K=_BK,
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
        if GATE == 1 or GATE == 3:  # hard_sigmoid, relu: the derivative reads the logits
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
        1.0 / positions, K=kk, GATE=_GATE_IDS[gate], HAS_AVG=use_avg, HAS_MAX=use_max,
        BLOCK_N=_BN, BLOCK_H=_BH, BLOCK_K=_BK,
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
    grid = (triton.cdiv(hid, _BH), triton.cdiv(c, _BK))
    _excite_wgrad_kernel[grid](dl, dh, z, h, dw1, db1, dw2, db2, n, c, hid, K=kk, BLOCK_N=_BN,
                               BLOCK_H=_BH, BLOCK_K=_BK)  # fmt: skip
    return dw1, db1, dw2, db2


# ----------------------------------------------------------------------------- folded BatchNorm
# The (C,)-sized steps around a BatchNorm folded into SE / CBAM (formulas in
# visattn.kernels._fold): one launch each way instead of about five and fifteen small PyTorch
# ops. _fold_bwd_kernel adds its per-sample terms over N in a fixed order: deterministic.

_FOLD_BLOCK = 256  # channels per program of _fold_kernel


@triton.jit
def _fold_kernel(w_ptr, b_ptr, mean_ptr, var_ptr, out_ptr, C, eps, HAS_W: tl.constexpr,
                 HAS_B: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    cs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cm = cs < C
    mu = tl.load(mean_ptr + cs, mask=cm, other=0.0).to(tl.float32)
    var = tl.load(var_ptr + cs, mask=cm, other=1.0).to(tl.float32)
    inv = tl.div_rn(tl.full([BLOCK], 1.0, tl.float32), tl.sqrt_rn(var + eps))
    al = inv
    if HAS_W:
        al = inv * tl.load(w_ptr + cs, mask=cm, other=1.0).to(tl.float32)
    beta = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_B:
        beta = tl.load(b_ptr + cs, mask=cm, other=0.0).to(tl.float32)
    tl.store(out_ptr + cs, al, mask=cm)
    tl.store(out_ptr + C + cs, beta - mu * al, mask=cm)
    tl.store(out_ptr + 2 * C + cs, mu, mask=cm)
    tl.store(out_ptr + 3 * C + cs, inv, mask=cm)
    tl.store(out_ptr + 4 * C + cs, beta, mask=cm)


def fold(weight: torch.Tensor | None, bias: torch.Tensor | None, mean: torch.Tensor,
         var: torch.Tensor, eps: float) -> torch.Tensor:  # fmt: skip
    """Same contract as :func:`visattn.kernels._fold.fold`: rows [al; be; mu; 1/sigma; beta]."""
    c = mean.shape[0]
    mean, var = mean.contiguous(), var.contiguous()
    out = torch.empty(5, c, dtype=torch.float32, device=mean.device)
    _fold_kernel[(triton.cdiv(c, _FOLD_BLOCK),)](
        weight if weight is not None else out, bias if bias is not None else out, mean, var, out,
        c, float(eps), HAS_W=weight is not None, HAS_B=bias is not None, BLOCK=_FOLD_BLOCK,
    )  # fmt: skip
    return out


@triton.jit
def _fold_bwd_kernel(nrm_ptr, a_ptr, t0_ptr, t1_ptr, cavg_ptr, sd_ptr, cmax_ptr, cnt_ptr, td_ptr,
                     rows_ptr, dnorm_ptr, N, C, P, inv_m, HAS_MAX: tl.constexpr,
                     BATCH: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_C: tl.constexpr):  # fmt: skip
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = cs < C
    g = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
    gd = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        m = (ns < N)[:, None] & cm[None, :]
        off = ns[:, None].to(tl.int64) * C + cs[None, :]
        a = tl.load(a_ptr + off, mask=m, other=0.0)
        cavg = tl.load(cavg_ptr + off, mask=m, other=0.0)
        g += P * cavg + a * tl.load(t0_ptr + off, mask=m, other=0.0)
        gd += cavg * tl.load(sd_ptr + off, mask=m, other=0.0)
        gd += a * tl.load(t1_ptr + off, mask=m, other=0.0)
        if HAS_MAX:
            cmax = tl.load(cmax_ptr + off, mask=m, other=0.0)
            g += tl.load(cnt_ptr + off, mask=m, other=0.0) * cmax
            gd += cmax * tl.load(td_ptr + off, mask=m, other=0.0)
    big_g = tl.sum(g, 0)
    al = tl.load(nrm_ptr + cs, mask=cm, other=0.0)
    inv = tl.load(nrm_ptr + 3 * C + cs, mask=cm, other=0.0)
    gx = inv * tl.sum(gd, 0)
    v = tl.zeros([BLOCK_C], dtype=tl.float32)
    w = tl.zeros([BLOCK_C], dtype=tl.float32)
    if BATCH:
        scale = al * -inv_m
        v = scale * inv * gx
        w = scale * big_g
    tl.store(rows_ptr + cs, al, mask=cm)
    tl.store(rows_ptr + C + cs, tl.load(nrm_ptr + C + cs, mask=cm), mask=cm)
    tl.store(rows_ptr + 2 * C + cs, tl.load(nrm_ptr + 2 * C + cs, mask=cm), mask=cm)
    tl.store(rows_ptr + 3 * C + cs, v, mask=cm)
    tl.store(rows_ptr + 4 * C + cs, w, mask=cm)
    tl.store(dnorm_ptr + cs, gx, mask=cm)
    tl.store(dnorm_ptr + C + cs, big_g, mask=cm)


def fold_backward(
    in_norm: torch.Tensor,
    batch: bool,
    a: torch.Tensor,
    t0: torch.Tensor,
    t1: torch.Tensor,
    cavg: torch.Tensor,
    sum_d: torch.Tensor,
    cmax: torch.Tensor | None,
    count: torch.Tensor | None,
    tied_d: torch.Tensor | None,
    positions: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`visattn.kernels._fold.fold_backward`: (rows, [dL/dgamma;
    dL/dbeta])."""
    n, c = a.shape
    a, t0, t1, cavg, sum_d = (flat_f32(t) for t in (a, t0, t1, cavg, sum_d))
    has_max = cmax is not None
    cmax, count, tied_d = (flat_f32(t) if has_max else a for t in (cmax, count, tied_d))
    rows = torch.empty(5, c, dtype=torch.float32, device=a.device)
    dnorm = torch.empty(2, c, dtype=torch.float32, device=a.device)
    _fold_bwd_kernel[(triton.cdiv(c, _BK),)](
        flat_f32(in_norm), a, t0, t1, cavg, sum_d, cmax, count, tied_d, rows, dnorm, n, c,
        float(positions), 1.0 / (n * positions), HAS_MAX=has_max, BATCH=bool(batch),
        BLOCK_N=_BN, BLOCK_C=_BK,
    )  # fmt: skip
    return rows, dnorm


# ----------------------------------------------------------------------------- sampler


@triton.jit
def _pixel(g, size, ALIGN: tl.constexpr):
    if ALIGN:
        out = (g + 1.0) * ((size - 1) * 0.5)
    else:
        out = ((g + 1.0) * size - 1.0) * 0.5
    # Far-away coordinates only touch padding; clamping keeps the integer corners in range.
    return tl.minimum(tl.maximum(out, -2.0), size + 1.0)


@triton.jit
def _top_left_corner(grid_ptr, n64, qs, qm, Q, H, W, ALIGN: tl.constexpr):
    """Pixel (x0, y0) = floor(x^s, y^s) of output points ``qs`` and the weights x - x0, y - y0."""
    gbase = grid_ptr + (n64 * Q + qs) * 2
    x = _pixel(tl.load(gbase, mask=qm, other=0.0).to(tl.float32), W, ALIGN)
    y = _pixel(tl.load(gbase + 1, mask=qm, other=0.0).to(tl.float32), H, ALIGN)
    x0f = tl.floor(x)
    y0f = tl.floor(y)
    return x0f.to(tl.int32), y0f.to(tl.int32), x - x0f, y - y0f


@triton.jit
def _sample_fwd_kernel(in_ptr, grid_ptr, out_ptr, C, H, W, Q, sin, sic, sih, siw, son, soc, soq,
                       ALIGN: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    n = tl.program_id(0)
    qs = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    qm = qs < Q
    cm = cs < C
    n64 = n.to(tl.int64)
    x0, y0, wx1, wy1 = _top_left_corner(grid_ptr, n64, qs, qm, Q, H, W, ALIGN)
    acc = tl.zeros([BLOCK_Q, BLOCK_C], dtype=tl.float32)
    base = in_ptr + n64 * sin + cs[None, :] * sic
    for k in tl.static_range(4):
        dyk = k // 2
        dxk = k % 2
        xi = x0 + dxk
        yi = y0 + dyk
        wgt = (wx1 if dxk == 1 else 1.0 - wx1) * (wy1 if dyk == 1 else 1.0 - wy1)
        ok = qm & (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
        off = tl.where(ok, yi * sih + xi * siw, 0)
        v = tl.load(base + off[:, None], mask=ok[:, None] & cm[None, :], other=0.0)
        acc += v.to(tl.float32) * wgt[:, None]
    optr = out_ptr + n64 * son + cs[None, :] * soc + qs[:, None] * soq
    tl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=qm[:, None] & cm[None, :])


@triton.jit
def _sample_bwd_grid_kernel(in_ptr, grid_ptr, go_ptr, gg_ptr, C, H, W, Q, sin, sic, sih, siw,
                            sgn, sgc, sgq, ALIGN: tl.constexpr, BLOCK_Q: tl.constexpr,
                            BLOCK_C: tl.constexpr):  # fmt: skip
    n = tl.program_id(0)
    qs = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qm = qs < Q
    n64 = n.to(tl.int64)
    x0, y0, wx1, wy1 = _top_left_corner(grid_ptr, n64, qs, qm, Q, H, W, ALIGN)
    dvdx = tl.zeros([BLOCK_Q], dtype=tl.float32)
    dvdy = tl.zeros([BLOCK_Q], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        cm = cs < C
        go = tl.load(go_ptr + n64 * sgn + cs[None, :] * sgc + qs[:, None] * sgq,
                     mask=qm[:, None] & cm[None, :], other=0.0).to(tl.float32)  # fmt: skip
        base = in_ptr + n64 * sin + cs[None, :] * sic
        for k in tl.static_range(4):
            dyk = k // 2
            dxk = k % 2
            xi = x0 + dxk
            yi = y0 + dyk
            ok = qm & (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
            off = tl.where(ok, yi * sih + xi * siw, 0)
            u = tl.load(base + off[:, None], mask=ok[:, None] & cm[None, :], other=0.0)
            udv = tl.sum(u.to(tl.float32) * go, 1)
            sx = 1.0 if dxk == 1 else -1.0
            sy = 1.0 if dyk == 1 else -1.0
            dvdx += udv * sx * (wy1 if dyk == 1 else 1.0 - wy1)
            dvdy += udv * sy * (wx1 if dxk == 1 else 1.0 - wx1)
    if ALIGN:
        scx = (W - 1) * 0.5
        scy = (H - 1) * 0.5
    else:
        scx = W * 0.5
        scy = H * 0.5
    tl.store(gg_ptr + (n64 * Q + qs) * 2, dvdx * scx, mask=qm)
    tl.store(gg_ptr + (n64 * Q + qs) * 2 + 1, dvdy * scy, mask=qm)


@triton.jit
def _sample_bwd_input_kernel(go_ptr, start_ptr, end_ptr, eq_ptr, ew_ptr, gi_ptr, C, HW, NHW, W,
                             sgn, sgc, sgq, sin, sic, sih, siw,
                             BLOCK_X: tl.constexpr, BLOCK_C: tl.constexpr):  # fmt: skip
    pix = tl.program_id(0) * BLOCK_X + tl.arange(0, BLOCK_X)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    xm = pix < NHW
    cm = cs < C
    start = tl.load(start_ptr + pix, mask=xm, other=0)
    count = tl.load(end_ptr + pix, mask=xm, other=0) - start
    n = (pix // HW).to(tl.int64)
    hw = pix % HW
    acc = tl.zeros([BLOCK_X, BLOCK_C], dtype=tl.float32)
    longest = tl.max(count, 0)
    for j in range(0, longest):
        live = j < count
        e = start + j
        q = tl.load(eq_ptr + e, mask=live, other=0).to(tl.int64)
        wgt = tl.load(ew_ptr + e, mask=live, other=0.0)
        g = tl.load(go_ptr + n[:, None] * sgn + cs[None, :] * sgc + q[:, None] * sgq,
                    mask=live[:, None] & cm[None, :], other=0.0)  # fmt: skip
        acc += g.to(tl.float32) * wgt[:, None]
    off = n[:, None] * sin + cs[None, :] * sic + ((hw // W) * sih + (hw % W) * siw)[:, None]
    tl.store(gi_ptr + off, acc.to(gi_ptr.dtype.element_ty), mask=xm[:, None] & cm[None, :])


_BQ = 64
_BX = 32


def _c_block(c: int) -> int:
    return max(16, min(64, triton.next_power_of_2(c)))


def _qstrides(t: torch.Tensor) -> tuple[int, int, int]:
    """Strides (n, c, q) of an (N, C, H, W) tensor whose (H, W) flatten to q = h W + w."""
    return t.stride(0), t.stride(1), t.stride(3)


def _sample_prep(input: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _layout(input), grid.float().contiguous()


def sample_forward(input: torch.Tensor, grid: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """V (N, C, H_out, W_out) in input's dtype and layout; eq. 5, zero padding."""
    input, grid = _sample_prep(input, grid)
    n, c, h, w = input.shape
    ho, wo = grid.shape[1], grid.shape[2]
    q = ho * wo
    cl = (not input.is_contiguous()) and input.is_contiguous(memory_format=torch.channels_last)
    fmt = torch.channels_last if cl else torch.contiguous_format
    out = torch.empty((n, c, ho, wo), dtype=input.dtype, device=input.device, memory_format=fmt)
    bc = _c_block(c)
    _sample_fwd_kernel[(n, triton.cdiv(q, _BQ), triton.cdiv(c, bc))](
        input, grid, out, c, h, w, q, input.stride(0), input.stride(1), input.stride(2),
        input.stride(3), *_qstrides(out), ALIGN=align_corners, BLOCK_Q=_BQ, BLOCK_C=bc,
    )  # fmt: skip
    return out


def _corner_table(grid: torch.Tensor, h: int, w: int, align_corners: bool):
    """Sorted (input pixel <- output pixel, weight) pairs: the deterministic scatter plan."""
    n, ho, wo = grid.shape[:3]
    q = ho * wo

    def pixel(g: torch.Tensor, size: int) -> torch.Tensor:
        out = (g + 1) * ((size - 1) * 0.5) if align_corners else ((g + 1) * size - 1) * 0.5
        return out.clamp(-2.0, size + 1.0)

    x = pixel(grid[..., 0].reshape(n, q), w)
    y = pixel(grid[..., 1].reshape(n, q), h)
    x0 = torch.floor(x)
    y0 = torch.floor(y)
    wx1, wy1 = x - x0, y - y0
    x0i, y0i = x0.long(), y0.long()
    sentinel = n * h * w
    base = torch.arange(n, device=grid.device).reshape(n, 1) * (h * w)
    keys, weights = [], []
    for dyk, wy in ((0, 1 - wy1), (1, wy1)):
        for dxk, wx in ((0, 1 - wx1), (1, wx1)):
            xi, yi = x0i + dxk, y0i + dyk
            ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            keys.append(torch.where(ok, base + yi * w + xi, sentinel))
            weights.append(wx * wy)
    key = torch.stack(keys, -1).reshape(-1)
    weight = torch.stack(weights, -1).reshape(-1)
    small = sentinel < 2**31 - 1
    if small:
        key = key.int()
    sorted_key, perm = torch.sort(key, stable=True)
    bounds = torch.searchsorted(
        sorted_key, torch.arange(sentinel + 1, device=grid.device, dtype=sorted_key.dtype)
    )
    entry_q = (perm // 4) % q
    entry_w = weight[perm]
    if small:
        bounds, entry_q = bounds.int(), entry_q.int()
    return bounds[:-1].contiguous(), bounds[1:].contiguous(), entry_q.contiguous(), entry_w


def sample_backward(
    grad_out: torch.Tensor,
    input: torch.Tensor,
    grid: torch.Tensor,
    align_corners: bool,
    need_input: bool,
    need_grid: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dL/dU by eq. 6, deterministic; dL/dgrid by eq. 7), each None when not needed."""
    input, grid = _sample_prep(input, grid)
    n, c, h, w = input.shape
    ho, wo = grid.shape[1], grid.shape[2]
    q = ho * wo
    go = _layout(grad_out.to(input.dtype))
    bc = _c_block(c)
    grad_input = grad_grid = None
    if need_grid:
        grad_grid = torch.empty(n, ho, wo, 2, dtype=torch.float32, device=input.device)
        _sample_bwd_grid_kernel[(n, triton.cdiv(q, _BQ))](
            input, grid, go, grad_grid, c, h, w, q, input.stride(0), input.stride(1),
            input.stride(2), input.stride(3), *_qstrides(go), ALIGN=align_corners,
            BLOCK_Q=_BQ, BLOCK_C=bc,
        )  # fmt: skip
    if need_input:
        start, stop, entry_q, entry_w = _corner_table(grid, h, w, align_corners)
        grad_input = _like(input)
        nhw = n * h * w
        _sample_bwd_input_kernel[(triton.cdiv(nhw, _BX), triton.cdiv(c, bc))](
            go, start, stop, entry_q, entry_w, grad_input, c, h * w, nhw, w, *_qstrides(go),
            grad_input.stride(0), grad_input.stride(1), grad_input.stride(2),
            grad_input.stride(3), BLOCK_X=_BX, BLOCK_C=bc,
        )  # fmt: skip
    return grad_input, grad_grid
