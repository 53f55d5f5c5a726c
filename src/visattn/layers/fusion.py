"""A BatchNorm followed by SE or CBAM as one autograd node (the peak-memory target).

In a residual branch ``attention(bn(c))`` keeps two full-size tensors for backward: c, which the
BatchNorm needs, and x = bn(c), which SE / CBAM need (y = x * s reads x in backward). Plain
ResNet keeps only c there (the residual sum saves nothing). :func:`batchnorm_attention` keeps c
alone and recomputes x = gamma (c - mu) / sqrt(var + eps) + beta in backward: one read and one
write of the block's tensor more, one full-size tensor less per block for the whole step. The
formulas and the statistics are BatchNorm's own (``input_norm=`` of
:func:`visattn.functional.squeeze_excite` / :func:`visattn.functional.cbam`, the node in
:mod:`visattn.functional._norm_fusion`).

Tests: ``tests/kernels/test_kernels_norm_fusion.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..functional._norm_fusion import has_hooks
from .cbam import CBAM
from .squeeze_excite import SqueezeExcite

__all__ = ["batchnorm_attention"]


def batchnorm_attention(norm: nn.Module, attention: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``attention(norm(x))``, fused when ``norm`` is a BatchNorm2d and ``attention`` SE / CBAM.

    Args:
        norm: the module before the attention, typically the branch's last ``nn.BatchNorm2d``.
        attention: any module; ``SqueezeExcite`` and ``CBAM`` (channel first; not subclasses,
            whose forward may differ) take the fused path.
        x: (N, C, H, W), the input of ``norm``.

    Returns:
        (N, C, H, W), the same values, gradients and BatchNorm running statistics as
        ``attention(norm(x))``.

    The fused path applies while autograd records, with the fast kernels of
    :mod:`visattn.kernels`, for a plain ``nn.BatchNorm2d`` (not ``SyncBatchNorm``) and when
    neither module has hooks (forward hooks, e.g. :class:`visattn.viz.AttentionRecorder`'s, must
    see ``attention`` called with ``norm(x)``); everywhere else it is ``attention(norm(x))``.
    """
    if type(attention) in (SqueezeExcite, CBAM) and not has_hooks(attention):
        return attention._attend(x, input_norm=norm)
    return attention(norm(x))
