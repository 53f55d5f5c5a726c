"""Fast kernels behind :mod:`visattn.functional` (docs/kernels.md).

SE (arXiv:1709.01507), CBAM (arXiv:1807.06521), channel gates with a pluggable excitation
(:func:`visattn.kernels._excite.register_excitation`) and the bilinear sampler of the Spatial
Transformer (arXiv:1506.02025) run as fused kernels: Triton on CUDA
(:mod:`visattn.kernels.triton_kernels`), C++ with OpenMP on CPU (:mod:`visattn.kernels.cpu`),
wrapped as ``torch.library`` custom operators ``torch.ops.visattn.*``
(:mod:`visattn.kernels.ops`, :mod:`visattn.kernels.sampler`). :func:`use_backend` and the
``VISATTN_BACKEND`` environment variable switch back to the reference formulas; on CUDA the
default measures the Triton kernels against them (:func:`tuning_results`, :func:`clear_tuning`,
:mod:`visattn.kernels._tune`);
:func:`empty_cache` and :func:`pool_stats` manage the memory that the CPU kernels reuse for their
outputs (:mod:`visattn.kernels._pool`). What the operators call on a backend is
:mod:`visattn.kernels._contract`. The kernels import only each other, ``visattn._checks`` and
``visattn._modes`` (never the formulas, layers or anything above:
``tests/kernels/test_kernels_layering.py``). Tests: ``tests/kernels/``.
"""

from ._backend import BACKENDS, get_backend, select_impl, triton_available, use_backend
from ._pool import empty_cache, pool_stats
from ._tune import clear_tuning, tuning_results

__all__ = [
    "BACKENDS",
    "clear_tuning",
    "empty_cache",
    "get_backend",
    "pool_stats",
    "select_impl",
    "triton_available",
    "tuning_results",
    "use_backend",
]
