"""Pure tensor functions, one home per formula: the attention mechanisms' maths, written once.

The layers (:mod:`visattn.layers`), the fused blocks' reference branches and the visualisation
(:mod:`visattn.viz.capture`) call these functions; each docstring names its paper, equation and
shapes (``docs/core.md`` maps them to the tests).

- Spatial Transformer (arXiv:1506.02025): grid generators (:mod:`.grids`) and the bilinear
  sampler (:mod:`.sampling`).
- Shared pieces (:mod:`.attention`): pools, gates (:func:`apply_gate`), the bottleneck MLP and
  the channel reweighting.
- Squeeze-and-Excitation (arXiv:1709.01507, :mod:`.se_block`): :func:`excitation`,
  :func:`squeeze_excite_reference`.
- CBAM (arXiv:1807.06521, :mod:`.cbam_block`): :func:`channel_attention_map`,
  :func:`spatial_attention_map`, :func:`cbam_arrange`, :func:`cbam_reference`; timm's light
  CBAM (no paper): ``merge_pools=True`` of the two maps, :func:`light_cbam`.
- BAM (arXiv:1807.06514, :mod:`.bam_block`): :func:`bam_channel_attention`,
  :func:`bam_spatial_attention`, :func:`bam_attention`, :func:`bam`.
- Coordinate Attention (arXiv:2103.02907, :mod:`.coord_block`): :func:`coord_attention_gates`,
  :func:`coord_attention_map`, :func:`coord_attention`.
- Triplet Attention (arXiv:2010.03045, :mod:`.triplet_block`): :func:`triplet_attention_maps`,
  :func:`triplet_attention_map`, :func:`triplet_attention`.
- ECA (arXiv:1910.03151), circular ECA and effective SE (arXiv:1911.06667), the channel gates
  without reduction (:mod:`.eca_block`): :func:`eca`, :func:`eca_gate`, :func:`eca_kernel_size`,
  :func:`ese`, :func:`ese_gate`.
- Gather-Excite (arXiv:1810.12348, :mod:`.ge_block`): :func:`ge_gather`,
  :func:`gather_excite_map`, :func:`gather_excite`.
- Global Context (arXiv:1904.11492, :mod:`.gc_block`): :func:`gc_context_weights`,
  :func:`global_context_map`, :func:`global_context`.
- Selective Kernel (arXiv:1903.06586, :mod:`.sk_block`): :func:`sk_attention`,
  :func:`selective_kernel` (fuse and select of the SK convolution), :func:`sk_attention_channels`.
- Non-local block (arXiv:1711.07971, :mod:`.nonlocal_block`): :func:`non_local`,
  :func:`non_local_response`, :func:`non_local_affinity` (the pairwise matrix).
- SimAM (ICML 2021, :mod:`.simam_block`): :func:`simam`, :func:`simam_map`.
- The fused blocks (:mod:`.fused`): :func:`squeeze_excite` and :func:`cbam` choose the reference
  or the kernels of :mod:`visattn.kernels` and are what the layers run; :func:`channel_gate`
  does the same for any x * E(pool(x)) with an excitation E registered by
  :func:`register_excitation` (:func:`channel_gate_reference`: the plain formula).

Symbols of the bottleneck MLP, in every docstring of the package: W_1, b_1 are ``fc1``'s weight
and bias (C -> C/r), W_2, b_2 are ``fc2``'s (C/r -> C), r the reduction ratio, so the MLP is
W_2 ReLU(W_1 z + b_1) + b_2 (SE eq. 3 writes it without biases). CBAM's paper names the same two
layers W_0 and W_1 (eq. 2): its W_0 is our W_1 (``fc1``), its W_1 our W_2 (``fc2``).

Every public function validates its arguments once (errors name the argument, what was expected
and what came) and then calls unvalidated private helpers.

To add a mechanism: a module ``<name>_block.py`` with its formula functions (validated public
ones over private ones, built from :mod:`.attention`'s pieces), exported here, with its tests.
"""

from .attention import (
    GATES,
    POOLS,
    apply_gate,
    bottleneck_mlp,
    channel_pool,
    channel_scale,
    gate,
    global_pool,
)
from .bam_block import (
    BAM_COMBINES,
    bam,
    bam_attention,
    bam_channel_attention,
    bam_spatial_attention,
)
from .cbam_block import (
    ORDERS,
    cbam_arrange,
    cbam_reference,
    channel_attention_map,
    light_cbam,
    spatial_attention_map,
)
from .coord_block import ACTIVATIONS, coord_attention, coord_attention_gates, coord_attention_map
from .eca_block import eca, eca_gate, eca_kernel_size, ese, ese_gate
from .fused import (
    cbam,
    channel_gate,
    channel_gate_reference,
    register_excitation,
    squeeze_excite,
)
from .gc_block import gc_context_weights, global_context, global_context_map
from .ge_block import gather_excite, gather_excite_map, ge_gather
from .grids import *  # noqa: F403 (the grid generators: grids.__all__)
from .grids import __all__ as _grid_names
from .nonlocal_block import NONLOCAL_PAIRWISE, non_local, non_local_affinity, non_local_response
from .sampling import PADDING_MODES, bilinear_sample, bilinear_sample_reference
from .se_block import excitation, squeeze_excite_reference
from .simam_block import SIMAM_LAMBDA, simam, simam_map
from .sk_block import selective_kernel, sk_attention, sk_attention_channels
from .triplet_block import triplet_attention, triplet_attention_map, triplet_attention_maps

__all__ = [
    "ACTIVATIONS",
    "BAM_COMBINES",
    "GATES",
    "NONLOCAL_PAIRWISE",
    "ORDERS",
    "PADDING_MODES",
    "POOLS",
    "SIMAM_LAMBDA",
    *_grid_names,  # the grid generators
    "apply_gate",
    "bam",
    "bam_attention",
    "bam_channel_attention",
    "bam_spatial_attention",
    "bilinear_sample",
    "bilinear_sample_reference",
    "bottleneck_mlp",
    "cbam",
    "cbam_arrange",
    "cbam_reference",
    "channel_attention_map",
    "channel_gate",
    "channel_gate_reference",
    "channel_pool",
    "channel_scale",
    "coord_attention",
    "coord_attention_gates",
    "coord_attention_map",
    "eca",
    "eca_gate",
    "eca_kernel_size",
    "ese",
    "ese_gate",
    "excitation",
    "gate",
    "gather_excite",
    "gather_excite_map",
    "gc_context_weights",
    "ge_gather",
    "global_context",
    "global_context_map",
    "global_pool",
    "light_cbam",
    "non_local",
    "non_local_affinity",
    "non_local_response",
    "register_excitation",
    "selective_kernel",
    "simam",
    "simam_map",
    "sk_attention",
    "sk_attention_channels",
    "spatial_attention_map",
    "squeeze_excite",
    "squeeze_excite_reference",
    "triplet_attention",
    "triplet_attention_map",
    "triplet_attention_maps",
]
