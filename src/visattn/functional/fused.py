"""SE, CBAM and generic channel-gate blocks as single functions that pick the fastest correct
backend.

The one dispatch point of each fused block: :func:`squeeze_excite` and :func:`cbam` validate
their arguments once, then run the reference formulas (:mod:`visattn.functional.se_block`,
:mod:`visattn.functional.cbam_block`), the C++ / Triton operators ``torch.ops.visattn.*``, or
the measured choice between the two (:mod:`visattn.kernels`). With ``input_norm=`` a preceding
BatchNorm is folded into the operators (:mod:`visattn.functional._norm_fusion`).

:func:`channel_gate` is the same for every pool -> excitation -> gate -> scale mechanism,
y = x * E(pool(x), *params), with the excitation E registered by name
(:func:`register_excitation`; ECA, effective SE, Gather-Excite's parameter-free sigmoid, ...):
the fused SE block's full-size passes around any E, whose backward is autograd on the (N, C)
tensors (docs/kernels.md, "Channel gates with a pluggable excitation").

Weights are given in the layout of the layers' 1 x 1 / k x k convolutions (``fc1.weight`` of
shape (C/r, C, 1, 1) or (C/r, C)); symbols as in :mod:`visattn.functional`. The backend is
``auto`` unless ``VISATTN_BACKEND`` or ``visattn.kernels.use_backend`` says otherwise. The
reference branch calls the formulas' unvalidated private forms (``_squeeze_excite``,
``_cbam``, looked up in this module at call time), so arguments are validated once per call.

Tests: ``tests/kernels/test_kernels_se_cbam.py``, ``tests/kernels/test_kernels_norm_fusion.py``,
``tests/kernels/test_kernels_channel_gate.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._checks import check_choice, describe
from ..kernels._backend import get_backend, select_impl
from ..kernels._excite import (
    as_gate,
    excitation_function,
    excitation_names,
    register_excitation,
)
from ..kernels._tune import tuned_impl
from ..kernels.ops import CbamOptions, CbamParams, SeOptions, SeParams
from ._norm_fusion import (
    CBAMOperators,
    SEOperators,
    _BatchNormThen,
    fuses_norm,
    norm_inputs,
    spatial_norm_args,
    update_running_stats,
)
from ._norm_fusion import float_batch_stats as float_batch_stats  # its former home: re-exported
from .attention import POOLS, _check_x, _global_pool
from .cbam_block import CBAM_NAMES, _cbam, cbam_reference, check_cbam
from .se_block import FC_NAMES, _squeeze_excite, check_squeeze_excite, squeeze_excite_reference

__all__ = ["cbam", "cbam_reference", "channel_gate", "channel_gate_reference",
           "register_excitation", "squeeze_excite", "squeeze_excite_reference"]  # fmt: skip


def squeeze_excite(x: Tensor, fc1_weight: Tensor, fc1_bias: Tensor | None, fc2_weight: Tensor,
                   fc2_bias: Tensor | None, *, squeeze: str = "avg", gate: str = "sigmoid",
                   input_norm: nn.Module | None = None) -> Tensor:  # fmt: skip
    """Squeeze-and-Excitation (Hu et al., arXiv:1709.01507, eq. 2-4) of x, fused where possible:
    x~ = x * sigma(W_2 ReLU(W_1 pool(x) + b_1) + b_2), (N, C, H, W) -> (N, C, H, W).

    Args:
        x: u, any memory format (with ``input_norm``: the BatchNorm's input c, and u = BN(c)).
        fc1_weight, fc1_bias: W_1 (C/r, C[, 1, 1]) and b_1 (C/r) or None.
        fc2_weight, fc2_bias: W_2 (C, C/r[, 1, 1]) and b_2 (C) or None.
        squeeze: ``"avg"`` or ``"max"`` global pooling.
        gate: sigma, one of :data:`visattn.functional.GATES`.
        input_norm: a module applied to x first, e.g. the residual branch's last BatchNorm.
            A plain ``nn.BatchNorm2d`` (C features, no hooks) is folded into the fast kernels
            when gradients are needed: statistics and running-statistics update as in its own
            forward, BN(x) computed as the kernels load x, never stored. Any other module is
            simply called.

    The fast path (float32 / bfloat16 on CPU and CUDA) makes 3 passes over the full-size
    tensor forward (read x twice, write y) and 5 backward (read x and dy twice, write dx) and
    saves only x; with a folded ``input_norm`` one more read for the batch statistics, and
    BatchNorm's backward comes with the last pass. The MLP runs in float32. Max-squeeze ties
    share the gradient equally (``torch.amax``'s rule).
    """
    params = SeParams(fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    check_squeeze_excite(x, *params, squeeze, gate, FC_NAMES)
    impl = select_impl(x) if x.numel() > 0 else None
    impl = tuned_impl(
        impl, ("squeeze_excite", squeeze, gate), x,
        lambda u: squeeze_excite(u, *params, squeeze=squeeze, gate=gate, input_norm=input_norm),
        params, [input_norm],
    )  # fmt: skip
    if impl is not None and fuses_norm(input_norm, x, params):
        return _BatchNormThen.apply(x, *norm_inputs(input_norm, x), SEOperators,
                                    SeOptions(squeeze, gate, impl), *params)[0]  # fmt: skip
    if input_norm is not None:
        x = input_norm(x)
    if impl is None:
        return _squeeze_excite(x, *params, squeeze, gate)
    return torch.ops.visattn.squeeze_excite(x, *params, None, *SeOptions(squeeze, gate, impl))[0]


def cbam(x: Tensor, fc1_weight: Tensor, fc1_bias: Tensor | None, fc2_weight: Tensor,
         fc2_bias: Tensor | None, conv_weight: Tensor, conv_bias: Tensor | None, *,
         pool: Sequence[str] = ("avg", "max"), norm: nn.Module | None = None,
         input_norm: nn.Module | None = None) -> Tensor:  # fmt: skip
    """CBAM (Woo et al., arXiv:1807.06521, eq. 1-3), channel attention then spatial attention,
    of x (N, C, H, W) -> (N, C, H, W), fused where possible.

    Args:
        x: F, any memory format (with ``input_norm``: the BatchNorm's input c, and F = BN(c)).
        fc1_weight ... fc2_bias: the shared MLP of M_c: W_1, b_1, W_2, b_2 (the paper's W_0,
            W_1 and their biases).
        conv_weight, conv_bias: f^{k x k} of M_s, shape (1, len(pool), k, k) with k odd, and (1,).
        pool: pools of both parts, avg before max in the spatial map (as the layers build it).
        norm: optional ``nn.BatchNorm2d(1)`` after the convolution (the official code's layout).
            It behaves exactly as if called: batch statistics and a running-statistics update
            in training mode, running statistics in evaluation mode.
        input_norm: a module applied to x first, fused like :func:`squeeze_excite`'s.

    The fast path makes 4 passes over the full-size tensor forward and 6 backward (5 and 6
    with a folded ``input_norm``), keeps only x for backward and handles max ties like
    ``torch.amax`` (equal shares). Other pool orders use the reference formula.
    """
    weights = (fc1_weight, fc1_bias, fc2_weight, fc2_bias, conv_weight, conv_bias)
    pool = check_cbam(x, *weights, pool, CBAM_NAMES)
    fast_pools = pool in (("avg",), ("max",), ("avg", "max"))
    square = conv_weight.shape[2] == conv_weight.shape[3]
    plain_norm = norm is None or (type(norm) is nn.BatchNorm2d and norm.num_features == 1)
    fast = fast_pools and square and plain_norm and x.numel() > 0
    impl = select_impl(x) if fast else None
    impl = tuned_impl(
        impl, ("cbam", "+".join(pool), "bn" if norm is not None else "no bn"), x,
        lambda u: cbam(u, *weights, pool=pool, norm=norm, input_norm=input_norm),
        weights, [norm, input_norm],
    )  # fmt: skip
    if impl is None:
        if input_norm is not None:
            x = input_norm(x)
        return _cbam(x, *weights, pool, norm)
    bn_w, bn_b, bn_mean, bn_var, bn_mode, eps = spatial_norm_args(norm)
    params = CbamParams(*weights, bn_w, bn_b, bn_mean, bn_var)
    options = CbamOptions(bn_mode, eps, "avg" in pool, "max" in pool, impl)
    if fuses_norm(input_norm, x, params):
        y, stats = _BatchNormThen.apply(x, *norm_inputs(input_norm, x), CBAMOperators, options,
                                        *params)  # fmt: skip
    else:
        if input_norm is not None:
            x = input_norm(x)
        y, *_, stats = torch.ops.visattn.cbam(x, *params, None, *options)  # stats come last
    if norm is not None and norm.training and norm.track_running_stats:
        update_running_stats(norm, stats[0], stats[1], x.shape[0] * x.shape[2] * x.shape[3])
    return y


def check_channel_gate(x: Tensor, excitation: str, params: Sequence[Tensor],
                       squeeze: str) -> list[Tensor]:  # fmt: skip
    """Validate a channel gate's arguments once: x (N, C, H, W), a registered excitation's
    name, its parameters (a sequence of tensors), the squeeze; returns the parameters as a
    list."""
    _check_x(x)
    check_choice(excitation, "excitation", excitation_names())
    if isinstance(params, Tensor) or not isinstance(params, (list, tuple)):
        raise TypeError(f"params: expected a list or tuple of tensors, got {describe(params)}")
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"params[{i}]: expected a torch.Tensor, got {describe(p)}")
    check_choice(squeeze, "squeeze", POOLS)
    return list(params)


def _channel_gate(x: Tensor, excitation: str, params: Sequence[Tensor], squeeze: str) -> Tensor:
    z = _global_pool(x, squeeze).flatten(1)  # (N, C)
    s = excitation_function(excitation)(z, *params)
    if s.shape != z.shape:  # (N, C, 1, 1) or a wrong shape (as_gate names the excitation)
        s = as_gate(excitation, s, z)
    return x * s.reshape(*z.shape, 1, 1)  # one view node (small maps: autograd nodes cost time)


def channel_gate_reference(x: Tensor, excitation: str, params: Sequence[Tensor] = (), *,
                           squeeze: str = "avg") -> Tensor:  # fmt: skip
    """The plain channel gate y = x * E(pool(x), *params), op by op (what every fast path of
    :func:`channel_gate` is tested against). Arguments as :func:`channel_gate`'s."""
    params = check_channel_gate(x, excitation, params, squeeze)
    return _channel_gate(x, excitation, params, squeeze)


def channel_gate(x: Tensor, excitation: str, params: Sequence[Tensor] = (), *,
                 squeeze: str = "avg") -> Tensor:  # fmt: skip
    """A channel gate y = x * E(pool(x), *params), (N, C, H, W) -> (N, C, H, W), fused where
    possible: pool -> excitation -> gate -> scale mechanisms (SE's MLP, ECA's 1-D convolution
    across channels, effective SE's single FC, Gather-Excite's parameter-free sigmoid, ...).

    Args:
        x: the block's input, any memory format (kept).
        excitation: the name of an excitation E registered with :func:`register_excitation`:
            s = E(z, *params), z (N, C) -> s (N, C), gate included.
        params: E's parameters, a list or tuple of tensors (possibly empty).
        squeeze: ``"avg"`` or ``"max"`` global pooling z = pool(x).

    The fast path (float32 / bfloat16 on CPU and CUDA) is the operator
    ``visattn::channel_gate``: SE's full-size passes (3 forward, 5 backward, only x saved for
    backward, max ties sharing the gradient like ``torch.amax``), with E and its gradients
    (autograd, on (N, C) tensors) in float32; elsewhere (float64, other devices, ONNX export,
    backend ``"reference"``, and under ``"auto"`` on the CPU for maps of fewer than
    :data:`CPU_CHANNEL_GATE_MIN_POSITIONS` positions, where it measured slower) the plain formula
    :func:`channel_gate_reference`.
    """
    params = check_channel_gate(x, excitation, params, squeeze)
    return _fused_channel_gate(x, excitation, params, squeeze)


#: Under backend ``"auto"`` on the CPU, the fused channel gate runs from this many positions
#: H W up, the plain formula below. Measured (docs/benchmarks.md, "Every mechanism"; CPU, 2
#: threads, N = 8, forward + backward): at ResNet-50's 56 x 56 and 28 x 28 stages the operator
#: takes 0.3-0.9x the time of timm's ECA / circular ECA / gather-excite modules, at 14 x 14 and
#: 7 x 7 1.1-1.3x: there the fixed cost of its backward (the excitation's autograd on (N, C)
#: tensors, two operator calls) outweighs the passes over x it saves. A pinned backend
#: (``use_backend("cpu")``) always runs the operator.
CPU_CHANNEL_GATE_MIN_POSITIONS = 400


def _fused_channel_gate(x: Tensor, excitation: str, params: list[Tensor], squeeze: str) -> Tensor:
    """:func:`channel_gate` without its checks: the dispatch, for formulas that have validated
    their own arguments (``eca``, ``ese``, ...)."""
    impl = select_impl(x) if x.numel() > 0 else None
    small = x.shape[2] * x.shape[3] < CPU_CHANNEL_GATE_MIN_POSITIONS
    if impl == "c" and small and get_backend() == "auto":
        impl = None
    impl = tuned_impl(
        impl, ("channel_gate", excitation, squeeze), x,
        lambda u: _fused_channel_gate(u, excitation, params, squeeze), params,
    )  # fmt: skip
    if impl is None:
        return _channel_gate(x, excitation, params, squeeze)
    return torch.ops.visattn.channel_gate(x, params, excitation, squeeze, impl)[0]
