"""visattn: visual attention for convolutional networks in PyTorch.

Spatial Transformer (Jaderberg et al., 2015, arXiv:1506.02025), Squeeze-and-Excitation
(Hu et al., 2018, arXiv:1709.01507) and CBAM (Woo et al., 2018, arXiv:1807.06521).

Sub-packages: ``functional`` (grids, sampler, pooling), ``layers`` (one module per mechanism),
``models`` (ResNets with attention, the STN paper's networks, ``add_attention``),
``data`` (datasets and the STN paper's distortions), ``engine`` (training and checkpoints);
the ``visattn`` command line lives in ``visattn.cli``.
"""

from . import functional, models
from .kernels import use_backend
from .layers import (
    CBAM,
    ChannelAttention,
    GridGenerator,
    SpatialAttention,
    SpatialTransformer,
    SqueezeExcite,
    create_attention,
    list_attention,
    register_attention,
)
from .models import (
    AttentionReport,
    ModelSummary,
    PreservedAttention,
    add_attention,
    create_model,
    list_models,
    register_model,
    summary,
)

__version__ = "0.1.0"

__all__ = [
    "CBAM",
    "AttentionReport",
    "ChannelAttention",
    "GridGenerator",
    "ModelSummary",
    "PreservedAttention",
    "SpatialAttention",
    "SpatialTransformer",
    "SqueezeExcite",
    "__version__",
    "add_attention",
    "create_attention",
    "create_model",
    "functional",
    "list_attention",
    "list_models",
    "models",
    "register_attention",
    "register_model",
    "summary",
    "use_backend",
]
