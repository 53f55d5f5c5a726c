"""Pure tensor functions: grid generators, the bilinear sampler, pooling and gates.

Every function here follows a formula of ``DESIGN.md`` §1 and names it in its docstring.
"""

from .attention import GATES, POOLS, channel_pool, channel_scale, gate, global_pool
from .fused import cbam, cbam_reference, squeeze_excite, squeeze_excite_reference
from .grids import (
    TRANSFORMS,
    affine_grid,
    identity_params,
    num_params,
    params_to_grid,
    params_to_matrix,
    projective_grid,
    rts_matrix,
    scale_translation_matrix,
    tps_control_points,
    tps_grid,
    tps_weights,
    translation_matrix,
)
from .sampling import PADDING_MODES, bilinear_sample, bilinear_sample_reference

__all__ = [
    "GATES",
    "PADDING_MODES",
    "POOLS",
    "TRANSFORMS",
    "affine_grid",
    "bilinear_sample",
    "bilinear_sample_reference",
    "cbam",
    "cbam_reference",
    "channel_pool",
    "channel_scale",
    "gate",
    "global_pool",
    "identity_params",
    "num_params",
    "params_to_grid",
    "params_to_matrix",
    "projective_grid",
    "rts_matrix",
    "scale_translation_matrix",
    "squeeze_excite",
    "squeeze_excite_reference",
    "tps_control_points",
    "tps_grid",
    "tps_weights",
    "translation_matrix",
]
