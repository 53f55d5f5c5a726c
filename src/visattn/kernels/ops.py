"""``torch.library`` custom operators of the fused SE / CBAM blocks (namespace ``visattn::``).

SE (Hu et al., arXiv:1709.01507): y = x * s,  s = gate(W_2 ReLU(W_1 z) + b_2),  z = pool_p(x).
CBAM (Woo et al., arXiv:1807.06521, channel first): a = M_c = sigma(sum_k MLP(z_k)),
b = M_s = sigma(conv([mean_c(a x); max_c(a x)])),  y = x * a * b.

Hand-derived backward (sums over p run over the H W positions, over c over the channels)::

    SE:    ds_c = sum_p dy x                     dx = s_c dy + dz_c / (H W)          (avg)
                                                 dx = s_c dy + [x == z_c] dz_c / n_c   (max)
    CBAM:  db_p = sum_c dy a_c x,  dP = conv^T(db b (1 - b)),  g_p = dP_avg / C,
           h_p = dP_max / m_p,     da_c = sum_p x (dy b_p + g_p + [a_c x == Pmax_p] h_p)
           dx = a_c (dy b_p + g_p + [a_c x == Pmax_p] h_p) + dz_avg,c / (H W) + [x == zmax_c] dz_max,c / n_c

With BatchNorm after the convolution (``norm=True``) dP uses the BatchNorm gradient of the
(N, H, W) map (batch statistics in training, running statistics in evaluation) in between.

where n_c (m_p) counts the positions (channels) that reach the maximum: like ``torch.amax``, tied
maxima share the gradient equally. The MLP / gate / convolution parts are (N, C) or (N, H, W)
sized (the MLP through the ``excite*`` functions of the kernel module, see
:mod:`visattn.kernels._excite`); every full-size pass is one kernel of :mod:`visattn.kernels.cpu`
(``impl="c"``) or :mod:`visattn.kernels.triton_kernels` (``impl="triton"``): 4 passes forward for
CBAM, 6 backward; 3 + 4 for SE. Of the full-size tensors only x (the block input) is saved for
backward.

With ``in_norm`` the block's input is x = BN(c) of the BatchNorm before it (a residual branch's
last one), folded into every kernel: the operators take c and per-channel rows
``in_norm = [al; be; mu; 1/sigma; beta]`` (5, C), al = gamma / sigma, be = beta - mu al, and each kernel
computes x = fma(c, al, be) as it loads c, so x never exists in memory (the last row is beta,
0 without the BatchNorm's bias: x = al (c - mu) + beta). The backward operators
return dL/dc directly: with d = c - mu and g = dL/dx, the kernels' reductions give
G = sum g and GD = sum g d per channel (over N, H, W; from per-(n, c) sums on d), and the
last pass writes

    dL/dc = al g + v d + w,   v = -al GD / (sigma^2 M),  w = -al G / M   (batch statistics, M = N H W)
    dL/dgamma = GD / sigma,   dL/dbeta = G                               (v = w = 0 with running ones)

which is BatchNorm's backward: SE + BatchNorm then take 4 passes forward (the statistics, the
pool, the product) and 5 backward, against 3 + 5 for the BatchNorm alone.

The channel gate ``visattn::channel_gate`` (x, [params], excitation, squeeze, impl) is SE with
a pluggable excitation: y = x * s, s = E(z, *params), z = pool_p(x), E registered by name
(:func:`visattn.kernels._excite.register_excitation`); SE's full-size passes, and E's backward
by autograd on the (N, C) tensors inside ``visattn::channel_gate_backward``::

    q_c = sum_p dy x,   (dz, dparams) = vjp_E(z, params)(q),   dx = s_c dy + dz_c / (H W)   (avg)
                                                               dx = s_c dy + [x == z_c] dz_c / n_c  (max)

Extra outputs (s / a, b, the pooled statistics, the MLP's hidden units h and SE's logits l) are
internal, marked non-differentiable, and handed to the backward operator.
Double backward is not supported.

The schemas are flat (torch.compile and opcheck need them so); their argument groups are named
tuples, :class:`SeParams`, :class:`SeOptions`, :class:`SeSaved` and :class:`CbamParams`,
:class:`CbamOptions`, :class:`CbamSaved` (the backward operators return :class:`SeGrads` /
:class:`CbamGrads`), defined in :mod:`visattn.kernels._op_args` and exported here, from which
the schemas are written, so that
``torch.ops.visattn.cbam(x, *CbamParams(...), in_norm, *CbamOptions(...))`` is the call. The
functions called on a backend are those of :class:`visattn.kernels._contract.BlockKernels`.
Tests: ``tests/kernels/test_kernels_se_cbam.py`` (opcheck, reference comparisons,
torch.compile), ``tests/kernels/test_kernels_channel_gate.py`` (the channel gate),
``tests/kernels/test_kernels_contract.py`` (the schemas and the backends' contract).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from .._modes import BnMode
from ._backend import as_dtype
from ._contract import BlockKernels
from ._op_args import (
    CBAM_ARGS,
    CBAM_BACKWARD_ARGS,
    NAMED_TUPLES,
    SE_ARGS,
    SE_BACKWARD_ARGS,
    CbamGrads,
    CbamOptions,
    CbamParams,
    CbamSaved,
    SeGrads,
    SeOptions,
    SeParams,
    SeSaved,
    group,
    schema,
)

__all__ = [*NAMED_TUPLES, "block_kernels", "cbam", "cbam_backward", "channel_gate",
           "channel_gate_backward", "squeeze_excite", "squeeze_excite_backward"]  # fmt: skip


def _no_autocast(fn):
    """Run an operator's implementation with autocast off: its small float32 parts (MLP, gate,
    convolution) must stay float32 whatever autocast the caller has on (the fake kernels say so)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device_type = args[0].device.type
        if not torch.is_autocast_enabled(device_type):
            return fn(*args, **kwargs)
        with torch.autocast(device_type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper


def block_kernels(impl: str) -> BlockKernels:
    """The backend module of ``impl``: :mod:`visattn.kernels.cpu` (``"c"``) or
    :mod:`visattn.kernels.triton_kernels` (``"triton"``)."""
    if impl == "c":
        from . import cpu

        return cpu
    if impl == "triton":
        from . import triton_kernels

        return triton_kernels
    raise ValueError(f"impl: expected 'c' or 'triton', got {impl!r}")


_kernels = block_kernels  # the former private name, still used by visattn.functional and bench

# The helpers below skip no-op conversions: every call through the dispatcher costs host time,
# which is what bounds these operators on a GPU (docs/benchmarks.md).


def _f32(t: Tensor) -> Tensor:
    return as_dtype(t, torch.float32)


def _mat(w: Tensor) -> Tensor:
    return _f32(w if w.dim() == 2 else w.reshape(w.shape[0], -1))


def _vector(b: Tensor | None) -> Tensor | None:
    return _f32(b) if b is not None else None


def _mlp(p: SeParams | CbamParams) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """(W_1, b_1, W_2, b_2) as the kernels' ``excite`` takes them: float32 matrices."""
    return _mat(p.w1), _vector(p.b1), _mat(p.w2), _vector(p.b2)


def _cast_like(g: Tensor | None, ref: Tensor | None, x: Tensor) -> Tensor:
    """g in ref's shape and dtype; for an absent parameter (ref None) an empty tensor like x's,
    as the fake kernels return."""
    if ref is None or g is None:
        return x.new_empty(0)
    g = g if g.shape == ref.shape else g.reshape(ref.shape)
    return as_dtype(g, ref.dtype)


def _empty_grad(ref: Tensor | None, like: Tensor) -> Tensor:
    return like.new_empty(0) if ref is None else torch.empty_like(ref)


def _norm_grad(in_norm: Tensor | None, x: Tensor) -> Tensor:
    if in_norm is None:
        return x.new_empty(0)
    return x.new_empty(2, x.shape[1], dtype=torch.float32)


def _shifted(q1: Tensor, q0: Tensor, in_norm: Tensor) -> Tensor:
    """sum_p t x from the kernels' sums on d = c - mu: x = al d + beta, so
    sum_p t x = al sum_p t d + beta sum_p t, per (n, c)."""
    return torch.addcmul(in_norm[4] * q0, in_norm[0], q1)


def _no_norm_autograd(ctx) -> None:
    if ctx.in_norm:
        raise NotImplementedError(
            "in_norm: the operators' own autograd does not cover a folded BatchNorm; call "
            "visattn.functional.squeeze_excite / cbam with input_norm= instead"
        )


def _needed(grads, params, need) -> tuple[Tensor | None, ...]:
    """The parameters' gradients for autograd: None where a parameter is absent or needs none."""
    return tuple(
        g if p is not None and n else None for g, p, n in zip(grads, params, need, strict=True)
    )


def _setup(ctx, x: Tensor, saved: tuple, params: tuple, in_norm, options: tuple) -> None:
    """The autograd context of a block: x, its saved outputs and parameters, the options."""
    ctx.save_for_backward(x, *saved, *params)
    ctx.options = options
    ctx.in_norm = in_norm is not None
    ctx.set_materialize_grads(False)  # no zero tensors for the extra outputs' (unread) gradients


def _unsave(ctx, saved_type: type, params_type: type) -> tuple:
    """(x, saved, params) from what :func:`_setup` saved."""
    x, *rest = ctx.saved_tensors
    k = len(saved_type._fields)
    return x, saved_type._make(rest[:k]), params_type._make(rest[k:])


# ----------------------------------------------------------------------------- SE


@torch.library.custom_op(
    "visattn::squeeze_excite", mutates_args=(), schema=schema(SE_ARGS, 1 + len(SeSaved._fields))
)
@_no_autocast
def squeeze_excite(x: Tensor, *args) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused SE forward, ``(x, *SeParams, in_norm, *SeOptions)``: returns (y, *SeSaved) with
    s, z and the logits l float32 (N, C) and the MLP's hidden units h float32 (1, N, C/r), kept
    for backward. With ``in_norm`` x is the BatchNorm's input c (the block runs on BN(c), see
    the module's docstring)."""
    _, params, in_norm, opt = group((x, *args), SE_ARGS)
    k = block_kernels(opt.impl)
    total, peak = k.stats_c(x, in_norm)
    z = total / (x.shape[2] * x.shape[3]) if opt.squeeze == "avg" else peak
    h, l, s = k.excite(z.unsqueeze(0), *_mlp(params), opt.gate)
    return k.apply(x, s, None, in_norm), s, z, h, l


@squeeze_excite.register_fake
def _(x, *args):
    params = group((x, *args), SE_ARGS)[1]
    n, c = x.shape[:2]
    vec = x.new_empty(n, c, dtype=torch.float32)
    hidden = x.new_empty(1, n, params.w1.shape[0], dtype=torch.float32)
    return torch.empty_like(x), vec, torch.empty_like(vec), hidden, torch.empty_like(vec)


@torch.library.custom_op(
    "visattn::squeeze_excite_backward",
    mutates_args=(),
    schema=schema(SE_BACKWARD_ARGS, len(SeGrads._fields)),
)
@_no_autocast
def squeeze_excite_backward(dy: Tensor, *args) -> tuple[Tensor, ...]:
    """Gradients :class:`SeGrads` (dx, dw1, db1, dw2, db2, dnorm) of the fused SE, from
    ``(dy, x, *SeSaved, *SeParams, in_norm, in_norm_batch, *SeOptions, need_dx)``; empty
    tensors for absent ones.

    With ``in_norm``: dx is dL/dc and dnorm float32 (2, C) holds dL/dgamma and dL/dbeta of the
    folded BatchNorm (``in_norm_batch``: it used the batch's statistics)."""
    _, x, sv, params, in_norm, in_norm_batch, opt, need_dx = group((dy, *args), SE_BACKWARD_ARGS)
    k = block_kernels(opt.impl)
    s, z = sv.s, sv.z
    is_max = opt.squeeze == "max"
    zmax = z if is_max else None
    positions = x.shape[2] * x.shape[3]
    if in_norm is None:
        q, _, count, _ = k.bwd_reduce(dy, x, s, None, zmax, None)
    else:  # rows: sum dy, sum dy d, sum d[, tie count, sum over ties of d]
        mom, _, _ = k.bwd_reduce_norm(dy, x, s, None, zmax, None, in_norm)
        q, count = _shifted(mom[1], mom[0], in_norm), mom[3] if is_max else None
    w1m, _, w2m, _ = _mlp(params)
    dl, dh, cavg, cmax = k.excite_backward(q, sv.l, s, sv.h, w1m, w2m, count, positions,
                                           not is_max, is_max, opt.gate)  # fmt: skip
    dw1, db1, dw2, db2 = k.excite_wgrad(dl, dh, z.unsqueeze(0), sv.h)
    rows, dnorm = None, x.new_empty(0)
    if in_norm is not None:  # dL/dx = s dy + cavg + [x == zmax] cmax, summed over p (and * d)
        tied = mom[4] if is_max else None
        rows, dnorm = k.fold_backward(in_norm, in_norm_batch, s, mom[0], mom[1], cavg, mom[2],
                                      cmax, count, tied, positions)  # fmt: skip
    if need_dx:
        dx = k.bwd_apply(dy, x, s, None, None, None, None, cavg, cmax, zmax, rows)
    else:
        dx = x.new_empty(0)
    casts = (_cast_like(g, p, x) for g, p in zip((dw1, db1, dw2, db2), params, strict=True))
    return tuple(SeGrads(dx, *casts, dnorm))


@squeeze_excite_backward.register_fake
def _(dy, *args):
    _, x, _, params, in_norm, _, _, need_dx = group((dy, *args), SE_BACKWARD_ARGS)
    dx = torch.empty_like(x) if need_dx else x.new_empty(0)
    grads = (_empty_grad(p, x) for p in params)
    return tuple(SeGrads(dx, *grads, _norm_grad(in_norm, x)))


def _se_setup(ctx, inputs, output):
    x, params, in_norm, options = group(inputs, SE_ARGS)
    saved = SeSaved._make(output[1:])
    _setup(ctx, x, saved, params, in_norm, options)
    ctx.mark_non_differentiable(*saved)


def _se_backward(ctx, dy, *_):
    x, saved, params = _unsave(ctx, SeSaved, SeParams)
    _no_norm_autograd(ctx)
    need = ctx.needs_input_grad
    grads = SeGrads._make(torch.ops.visattn.squeeze_excite_backward(
        dy, x, *saved, *params, None, False, *ctx.options, bool(need[0])
    ))  # fmt: skip
    # one gradient per input of the schema: x, the parameters, in_norm, the options
    param_grads = _needed(grads[1:5], params, need[1:5])
    return grads.dx if need[0] else None, *param_grads, None, *[None] * len(SeOptions._fields)


squeeze_excite.register_autograd(_se_backward, setup_context=_se_setup)


# ----------------------------------------------------------------------------- CBAM


def _conv_backward(
    grad: Tensor, pooled: Tensor, weight: Tensor, bias: bool, impl: str
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Gradients of the spatial map's k x k convolution (one output channel, padding k // 2).

    On CPU two small convolutions (the transposed kernel for the input, input and gradient
    swapped for the weight) are about 3x faster than oneDNN's convolution_backward here.
    """
    pad = weight.shape[-1] // 2
    if impl != "c":
        return torch.ops.aten.convolution_backward(
            grad, pooled, weight, [1] if bias else None, [1, 1], [pad, pad], [1, 1], False,
            [0, 0], 1, [True, True, bias],
        )  # fmt: skip
    d_in = F.conv2d(grad, weight.flip(-1, -2).transpose(0, 1), padding=pad)
    d_w = F.conv2d(pooled.transpose(0, 1), grad.transpose(0, 1), padding=pad).transpose(0, 1)
    return d_in, d_w, grad.sum((0, 2, 3)) if bias else None


def _spatial_logits(pooled: Tensor, p: CbamParams, bn_mode: BnMode):
    """f^{k x k}(pooled) and the statistics its optional BatchNorm uses (float32 (1,) each, None
    without it): the batch's mean and biased variance (``BnMode.BATCH``), or the running ones
    (``BnMode.RUNNING``)."""
    cb = _f32(p.conv_b) if p.conv_b is not None else None
    lg = F.conv2d(pooled, _f32(p.conv_w), cb, padding=p.conv_w.shape[-1] // 2)
    if bn_mode == BnMode.NONE:
        return lg, None, None
    if bn_mode == BnMode.BATCH:
        var, mean = torch.var_mean(lg, unbiased=False)
        return lg, mean.reshape(1), var.reshape(1)
    return lg, _f32(p.bn_mean).reshape(1), _f32(p.bn_var).reshape(1)


@torch.library.custom_op(
    "visattn::cbam", mutates_args=(), schema=schema(CBAM_ARGS, 2 + len(CbamSaved._fields))
)
@_no_autocast
def cbam(x: Tensor, *args) -> tuple[Tensor, ...]:
    """Fused CBAM forward (channel first), ``(x, *CbamParams, in_norm, *CbamOptions)``: returns
    (y, *CbamSaved, stats) = (y, a, b, z, pooled, h, stats).

    a: M_c float32 (N, C); b: M_s float32 (N, H W); z: the channel pools float32 (K, N, C);
    pooled: the spatial pools float32 (N, K, H, W), avg before max, K = use_avg + use_max;
    h: the shared MLP's hidden units float32 (K, N, C/r), kept for backward.
    ``bn_mode`` (:class:`visattn._modes.BnMode`) NONE: no BatchNorm after the convolution;
    BATCH: BatchNorm with the batch's statistics (training); RUNNING: with ``bn_mean`` /
    ``bn_var`` (evaluation). stats: float32 (2,), the batch mean and biased variance of the
    convolution's output (BATCH; the caller updates the running statistics from them, the
    operator mutates nothing). With ``in_norm`` x is the input c of a BatchNorm folded in front
    (see the module's docstring).
    """
    _, params, in_norm, opt = group((x, *args), CBAM_ARGS)
    if not (opt.use_avg or opt.use_max):
        raise ValueError("pool: expected at least one of 'avg', 'max'")
    k = block_kernels(opt.impl)
    n, c, hh, ww = x.shape
    total, peak = k.stats_c(x, in_norm)
    zs = ([total / (hh * ww)] if opt.use_avg else []) + ([peak] if opt.use_max else [])
    z = torch.stack(zs)
    h, _, a = k.excite(z, *_mlp(params), "sigmoid")
    psum, pmax = k.stats_p(x, a, in_norm)
    maps = ([psum / c] if opt.use_avg else []) + ([pmax] if opt.use_max else [])
    pooled = torch.stack(maps, 1).reshape(n, len(maps), hh, ww)
    # the map's BatchNorm with PyTorch's own kernels: one call (on a GPU every call costs host time)
    logit, mean, var = _spatial_logits(pooled, params, opt.bn_mode)
    stats = torch.cat([mean, var]) if opt.bn_mode == BnMode.BATCH else logit.new_zeros(2)
    if opt.bn_mode != BnMode.NONE:
        logit = F.batch_norm(logit, mean, var, _vector(params.bn_w), _vector(params.bn_b), False,
                             0.0, opt.eps)  # fmt: skip
    b = torch.sigmoid(logit).reshape(n, hh * ww)
    return k.apply(x, a, b, in_norm), a, b, z, pooled, h, stats


@cbam.register_fake
def _(x, *args):
    _, params, _, opt = group((x, *args), CBAM_ARGS)
    n, c, hh, ww = x.shape
    kk = int(opt.use_avg) + int(opt.use_max)
    f32 = torch.float32
    return (
        torch.empty_like(x),
        x.new_empty(n, c, dtype=f32),
        x.new_empty(n, hh * ww, dtype=f32),
        x.new_empty(kk, n, c, dtype=f32),
        x.new_empty(n, kk, hh, ww, dtype=f32),
        x.new_empty(kk, n, params.w1.shape[0], dtype=f32),
        x.new_empty(2, dtype=f32),
    )


@torch.library.custom_op(
    "visattn::cbam_backward",
    mutates_args=(),
    schema=schema(CBAM_BACKWARD_ARGS, len(CbamGrads._fields)),
)
@_no_autocast
def cbam_backward(dy: Tensor, *args) -> tuple[Tensor, ...]:
    """Gradients :class:`CbamGrads` (dx, dw1, db1, dw2, db2, dconv_w, dconv_b, dbn_w, dbn_b,
    dnorm) of the fused CBAM, from ``(dy, x, *CbamSaved, *CbamParams, in_norm, in_norm_batch,
    *CbamOptions, need_dx)``; with ``in_norm`` dx is dL/dc and dnorm as in
    :func:`squeeze_excite_backward`."""
    _, x, sv, params, in_norm, in_norm_batch, opt, need_dx = group((dy, *args),
                                                                    CBAM_BACKWARD_ARGS)  # fmt: skip
    a, b, z, pooled = sv.a, sv.b, sv.z, sv.pooled
    use_avg, use_max, bn_mode = opt.use_avg, opt.use_max, opt.bn_mode
    k = block_kernels(opt.impl)
    n, c, hh, ww = x.shape
    p = hh * ww
    zmax = z[-1].contiguous() if use_max else None
    pmax = pooled[:, -1].reshape(n, p).contiguous() if use_max else None
    if in_norm is None:
        q, db, zcount, pcount = k.bwd_reduce(dy, x, a, b, zmax, pmax)
    else:  # rows: sum dy b, sum dy b d, sum d[, tie count, sum over ties of d]
        mom, db, pcount = k.bwd_reduce_norm(dy, x, a, b, zmax, pmax, in_norm)
        zcount = mom[3] if use_max else None
    dlg = (db * b * (1 - b)).reshape(n, 1, hh, ww)
    dbn_w, dbn_b = x.new_empty(0), x.new_empty(0)
    if bn_mode != BnMode.NONE:  # the map's BatchNorm (through the batch statistics in BATCH)
        batch = bn_mode == BnMode.BATCH
        lg, mean, var = _spatial_logits(pooled, params, bn_mode)
        saved = (None, None, mean, torch.rsqrt(var + opt.eps)) if batch else (mean, var, None, None)
        dlg, gw, gb = torch.ops.aten.native_batch_norm_backward(
            dlg, lg, _vector(params.bn_w), *saved, batch, opt.eps,
            [True, params.bn_w is not None, params.bn_b is not None],
        )  # fmt: skip
        dbn_w, dbn_b = _cast_like(gw, params.bn_w, x), _cast_like(gb, params.bn_b, x)
    dpooled, dcw, dcb = _conv_backward(dlg, pooled, _f32(params.conv_w),
                                       params.conv_b is not None, opt.impl)  # fmt: skip
    gavg = dpooled[:, 0].reshape(n, p) / c if use_avg else dlg.new_zeros(n, p)
    gmax = dpooled[:, -1].reshape(n, p) / pcount if use_max else None
    if in_norm is None:
        da = q + k.bwd_channel(x, a, gavg, gmax, pmax)
    else:  # rows: sum over max ties of gmax, sum d w (w = gavg + that); t = dy b + w below
        cm = k.bwd_channel_norm(x, a, gavg, gmax, pmax, in_norm)
        t0 = mom[0] + gavg.sum(1, keepdim=True) + cm[0]  # sum_p t
        t1 = mom[1] + cm[1]  # sum_p t d
        da = _shifted(t1, t0, in_norm)
    w1m, _, w2m, _ = _mlp(params)
    # the sigmoid gate's derivative needs a = M_c only, not the logits
    dl, dh, cavg, cmax = k.excite_backward(da, None, a, sv.h, w1m, w2m, zcount, p, use_avg,
                                           use_max, "sigmoid")  # fmt: skip
    dw1, db1, dw2, db2 = k.excite_wgrad(dl, dh, z, sv.h)
    rows, dnorm = None, x.new_empty(0)
    if in_norm is not None:  # dL/dx = a (dy b + w) + cavg + [x == zmax] cmax, summed over p
        tied = mom[4] if use_max else None
        rows, dnorm = k.fold_backward(in_norm, in_norm_batch, a, t0, t1, cavg, mom[2], cmax,
                                      zcount, tied, p)  # fmt: skip
    if need_dx:
        dx = k.bwd_apply(dy, x, a, b, gavg, gmax, pmax, cavg, cmax, zmax, rows)
    else:
        dx = x.new_empty(0)
    grads = (dw1, db1, dw2, db2, dcw, dcb)
    casts = (_cast_like(g, t, x) for g, t in zip(grads, params[:6], strict=True))
    return tuple(CbamGrads(dx, *casts, dbn_w, dbn_b, dnorm))


@cbam_backward.register_fake
def _(dy, *args):
    _, x, _, params, in_norm, _, _, need_dx = group((dy, *args), CBAM_BACKWARD_ARGS)
    dx = torch.empty_like(x) if need_dx else x.new_empty(0)
    grads = (_empty_grad(t, x) for t in params[:8])  # none for the running statistics
    return tuple(CbamGrads(dx, *grads, _norm_grad(in_norm, x)))


def _cbam_setup(ctx, inputs, output):
    x, params, in_norm, options = group(inputs, CBAM_ARGS)
    saved = CbamSaved._make(output[1:-1])
    _setup(ctx, x, saved, params, in_norm, options)
    ctx.mark_non_differentiable(*saved, output[-1])


def _cbam_backward(ctx, dy, *_):
    x, saved, params = _unsave(ctx, CbamSaved, CbamParams)
    _no_norm_autograd(ctx)
    need = ctx.needs_input_grad
    grads = CbamGrads._make(torch.ops.visattn.cbam_backward(
        dy, x, *saved, *params, None, False, *ctx.options, bool(need[0])
    ))  # fmt: skip
    # one gradient per input of the schema: x, the parameters (none for the running
    # statistics), in_norm, the options
    param_grads = _needed((*grads[1:9], None, None), params, need[1:11])
    return grads.dx if need[0] else None, *param_grads, None, *[None] * len(CbamOptions._fields)


cbam.register_autograd(_cbam_backward, setup_context=_cbam_setup)


# ----------------------------------------------------------------------------- FLOP counts
# ``torch.utils.flop_counter`` counts matrix products and convolutions (2 FLOPs per
# multiply-add) and sees a custom operator as a black box; these formulas give the fused
# operators the counts of the plain formulas' 1 x 1 / k x k convolutions (pooling, gates and
# products count 0 there too), and twice that for the backward (input and weight gradients).


def _mlp_flops(x_shape, w1_shape, pools: int) -> int:
    n, c = x_shape[0], x_shape[1]
    return pools * 2 * n * 2 * c * w1_shape[0]


def _spatial_flops(x_shape, conv_shape) -> int:
    n, _, h, w = x_shape
    return 2 * n * h * w * conv_shape[1] * conv_shape[2] * conv_shape[3]


try:
    from torch.utils.flop_counter import register_flop_formula
except ImportError:  # pragma: no cover - old torch
    register_flop_formula = None

if register_flop_formula is not None:

    @register_flop_formula(torch.ops.visattn.squeeze_excite)
    def _se_flops(x, w1, *args, out_shape=None, **kwargs) -> int:
        return _mlp_flops(x, w1, 1)

    @register_flop_formula(torch.ops.visattn.squeeze_excite_backward)
    def _se_backward_flops(dy, x, s, z, h, l, w1, *args, out_shape=None, **kwargs) -> int:
        return 2 * _mlp_flops(x, w1, 1)

    @register_flop_formula(torch.ops.visattn.cbam)
    def _cbam_flops(x, w1, b1, w2, b2, conv_w, *args, out_shape=None, **kwargs) -> int:
        return _mlp_flops(x, w1, conv_w[1]) + _spatial_flops(x, conv_w)

    @register_flop_formula(torch.ops.visattn.cbam_backward)
    def _cbam_backward_flops(dy, x, a, b, z, pooled, h, w1, b1, w2, b2, conv_w, *args,
                             out_shape=None, **kwargs) -> int:  # fmt: skip
        return 2 * (_mlp_flops(x, w1, conv_w[1]) + _spatial_flops(x, conv_w))


# The channel gate's operators live in their own module; importing them here registers them
# with the others (``import visattn.kernels.ops`` gives every ``torch.ops.visattn.*`` block).
from .gate_ops import channel_gate, channel_gate_backward  # noqa: E402
