"""The (C,)-sized parts of a BatchNorm folded into the SE / CBAM kernels, in PyTorch ops.

BN(c) = gamma (c - mu) / sigma + beta is folded into the block's kernels as x = al c + be
(docs/kernels.md, "BatchNorm folded into the attention"). Two small steps surround the kernels:

    fold:           1/sigma = rsqrt(var + eps),  al = gamma / sigma,  be = beta - mu al
                    rows [al; be; mu; 1/sigma; beta]                                   (5, C)

    fold_backward:  from per-(n, c) sums of the block's backward (d = c - mu):
                    g  = P cavg + a t0 [+ count cmax]          (sum over p of dL/dx)
                    gd = cavg sum_d + a t1 [+ cmax tied_d]     (sum over p of dL/dx d)
                    G = sum_n g,  GD = sum_n gd,  GX = GD / sigma   (= dL/dbeta, dL/dgamma)
                    batch statistics: v = -(al / M) GX / sigma,  w = -(al / M) G,  M = N P;
                    running statistics: v = w = 0
                    rows [al; be; mu; v; w] for bwd_apply (dL/dc = al g_x + v d + w),
                    [GX; G] = [dL/dgamma; dL/dbeta]                                      (2, C)

    (SE: a = s, t0 = sum dy, t1 = sum dy d; CBAM: a = M_c, t0 / t1 the sums of dy b + w and
    (dy b + w) d. sum_d = sum d; count / tied_d the number of max ties and the sum of d over
    them, max pooling only.)

These run as PyTorch ops with the C++ kernels (:mod:`visattn.kernels.cpu`);
:mod:`visattn.kernels.triton_kernels` has the same two functions as one Triton kernel each,
so that a block on CUDA launches two kernels instead of about fifteen small ops. Tests:
``tests/kernels/test_kernels_norm_fusion.py`` (through the blocks) and
``tests/kernels/test_kernels_se_cbam.py::test_triton_fold_kernels_match_their_pytorch_formulas``
(the Triton versions against these, under the interpreter).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._backend import as_dtype

__all__ = ["fold", "fold_backward"]


def fold(weight: Tensor | None, bias: Tensor | None, mean: Tensor, var: Tensor,
         eps: float) -> Tensor:  # fmt: skip
    """Rows [al; be; mu; 1/sigma; beta] (5, C) float32 of BN(c) = al c + be = al (c - mu) + beta
    (gamma 1, beta 0 without the BatchNorm's affine parameters)."""
    mean = as_dtype(mean, torch.float32)
    inv = torch.rsqrt(as_dtype(var, torch.float32) + eps)
    al = inv * as_dtype(weight, torch.float32) if weight is not None else inv
    beta = as_dtype(bias, torch.float32) if bias is not None else torch.zeros_like(inv)
    return torch.stack([al, torch.addcmul(beta, mean, al, value=-1.0), mean, inv, beta])


def fold_backward(
    in_norm: Tensor,
    batch: bool,
    a: Tensor,
    t0: Tensor,
    t1: Tensor,
    cavg: Tensor,
    sum_d: Tensor,
    cmax: Tensor | None,
    count: Tensor | None,
    tied_d: Tensor | None,
    positions: int,
) -> tuple[Tensor, Tensor]:
    """(rows [al; be; mu; v; w] (5, C) for ``bwd_apply``, [dL/dgamma; dL/dbeta] (2, C)) from the
    (N, C) float32 sums listed in the module docstring; cmax, count and tied_d come together
    (max pooling) or not at all."""
    g = torch.addcmul(positions * cavg, a, t0)
    gd = torch.addcmul(cavg * sum_d, a, t1)
    if cmax is not None:
        g, gd = torch.addcmul(g, count, cmax), torch.addcmul(gd, cmax, tied_d)
    g, gd = g.sum(0), gd.sum(0)
    al, _, _, inv, _ = in_norm.unbind(0)
    gx = inv * gd
    if batch:
        scale = al * (-1.0 / (a.shape[0] * positions))
        vw = torch.stack([scale * inv * gx, scale * g])
    else:
        vw = in_norm.new_zeros(2, g.shape[0])
    return torch.cat([in_norm[:3], vw]), torch.stack([gx, g])
