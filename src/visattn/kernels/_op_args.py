"""The named argument groups of the fused SE / CBAM operators (:mod:`visattn.kernels.ops`) and
the flat ``torch.library`` schemas written from them.

SE (Hu et al., arXiv:1709.01507) and CBAM (Woo et al., arXiv:1807.06521) take their parameters,
options and saved tensors as flat arguments (what torch.compile, opcheck and positional callers
need); :class:`SeParams`, :class:`SeOptions`, :class:`SeSaved`, :class:`SeGrads`,
:class:`CbamParams`, :class:`CbamOptions`, :class:`CbamSaved` and :class:`CbamGrads` name those
groups, in schema order. :func:`schema` writes an operator's schema from its groups and
:func:`group` splits its flat arguments back into them, so each list is written once. All are
re-exported by :mod:`visattn.kernels.ops`.

Tests: ``tests/kernels/test_kernels_contract.py`` (the schemas, calls with the named tuples).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from .._modes import BnMode

#: The named tuples of the operators' argument groups (re-exported by :mod:`visattn.kernels.ops`).
NAMED_TUPLES = ("SeParams", "SeOptions", "SeSaved", "SeGrads",
                "CbamParams", "CbamOptions", "CbamSaved", "CbamGrads")  # fmt: skip

__all__ = ["CBAM_ARGS", "CBAM_BACKWARD_ARGS", "NAMED_TUPLES", "SE_ARGS", "SE_BACKWARD_ARGS",
           *NAMED_TUPLES, "group", "schema"]  # fmt: skip


# ----------------------------------------------------------------------------- the groups
# The operators' schemas are flat (what torch.compile, opcheck and the callers' positional calls
# need); these tuples name their groups, in schema order, and the schemas are written from them:
# torch.ops.visattn.cbam(x, *CbamParams(...), in_norm, *CbamOptions(...)).


class SeParams(NamedTuple):
    """SE's parameters: the MLP's W_1 (C/r, C[, 1, 1]), b_1, W_2 (C, C/r[, 1, 1]), b_2."""

    w1: Tensor
    b1: Tensor | None
    w2: Tensor
    b2: Tensor | None


class SeOptions(NamedTuple):
    """SE's options: the squeeze (``visattn._modes.POOLS``), the gate (``GATES``), the backend
    (``"c"`` or ``"triton"``)."""

    squeeze: str
    gate: str
    impl: str


class SeSaved(NamedTuple):
    """SE's extra outputs, handed to the backward: s, z, the logits l float32 (N, C), the MLP's
    hidden units h float32 (1, N, C/r)."""

    s: Tensor
    z: Tensor
    h: Tensor
    l: Tensor


class SeGrads(NamedTuple):
    """``squeeze_excite_backward``'s outputs (empty tensors for absent ones)."""

    dx: Tensor
    dw1: Tensor
    db1: Tensor
    dw2: Tensor
    db2: Tensor
    dnorm: Tensor


class CbamParams(NamedTuple):
    """CBAM's parameters: the shared MLP (as :class:`SeParams`), the spatial map's k x k
    convolution (1, K, k, k) and its optional BatchNorm (weight, bias, running statistics)."""

    w1: Tensor
    b1: Tensor | None
    w2: Tensor
    b2: Tensor | None
    conv_w: Tensor
    conv_b: Tensor | None
    bn_w: Tensor | None
    bn_b: Tensor | None
    bn_mean: Tensor | None
    bn_var: Tensor | None


class CbamOptions(NamedTuple):
    """CBAM's options: the spatial map's BatchNorm (:class:`visattn._modes.BnMode`, an int in
    the schema) and its eps, the pools, the backend (``"c"`` or ``"triton"``)."""

    bn_mode: BnMode
    eps: float
    use_avg: bool
    use_max: bool
    impl: str


class CbamSaved(NamedTuple):
    """CBAM's extra outputs handed to the backward: a = M_c float32 (N, C), b = M_s float32
    (N, H W), the channel pools z float32 (K, N, C), the spatial pools float32 (N, K, H, W),
    the MLP's hidden units h float32 (K, N, C/r)."""

    a: Tensor
    b: Tensor
    z: Tensor
    pooled: Tensor
    h: Tensor


class CbamGrads(NamedTuple):
    """``cbam_backward``'s outputs (empty tensors for absent ones)."""

    dx: Tensor
    dw1: Tensor
    db1: Tensor
    dw2: Tensor
    db2: Tensor
    dconv_w: Tensor
    dconv_b: Tensor
    dbn_w: Tensor
    dbn_b: Tensor
    dnorm: Tensor


# ----------------------------------------------------------------------------- the schemas
# An operator's arguments: single ones ("type name", in schema syntax) and named groups.
_Part = str | type
_SCHEMA_TYPES = {
    "Tensor": "Tensor",
    "Tensor | None": "Tensor?",
    "BnMode": "SymInt",  # what the schema inference of an int gives
    "float": "float",
    "bool": "bool",
    "str": "str",
}

SE_ARGS: tuple[_Part, ...] = ("Tensor x", SeParams, "Tensor? in_norm", SeOptions)
SE_BACKWARD_ARGS: tuple[_Part, ...] = (
    "Tensor dy", "Tensor x", SeSaved, SeParams, "Tensor? in_norm", "bool in_norm_batch",
    SeOptions, "bool need_dx",
)  # fmt: skip
CBAM_ARGS: tuple[_Part, ...] = ("Tensor x", CbamParams, "Tensor? in_norm", CbamOptions)
CBAM_BACKWARD_ARGS: tuple[_Part, ...] = (
    "Tensor dy", "Tensor x", CbamSaved, CbamParams, "Tensor? in_norm", "bool in_norm_batch",
    CbamOptions, "bool need_dx",
)  # fmt: skip


def schema(parts: tuple[_Part, ...], outputs: int) -> str:
    """The operator's schema: its arguments flat, in order, and ``outputs`` tensors."""
    args = []
    for part in parts:
        if isinstance(part, str):
            args.append(part)
        else:
            for name, hint in part.__annotations__.items():  # strings (ForwardRef in a tuple)
                args.append(f"{_SCHEMA_TYPES[getattr(hint, '__forward_arg__', hint)]} {name}")
    return f"({', '.join(args)}) -> ({', '.join(['Tensor'] * outputs)})"


def group(args: tuple, parts: tuple[_Part, ...]) -> list:
    """The operator's flat ``args`` grouped as ``parts`` says: one value per single argument,
    a named tuple per group."""
    out, i = [], 0
    for part in parts:
        if isinstance(part, str):
            out.append(args[i])
            i += 1
        else:
            k = len(part._fields)
            out.append(part._make(args[i : i + k]))
            i += k
    if i != len(args):
        raise TypeError(f"expected {i} arguments, got {len(args)}")
    return out
