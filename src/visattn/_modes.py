"""Named modes shared by every layer of the package: the one definition of each choice list.

The formulas (:mod:`visattn.functional`), the layers and the kernels (:mod:`visattn.kernels`)
all take their gate names, pool names and BatchNorm modes from here, so a list is written once
and every other form of it (the Triton kernels' integer ids, the error messages' choices) is
derived from it. Like :mod:`visattn._checks`, this module imports nothing from visattn: it sits
below the kernels in the import order (``docs/architecture.md``).

Tests: ``tests/kernels/test_kernels_layering.py`` (the import rule),
``tests/functional/test_functional_attention.py`` (the gates).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["ACTIVATIONS", "ACTIVATION_FUNCTIONS", "BAM_COMBINES", "BAM_VARIANTS", "GATES",
           "GATE_FUNCTIONS", "GATE_IDS", "GC_FUSIONS", "GE_GLOBAL_PADDINGS", "NONLOCAL_PAIRWISE",
           "POOLS", "BnMode"]  # fmt: skip

#: Gate functions sigma of the excitation s = sigma(W_2 ReLU(W_1 z)): SE's sigmoid and the
#: alternatives of its Table 12 ablation (arXiv:1709.01507).
GATE_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "hard_sigmoid": F.hardsigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
}

#: The gate names, in the order of their kernel ids.
GATES: tuple[str, ...] = tuple(GATE_FUNCTIONS)

#: Integer id of each gate, the ``GATE`` compile-time constant of the Triton kernels.
GATE_IDS: dict[str, int] = {name: i for i, name in enumerate(GATES)}

#: Global / channel pools of SE's squeeze and CBAM's maps.
POOLS: tuple[str, ...] = ("avg", "max")

#: Non-linearities of a bottleneck's hidden layer: Coordinate Attention's h-swish
#: x * ReLU6(x + 3) / 6 (arXiv:2103.02907, timm's default too), ReLU and SiLU.
ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "hard_swish": F.hardswish,
    "relu": torch.relu,
    "silu": F.silu,
}

#: The activation names.
ACTIVATIONS: tuple[str, ...] = tuple(ACTIVATION_FUNCTIONS)

#: How BAM puts its branches together: sigma(M_c + M_s) (the paper, arXiv:1807.06514, eq. 2) or
#: sigma(M_c * M_s) (the official code).
BAM_COMBINES: tuple[str, ...] = ("sum", "product")

#: BAM's layouts: the paper's (eq. 2-4) and the official code's (BatchNorm places, product).
BAM_VARIANTS: tuple[str, ...] = ("paper", "official")

#: How the Global Context block (arXiv:1904.11492) fuses its transform t with x: ``"add"``,
#: x + t (the paper's GC block), or ``"scale"``, x * sigmoid(t) (its fusion ablation).
GC_FUSIONS: tuple[str, ...] = ("add", "scale")

#: Padding of Gather-Excite's global depthwise gather (arXiv:1810.12348, GE-theta): ``"none"``,
#: the kernel covers the whole map (a 1 x 1 context, the paper's global gather); ``"timm"``,
#: padding (k - 1) // 2 as timm 1.0.31's ``GatherExcite`` (a context about the map's size).
GE_GLOBAL_PADDINGS: tuple[str, ...] = ("none", "timm")

#: The non-local block's pairwise functions f (arXiv:1711.07971, Sec. 3.2; eq. 3, 4, 5), the
#: paper's default first.
NONLOCAL_PAIRWISE: tuple[str, ...] = ("embedded_gaussian", "dot_product", "concatenation")


class BnMode(enum.IntEnum):
    """How the BatchNorm after CBAM's spatial convolution (``norm=True``) normalises the map.

    An ``int`` for the ``torch.library`` operators' schemas, with a name everywhere else.
    """

    NONE = 0  #: no BatchNorm after the convolution
    BATCH = 1  #: the batch's statistics (training mode, or no running statistics)
    RUNNING = 2  #: the running statistics (evaluation mode)
