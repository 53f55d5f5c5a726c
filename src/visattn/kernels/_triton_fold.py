"""Triton kernels of a BatchNorm folded into the SE / CBAM blocks (Ioffe & Szegedy,
arXiv:1502.03167, folded as in docs/kernels.md, "BatchNorm folded into the attention").

The (C,)-sized steps around the folded blocks, whose formulas (in PyTorch ops, the CPU
backend's) are :mod:`visattn.kernels._fold`:

    fold:           rows [al; be; mu; 1/sigma; beta] (5, C),  al = gamma / sigma, be = beta - mu al
    fold_backward:  rows [al; be; mu; v; w] for ``bwd_apply`` and [dL/dgamma; dL/dbeta] (2, C)

One launch each way instead of about five and fifteen small PyTorch ops. ``_fold_bwd_kernel``
adds its per-sample terms over N in a fixed order: deterministic.

Tests: ``tests/kernels/test_kernels_se_cbam.py::test_triton_fold_kernels_match_their_pytorch_formulas``
and ``tests/kernels/test_kernels_norm_fusion.py`` (through the blocks, under the interpreter in
``tests/kernels/test_kernels_triton.py``), ``tests/kernels/test_kernels_triton_compile.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._backend import flat_f32
from ._triton_common import BLOCK_K, BLOCK_N

__all__ = ["fold", "fold_backward"]


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
    _fold_bwd_kernel[(triton.cdiv(c, BLOCK_K),)](
        flat_f32(in_norm), a, t0, t1, cavg, sum_d, cmax, count, tied_d, rows, dnorm, n, c,
        float(positions), 1.0 / (n * positions), HAS_MAX=has_max, BATCH=bool(batch),
        BLOCK_N=BLOCK_N, BLOCK_C=BLOCK_K,
    )  # fmt: skip
    return rows, dnorm
