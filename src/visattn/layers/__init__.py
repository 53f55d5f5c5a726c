"""nn.Module layers, one file per mechanism, and the attention registry."""

from ._common import reduced_channels
from .bam import BAM
from .cbam import CBAM, ChannelAttention, LightCBAM, LightSpatialAttention, SpatialAttention
from .coord import CoordAttention
from .eca import CECA, ECA, ESE
from .fusion import batchnorm_attention
from .gather_excite import GatherExcite
from .global_context import GlobalContext
from .non_local import NonLocal
from .registry import create_attention, list_attention, register_attention
from .selective_kernel import SelectiveKernel
from .simam import SimAM
from .spatial_transformer import GridGenerator, SpatialTransformer, default_localisation
from .squeeze_excite import SqueezeExcite
from .triplet import TripletAttention

__all__ = [
    "BAM",
    "CBAM",
    "CECA",
    "ECA",
    "ESE",
    "ChannelAttention",
    "CoordAttention",
    "GatherExcite",
    "GlobalContext",
    "GridGenerator",
    "LightCBAM",
    "LightSpatialAttention",
    "NonLocal",
    "SelectiveKernel",
    "SimAM",
    "SpatialAttention",
    "SpatialTransformer",
    "SqueezeExcite",
    "TripletAttention",
    "batchnorm_attention",
    "create_attention",
    "default_localisation",
    "list_attention",
    "reduced_channels",
    "register_attention",
]
