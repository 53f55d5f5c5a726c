"""The Triton backend of the fused SE / CBAM blocks (arXiv:1709.01507, arXiv:1807.06521) and of
the bilinear sampler (Jaderberg et al., arXiv:1506.02025, eq. 5-7): the module the operators
(:mod:`visattn.kernels.ops`, :mod:`visattn.kernels.sampler`) call for ``impl="triton"``.

It gathers the kernels, which live by job in

- :mod:`visattn.kernels._triton_common`: tiles, the (N, C, P) view of x, the folded BatchNorm's
  load;
- :mod:`visattn.kernels._triton_block`: the full-size passes of SE / CBAM (``stats_c``,
  ``stats_p``, ``apply``, ``bwd_reduce``, ``bwd_reduce_norm``, ``bwd_channel``,
  ``bwd_channel_norm``, ``bwd_apply``);
- :mod:`visattn.kernels._triton_excite`: the excitation MLP (``excite``, ``excite_backward``,
  ``excite_wgrad``);
- :mod:`visattn.kernels._triton_fold`: the folded BatchNorm's (C,)-sized steps (``fold``,
  ``fold_backward``);
- :mod:`visattn.kernels._triton_sampler`: the sampler (``sample_forward``,
  ``sample_backward``).

The SE / CBAM functions keep the contract :class:`visattn.kernels._contract.BlockKernels`, as
:mod:`visattn.kernels.cpu` does (same names, arguments and formulas); the sampler's keep
:class:`visattn.kernels._contract.SamplerKernels`.

Runs on CUDA and, with ``TRITON_INTERPRET=1`` set before ``triton`` is imported, on CPU tensors.
Tests: ``tests/kernels/test_kernels_triton.py`` (interpreter),
``tests/kernels/test_kernels_triton_compile.py`` (sm_90 compile of every kernel),
``tests/kernels/test_kernels_contract.py`` (the contract) and the CUDA-parametrised cases of
``tests/kernels/test_kernels_se_cbam.py`` / ``test_kernels_sampler.py``.
"""

from __future__ import annotations

from ._contract import BLOCK_KERNEL_NAMES, SAMPLER_KERNEL_NAMES

# Re-exported as the backend's public functions (``x as x``: an explicit re-export).
from ._triton_block import apply as apply
from ._triton_block import bwd_apply as bwd_apply
from ._triton_block import bwd_channel as bwd_channel
from ._triton_block import bwd_channel_norm as bwd_channel_norm
from ._triton_block import bwd_reduce as bwd_reduce
from ._triton_block import bwd_reduce_norm as bwd_reduce_norm
from ._triton_block import stats_c as stats_c
from ._triton_block import stats_p as stats_p
from ._triton_excite import excite as excite
from ._triton_excite import excite_backward as excite_backward
from ._triton_excite import excite_wgrad as excite_wgrad
from ._triton_fold import fold as fold
from ._triton_fold import fold_backward as fold_backward
from ._triton_sampler import sample_backward as sample_backward
from ._triton_sampler import sample_forward as sample_forward

__all__ = [*BLOCK_KERNEL_NAMES, *SAMPLER_KERNEL_NAMES]  # the contract's functions
