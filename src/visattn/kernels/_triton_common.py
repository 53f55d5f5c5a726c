"""What the Triton kernels share: tile sizes, the (N, C, P) view of a 4-D tensor, output layouts
and the folded BatchNorm's load x~ = fma(c, al, be).

x (N, C, H, W) is addressed as (N, C, P) with P = H W through its strides, so NCHW and
channels_last tensors take the same kernels (Triton specialises unit strides, which gives
coalesced tiles either way). A BatchNorm folded in front of a block (BN(c) = al c + be with the
rows [al; be; mu; ...] of ``fold``, docs/kernels.md, "BatchNorm folded into the attention") is
applied as c is loaded, by :func:`bn_x`, in every kernel alike.

Used by :mod:`visattn.kernels._triton_block`, ``_triton_excite``, ``_triton_fold`` and
``_triton_sampler``; the public functions are re-exported by
:mod:`visattn.kernels.triton_kernels`. Tests: ``tests/kernels/test_kernels_triton.py``
(interpreter), ``tests/kernels/test_kernels_triton_compile.py`` (sm_90 compile).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = [
    "BLOCK_H",
    "BLOCK_K",
    "BLOCK_N",
    "TILE",
    "bn_x",
    "layout",
    "like",
    "memory_format",
    "norm_rows",
    "strides",
    "tiles",
]

TILE = 4096  # elements of an x tile (BLOCK_C x BLOCK_P)

# Tiles of the (N, C)-sized kernels (the excitation MLP, the folded BatchNorm's backward).
BLOCK_N = 16  # samples per program (tl.dot needs >= 16)
BLOCK_H = 32  # hidden units per tile
BLOCK_K = 64  # channels per tile


def tiles(p: int) -> tuple[int, int]:
    """(BLOCK_C, BLOCK_P) by stage: 128 positions per tile where H W >= 128 (ResNet stages 1-3:
    32 x 128), fewer where the map is small, with more channels, so that a 7 x 7 map fills 49 of
    64 positions instead of 49 of 128 (64 x 64)."""
    bp = max(16, min(128, triton.next_power_of_2(p)))
    return TILE // bp, bp


def layout(x: torch.Tensor) -> torch.Tensor:
    """x with strides that flatten (H, W) into one P axis (NCHW or channels_last)."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def strides(t: torch.Tensor) -> tuple[int, int, int]:
    """Strides (n, c, p) of an (N, C, H, W) tensor whose (H, W) flatten to p = h W + w."""
    return t.stride(0), t.stride(1), t.stride(3)


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a channels_last (and not contiguous) x, else contiguous."""
    cl = (not x.is_contiguous()) and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl else torch.contiguous_format


def like(x: torch.Tensor) -> torch.Tensor:
    """An empty tensor of x's shape, dtype, device and layout."""
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format(x))


@triton.jit
def bn_x(v, al, be, DT: tl.constexpr):
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
def norm_rows(nrm_ptr, cs, cm, C):
    """Rows al, be of the folded BatchNorm (1 and 0 where cm is False)."""
    al = tl.load(nrm_ptr + cs, mask=cm, other=1.0)
    be = tl.load(nrm_ptr + C + cs, mask=cm, other=0.0)
    return al, be
