"""Triton kernels of the Spatial Transformer's bilinear sampler (Jaderberg et al.,
arXiv:1506.02025, eq. 5-7), zero padding.

``sample_forward`` gathers the four corners (eq. 5); ``sample_backward`` evaluates eq. 7 (the
grid gradient) per output pixel, a gather summed over channels inside the program, and eq. 6
(the input gradient). Eq. 6 is a scatter in the paper's form, computed here deterministically as
a gather: the 4 N H_out W_out (corner -> input pixel) pairs are stably sorted by input pixel,
and one program per block of input pixels walks its pixels' segments in that fixed order. The
arithmetic is float32 whatever the input dtype. The operators around them are
:mod:`visattn.kernels.sampler`; their contract is
:class:`visattn.kernels._contract.SamplerKernels`.

Tests: ``tests/kernels/test_kernels_sampler.py`` (under the interpreter in
``tests/kernels/test_kernels_triton.py``), ``tests/kernels/test_kernels_triton_compile.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_common import layout, like, memory_format, strides

__all__ = ["sample_backward", "sample_forward"]


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


_BQ = 64  # output points per program of the forward / grid-gradient kernels
_BX = 32  # input pixels per program of the input-gradient kernel


def _c_block(c: int) -> int:
    """Channels per program: 16 to 64."""
    return max(16, min(64, triton.next_power_of_2(c)))


def _sample_prep(input: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return layout(input), grid.float().contiguous()


def sample_forward(input: torch.Tensor, grid: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """V (N, C, H_out, W_out) in input's dtype and layout; eq. 5, zero padding."""
    input, grid = _sample_prep(input, grid)
    n, c, h, w = input.shape
    ho, wo = grid.shape[1], grid.shape[2]
    q = ho * wo
    out = torch.empty((n, c, ho, wo), dtype=input.dtype, device=input.device,
                      memory_format=memory_format(input))  # fmt: skip
    bc = _c_block(c)
    _sample_fwd_kernel[(n, triton.cdiv(q, _BQ), triton.cdiv(c, bc))](
        input, grid, out, c, h, w, q, input.stride(0), input.stride(1), input.stride(2),
        input.stride(3), *strides(out), ALIGN=align_corners, BLOCK_Q=_BQ, BLOCK_C=bc,
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
    go = layout(grad_out.to(input.dtype))
    bc = _c_block(c)
    grad_input = grad_grid = None
    if need_grid:
        grad_grid = torch.empty(n, ho, wo, 2, dtype=torch.float32, device=input.device)
        _sample_bwd_grid_kernel[(n, triton.cdiv(q, _BQ))](
            input, grid, go, grad_grid, c, h, w, q, input.stride(0), input.stride(1),
            input.stride(2), input.stride(3), *strides(go), ALIGN=align_corners,
            BLOCK_Q=_BQ, BLOCK_C=bc,
        )  # fmt: skip
    if need_input:
        start, stop, entry_q, entry_w = _corner_table(grid, h, w, align_corners)
        grad_input = like(input)
        nhw = n * h * w
        _sample_bwd_input_kernel[(triton.cdiv(nhw, _BX), triton.cdiv(c, bc))](
            go, start, stop, entry_q, entry_w, grad_input, c, h * w, nhw, w, *strides(go),
            grad_input.stride(0), grad_input.stride(1), grad_input.stride(2),
            grad_input.stride(3), BLOCK_X=_BX, BLOCK_C=bc,
        )  # fmt: skip
    return grad_input, grad_grid
