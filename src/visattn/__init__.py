"""visattn: visual attention for convolutional networks in PyTorch.

Spatial Transformer (Jaderberg et al., 2015, arXiv:1506.02025), Squeeze-and-Excitation
(Hu et al., 2018, arXiv:1709.01507) and CBAM (Woo et al., 2018, arXiv:1807.06521).
"""

from . import functional
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

__version__ = "0.1.0"

__all__ = [
    "CBAM",
    "ChannelAttention",
    "GridGenerator",
    "SpatialAttention",
    "SpatialTransformer",
    "SqueezeExcite",
    "__version__",
    "create_attention",
    "functional",
    "list_attention",
    "register_attention",
]
