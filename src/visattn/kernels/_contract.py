"""The kernels' contract: what the custom operators call on a backend module, and what each
function computes.

Two backends implement :class:`BlockKernels`, the passes of the fused SE (Hu et al.,
arXiv:1709.01507, eq. 2-4) and CBAM (Woo et al., arXiv:1807.06521, eq. 1-3) blocks, forward and
hand-derived backward (the formulas are in :mod:`visattn.kernels.ops`'s docstring):

- :mod:`visattn.kernels.cpu` (``impl="c"``): C++ with OpenMP for the full-size passes, PyTorch
  ops for the small ones (:mod:`visattn.kernels._excite`, :mod:`visattn.kernels._fold`);
- :mod:`visattn.kernels.triton_kernels` (``impl="triton"``): Triton kernels for all of them.

:mod:`visattn.kernels.ops` picks one with ``block_kernels(impl)`` and calls only the functions
listed here, by these parameter names and in this order. :class:`SamplerKernels` is the
contract of the Spatial Transformer's bilinear sampler (Jaderberg et al., arXiv:1506.02025,
eq. 5-7) behind :mod:`visattn.kernels.sampler`, implemented by the Triton backend only (on CPU
the sampler is ``torch.nn.functional.grid_sample``).

Conventions: x (the block's input) is (N, C, H, W), float32 or bfloat16, NCHW or channels_last
(other strides are made contiguous first); P = H W. Per-channel tensors are float32 (N, C),
per-position ones float32 (N, P), the excitation MLP's float32 (K, N, .) over the K pools
(SE: K = 1; CBAM: avg then max). ``norm`` is a BatchNorm folded in front of the block: float32
rows [al; be; mu; ...] (5, C) of ``fold``, and the kernels read x~ = fma(x, al, be), rounded to
x's dtype, wherever x appears below (d = x - mu is taken on the raw x). Every result is
deterministic (no atomics).

Tests: ``tests/kernels/test_kernels_contract.py`` (both backends match these signatures), the
numbers in ``tests/kernels/test_kernels_se_cbam.py``, ``test_kernels_norm_fusion.py`` and
``test_kernels_sampler.py`` (the Triton backend under the interpreter through
``tests/kernels/test_kernels_triton.py``).
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

__all__ = [
    "BLOCK_KERNEL_NAMES",
    "SAMPLER_KERNEL_NAMES",
    "BlockKernels",
    "SamplerKernels",
    "contract_names",
]


class BlockKernels(Protocol):
    """The SE / CBAM kernels of one backend (a module: its functions take no ``self``)."""

    # --------------------------------------------------------------------------- forward

    def stats_c(self, x: Tensor, norm: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The channel pools: (sum_p x, max_p x), each float32 (N, C).

        SE's squeeze z = mean_p x (eq. 2) and CBAM's channel descriptors (eq. 2) divide the sum
        by P."""
        ...

    def apply(
        self, x: Tensor, a: Tensor, b: Tensor | None = None, norm: Tensor | None = None
    ) -> Tensor:
        """The product y = x a_c b_p (b_p = 1 without ``b``), in x's dtype and layout.

        a: float32 (N, C), SE's s (eq. 4) or CBAM's M_c; b: float32 (N, P), CBAM's M_s."""
        ...

    def stats_p(self, x: Tensor, a: Tensor, norm: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """CBAM's spatial pools of x' = a_c x (eq. 3): (sum_c a_c x, max_c a_c x), each float32
        (N, P)."""
        ...

    def excite(
        self, z: Tensor, w1: Tensor, b1: Tensor | None, w2: Tensor, b2: Tensor | None, gate: str
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The excitation MLP (SE eq. 3, CBAM eq. 2), all float32: (h, l, s) with

        h_k = ReLU(W_1 z_k + b_1) (K, N, HID), l = sum_k (W_2 h_k + b_2) (N, C), s = gate(l)
        (N, C); z (K, N, C), W_1 (HID, C), W_2 (C, HID); ``gate`` one of
        :data:`visattn._modes.GATES`."""
        ...

    def fold(
        self, weight: Tensor | None, bias: Tensor | None, mean: Tensor, var: Tensor, eps: float
    ) -> Tensor:
        """The rows [al; be; mu; 1/sigma; beta] (5, C) float32 of a BatchNorm folded into the
        block: BN(c) = al c + be = al (c - mu) + beta, 1/sigma = rsqrt(var + eps),
        al = gamma / sigma, be = beta - mu al (gamma 1, beta 0 without ``weight`` / ``bias``)."""
        ...

    # --------------------------------------------------------------------------- backward

    def bwd_reduce(
        self,
        dy: Tensor,
        x: Tensor,
        a: Tensor,
        b: Tensor | None = None,
        zmax: Tensor | None = None,
        pmax: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """The backward's first pass: (q, db, zcount, pcount).

        q_c = sum_p dy x b_p (N, C) (b_p = 1 without ``b``: SE's ds); with ``b`` (CBAM)
        db_p = sum_c dy a_c x (N, P); with ``zmax`` (max pool of the channels, (N, C)) the tie
        counts zcount_c = sum_p [x == zmax_c] (N, C) and, with ``b`` and ``pmax`` (the spatial
        max pool, (N, P)), pcount_p = sum_c [a_c x == pmax_p] (N, P). None where not computed."""
        ...

    def bwd_reduce_norm(
        self,
        dy: Tensor,
        x: Tensor,
        a: Tensor,
        b: Tensor | None,
        zmax: Tensor | None,
        pmax: Tensor | None,
        norm: Tensor,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """:meth:`bwd_reduce` with a folded BatchNorm, as sums on d = x - mu: (mom, db, pcount).

        mom float32 (R, N, C) with rows sum_p dy b_p, sum_p dy b_p d, sum_p d and, with
        ``zmax``, sum_p [x~ == zmax_c] and sum_p [x~ == zmax_c] d (R = 5, else 3); db and
        pcount as in :meth:`bwd_reduce`, on x~."""
        ...

    def bwd_channel(
        self,
        x: Tensor,
        a: Tensor,
        gavg: Tensor,
        gmax: Tensor | None = None,
        pmax: Tensor | None = None,
    ) -> Tensor:
        """CBAM's spatial-map gradient brought back to the channels: float32 (N, C)
        out_c = sum_p x w_p, w_p = gavg_p + [a_c x == pmax_p] gmax_p (gavg, gmax, pmax (N, P))."""
        ...

    def bwd_channel_norm(
        self,
        x: Tensor,
        a: Tensor,
        gavg: Tensor,
        gmax: Tensor | None,
        pmax: Tensor | None,
        norm: Tensor,
    ) -> Tensor:
        """:meth:`bwd_channel` with a folded BatchNorm: float32 (2, N, C) with rows
        sum_p [a_c x~ == pmax_p] gmax_p (zeros without ``gmax``) and sum_p d w_p, d = x - mu."""
        ...

    def excite_backward(
        self,
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
        """The MLP's backward to its input, all float32: (dl, dh, cavg, cmax) with

        dl = gate'(l) ds (N, C), dh_k = (dl W_2) [h_k > 0] (K, N, HID), dz_k = dh_k W_1,
        cavg = dz_avg / positions (zeros without an avg pool; pool k = 0), cmax = dz_max / count
        (None without a max pool; pool k = K - 1). The logits ``l`` are read by the
        hard_sigmoid and relu gates only (None is fine otherwise)."""
        ...

    def excite_wgrad(
        self, dl: Tensor, dh: Tensor, z: Tensor, h: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The MLP's parameter gradients, float32: (dW_1 (HID, C), db_1 (HID,), dW_2 (C, HID),
        db_2 (C,)) = (sum_k dh_k^T z_k, sum_k sum_n dh_k, dl^T sum_k h_k, K sum_n dl)."""
        ...

    def fold_backward(
        self,
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
        """The folded BatchNorm's backward from per-(n, c) float32 sums: (rows, dnorm).

        g = P cavg + a t0 [+ count cmax], gd = cavg sum_d + a t1 [+ cmax tied_d] (per (n, c));
        G = sum_n g, GX = sum_n gd / sigma. rows [al; be; mu; v; w] (5, C) for
        :meth:`bwd_apply`, with v = -(al / M) GX / sigma, w = -(al / M) G, M = N P for the
        batch's statistics (``batch``), v = w = 0 for running ones; dnorm = [dL/dgamma;
        dL/dbeta] = [GX; G] (2, C). ``cmax``, ``count`` and ``tied_d`` come together (max
        pooling) or not at all. Formulas: :mod:`visattn.kernels._fold`."""
        ...

    def bwd_apply(
        self,
        dy: Tensor,
        x: Tensor,
        a: Tensor,
        b: Tensor | None,
        gavg: Tensor | None,
        gmax: Tensor | None,
        pmax: Tensor | None,
        cavg: Tensor,
        cmax: Tensor | None,
        zmax: Tensor | None,
        norm: Tensor | None = None,
    ) -> Tensor:
        """The input gradient, in x's dtype and layout:

        dx = a_c (dy b_p + gavg_p + [a_c x == pmax_p] gmax_p) + cavg_c + [x == zmax_c] cmax_c
        (SE: no b, gavg, gmax, pmax). With ``norm`` (rows [al; be; mu; v; w] of
        :meth:`fold_backward`) that r = dL/dx~ is returned as dL/dx = al_c r + v_c (x - mu_c)
        + w_c, the folded BatchNorm's backward."""
        ...


class SamplerKernels(Protocol):
    """The bilinear sampler's kernels (zero padding; float32 arithmetic whatever the dtype)."""

    def sample_forward(self, input: Tensor, grid: Tensor, align_corners: bool) -> Tensor:
        """V = sampler(U, grid), eq. 5: U (N, C, H, W), grid (N, H_out, W_out, 2) of (x, y) in
        [-1, 1]; V (N, C, H_out, W_out) in U's dtype and layout."""
        ...

    def sample_backward(
        self,
        grad_out: Tensor,
        input: Tensor,
        grid: Tensor,
        align_corners: bool,
        need_input: bool,
        need_grid: bool,
    ) -> tuple[Tensor | None, Tensor | None]:
        """(dL/dU by eq. 6, in U's dtype and layout, deterministic; dL/dgrid by eq. 7, float32
        (N, H_out, W_out, 2)), each None when not needed."""
        ...


def contract_names(protocol: type) -> tuple[str, ...]:
    """The names of the functions a backend module defines for ``protocol``, in its order: the
    backend modules' ``__all__`` is built from them, so the two cannot drift apart."""
    return tuple(
        name for name, member in vars(protocol).items()
        if not name.startswith("_") and callable(member)
    )  # fmt: skip


#: What :mod:`visattn.kernels.cpu` and :mod:`visattn.kernels.triton_kernels` export.
BLOCK_KERNEL_NAMES = contract_names(BlockKernels)
#: What :mod:`visattn.kernels.triton_kernels` exports besides.
SAMPLER_KERNEL_NAMES = contract_names(SamplerKernels)
