"""Selective Kernel convolution (Li, Wang, Hu, Yang, CVPR 2019, arXiv:1903.06586).

    split   U_m = ReLU(BN(conv_m(X))),  m = 1 ... M                (Sec. 3.1, "Split")
    fuse    s = GAP(sum_m U_m),  z = ReLU(BN(W s)),  d = max(C/r, L)   (eq. 1-4)
    select  a_m = softmax_m(A_m z),  V = sum_m a_m U_m                  (eq. 5-6)

A replacement for a k x k convolution (with its BatchNorm and ReLU): X (N, C_in, H, W) ->
V (N, C_out, H', W'). The paper's SK unit (SKNet-50, Table 1: SK[M=2, G=32, r=16]) has two
branches, a 3 x 3 and a 5 x 5 kernel, the 5 x 5 as a 3 x 3 with dilation 2 (``keep_3x3``),
grouped convolutions with G = 32 (``groups``), r = 16 and L = 32 (eq. 4); every branch sees
all of X. These are the defaults.

Code symbols: ``paths[m]`` is conv_m with its BatchNorm (``paths[m].conv``, ``paths[m].bn``);
``attn.fc_reduce`` is W (eq. 3), ``attn.bn`` its BN, ``attn.fc_select`` the stacked A_m (eq. 5),
all 1 x 1 convolutions without bias: the layout of timm's ``SelectiveKernel`` (``paths``: a
``ConvNormAct`` each; ``attn``: ``SelectiveKernelAttn``), so its state dicts load with
``strict=True``. The fuse / select formulas are :mod:`visattn.functional.sk_block`'s
(:func:`visattn.functional.selective_kernel`, :func:`visattn.functional.sk_attention`).

Where timm's ``SelectiveKernel`` differs from the paper (options reproduce it, see
``docs/core.md``): it splits X's channels evenly across the paths (``split_input=True``), uses
no groups (``groups=1``), has no minimum L and rounds C/r to a multiple of 8
(``min_attn_channels=1, divisor=8``). A branch convolution's padding is timm's
((stride - 1) + dilation (k - 1)) // 2 (the paper gives none; "same" size at stride 1).

Tests: ``tests/layers/test_layers_sk.py``, ``tests/functional/test_functional_sk.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from .._checks import check_int, check_tensor
from ..functional.sk_block import selective_kernel, sk_attention, sk_attention_channels
from ._common import check_channels

__all__ = ["TIMM_SK_OPTIONS", "ConvBnAct", "SelectiveKernel", "SelectiveKernelAttn"]

#: The options that make :class:`SelectiveKernel` timm's ``SelectiveKernel`` at its defaults
#: (``timm.layers.SelectiveKernel(in_channels, out_channels)``).
TIMM_SK_OPTIONS: dict[str, object] = {
    "groups": 1,
    "split_input": True,
    "min_attn_channels": 1,
    "divisor": 8,
}


class ConvBnAct(nn.Module):
    """conv -> BatchNorm -> ReLU (``act=False``: no ReLU), the convolution without bias; timm's
    ``ConvNormAct`` layout (``conv``, ``bn``). Padding ((stride - 1) + dilation (k - 1)) // 2."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        act: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        padding = ((stride - 1) + dilation * (kernel_size - 1)) // 2
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=False,
            **factory,
        )  # fmt: skip
        self.bn = nn.BatchNorm2d(out_channels, **factory)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class SelectiveKernelAttn(nn.Module):
    """The fuse / select weights of SK (eq. 1-5): W (``fc_reduce``), BN (``bn``), A
    (``fc_select``); timm's ``SelectiveKernelAttn`` layout.

    ``forward(branches)`` takes the M branch outputs U_m (N, C, H, W) and returns a (N, M, C).
    """

    def __init__(
        self,
        channels: int,
        num_paths: int = 2,
        attn_channels: int = 32,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_paths = check_int(num_paths, "num_paths", minimum=1)
        check_int(attn_channels, "attn_channels", minimum=1)
        self.fc_reduce = nn.Conv2d(channels, attn_channels, 1, bias=False, **factory)
        self.bn = nn.BatchNorm2d(attn_channels, **factory)
        self.fc_select = nn.Conv2d(attn_channels, channels * num_paths, 1, bias=False, **factory)

    def forward(self, branches: Sequence[torch.Tensor]) -> torch.Tensor:
        return sk_attention(branches, self.fc_reduce.weight, self.fc_select.weight, norm=self.bn)


def _check_kernel_sizes(kernel_sizes) -> tuple[int, ...]:
    sizes = (kernel_sizes,) * 2 if isinstance(kernel_sizes, int) else kernel_sizes
    ok = isinstance(sizes, (list, tuple)) and len(sizes) > 0
    ok = ok and all(
        isinstance(k, int) and not isinstance(k, bool) and k >= 3 and k % 2 for k in sizes
    )
    if not ok:
        raise ValueError(
            f"kernel_sizes: expected an odd int >= 3 or a non-empty sequence of them, got "
            f"{kernel_sizes!r}"
        )
    return tuple(sizes)


class SelectiveKernel(nn.Module):
    """Selective Kernel convolution: V = sum_m a_m ReLU(BN(conv_m(X))) (eq. 1-6).

    Args:
        in_channels: C_in of X.
        out_channels: C of V (default: ``in_channels``).
        stride: of every branch convolution.
        kernel_sizes: one odd kernel size per path, (3, 5) as in the paper (M = 2); an int k
            means (k, k).
        dilation: the module's dilation; with ``keep_3x3`` path m has dilation
            ``dilation * (k_m - 1) // 2``.
        groups: G of the branch convolutions (32 in the paper's SKNet); must divide each
            branch's input channels and C.
        reduction, min_attn_channels, divisor: r, L of d = max(C/r, L) (eq. 4; 16, 32 in the
            paper) and the rounding of C/r to a multiple of ``divisor`` (timm's ``rd_divisor``).
        rd_channels: d given explicitly (overrides the three above).
        keep_3x3: make every path a 3 x 3 convolution with dilation (k - 1) / 2 (the paper's
            5 x 5 "replaced with the dilated convolution with kernel 3 x 3 and dilation size 2");
            ``False``: k x k kernels.
        split_input: give path m only the m-th of M equal slices of X's channels (timm's
            default; the paper's paths all see X).

    Shape: (N, C_in, H, W) -> (N, C, H', W') with H' = (H + 2 p - 2 d' - 1) // stride + 1 for a
    path's padding p and dilation d' (H' = ceil(H / stride) for stride 1 and 2). Any memory
    format. ``attention(x)`` returns the selection weights a, (N, M, C), softmax over M.
    """

    #: What ``attention(x)`` returns: selection weights (N, M, C); forward is a convolution.
    map_kind: ClassVar[str] = "select"

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        stride: int = 1,
        kernel_sizes: int | Sequence[int] = (3, 5),
        dilation: int = 1,
        groups: int = 32,
        reduction: float = 16,
        min_attn_channels: int = 32,
        divisor: int = 1,
        rd_channels: int | None = None,
        keep_3x3: bool = True,
        split_input: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_int(in_channels, "in_channels", minimum=1)
        out_channels = in_channels if out_channels is None else out_channels
        check_int(out_channels, "out_channels", minimum=1)
        check_int(stride, "stride", minimum=1)
        check_int(dilation, "dilation", minimum=1)
        check_int(groups, "groups", minimum=1)
        for flag, name in ((keep_3x3, "keep_3x3"), (split_input, "split_input")):
            if not isinstance(flag, bool):
                raise TypeError(f"{name}: expected a bool, got {flag!r}")
        sizes = _check_kernel_sizes(kernel_sizes)
        num_paths = len(sizes)
        if split_input and in_channels % num_paths:
            raise ValueError(
                f"in_channels: expected a multiple of the number of paths ({num_paths}) with "
                f"split_input=True, got {in_channels}"
            )
        path_in = in_channels // num_paths if split_input else in_channels
        if path_in % groups or out_channels % groups:
            raise ValueError(
                f"groups: expected a divisor of the paths' input channels ({path_in}) and of "
                f"out_channels ({out_channels}), got {groups}"
            )
        if rd_channels is None:
            attn = sk_attention_channels(out_channels, reduction, min_attn_channels, divisor)
        else:
            attn = check_int(rd_channels, "rd_channels", minimum=1)
        if keep_3x3:
            kernels, dilations = (3,) * num_paths, tuple(dilation * (k - 1) // 2 for k in sizes)
        else:
            kernels, dilations = sizes, (dilation,) * num_paths
        factory = {"device": device, "dtype": dtype}
        self.paths = nn.ModuleList(
            ConvBnAct(path_in, out_channels, k, stride=stride, dilation=d, groups=groups, **factory)
            for k, d in zip(kernels, dilations, strict=True)
        )
        self.attn = SelectiveKernelAttn(out_channels, num_paths, attn, **factory)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.kernel_sizes, self.dilations, self.groups = kernels, dilations, groups
        self.num_paths, self.attn_channels, self.split_input = num_paths, attn, split_input

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The split step: U_m = ReLU(BN(conv_m(X_m))), X_m = X or its m-th channel slice."""
        check_tensor(x, "x", ndim=4, layout="(N, C, H, W)")
        check_channels(x, self.in_channels)
        if self.split_input:
            parts = torch.split(x, self.in_channels // self.num_paths, dim=1)
            return [path(part) for path, part in zip(self.paths, parts, strict=True)]
        return [path(x) for path in self.paths]

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The selection weights a (eq. 5), shape (N, M, C) (:func:`visattn.functional.sk_attention`)."""
        return self.attn(self.branches(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = self.attn
        return selective_kernel(
            self.branches(x), attn.fc_reduce.weight, attn.fc_select.weight, norm=attn.bn
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
            f"kernel_sizes={self.kernel_sizes}, dilations={self.dilations}, groups={self.groups}, "
            f"attn_channels={self.attn_channels}, split_input={self.split_input}"
        )
