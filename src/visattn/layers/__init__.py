"""nn.Module layers, one file per mechanism, and the attention registry."""

from ._common import reduced_channels
from .cbam import CBAM, ChannelAttention, SpatialAttention
from .eca import CECA, ECA, ESE
from .fusion import batchnorm_attention
from .gather_excite import GatherExcite
from .global_context import GlobalContext
from .registry import create_attention, list_attention, register_attention
from .selective_kernel import SelectiveKernel
from .spatial_transformer import GridGenerator, SpatialTransformer, default_localisation
from .squeeze_excite import SqueezeExcite

__all__ = [
    "CBAM",
    "CECA",
    "ECA",
    "ESE",
    "ChannelAttention",
    "GatherExcite",
    "GlobalContext",
    "GridGenerator",
    "SelectiveKernel",
    "SpatialAttention",
    "SpatialTransformer",
    "SqueezeExcite",
    "batchnorm_attention",
    "create_attention",
    "default_localisation",
    "list_attention",
    "reduced_channels",
    "register_attention",
]
