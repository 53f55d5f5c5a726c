"""visattn: visual attention for convolutional networks in PyTorch.

Spatial Transformer (Jaderberg et al., 2015, arXiv:1506.02025), Squeeze-and-Excitation
(Hu et al., 2018, arXiv:1709.01507), CBAM (Woo et al., 2018, arXiv:1807.06521) and the rest of the
field's attention for CNNs: ECA, circular ECA, effective SE, Gather-Excite, Global Context, BAM,
Selective Kernel, Coordinate and Triplet attention, SimAM, the non-local block and timm's light
CBAM, each by name through :func:`create_attention` (docs/mechanisms.md lists them).

Sub-packages, in import order (each imports only those before it; docs/architecture.md):

- ``kernels``: fused C++ (CPU) and Triton (CUDA) kernels as ``torch.ops.visattn.*``, their
  contract and the backend switch (:func:`use_backend`);
- ``functional``: every formula once, as a pure function: grids, the bilinear sampler, SE and
  CBAM, and the fused blocks' dispatch;
- ``layers``: one ``nn.Module`` per mechanism and the registry (:func:`create_attention`);
- ``models``: ResNets with attention, the STN paper's networks, :func:`add_attention`,
  :func:`summary`;
- ``data``: datasets, the bundled Fashion-MNIST subset, the STN paper's distortions;
- ``engine``: training (``Trainer``), evaluation, checkpoints, distributed training;
- ``viz``: attention capture, figures, Grad-CAM, the HTML report;
- ``commands`` and ``cli``: the ``visattn`` command (train, eval, predict, viz, demo, bench,
  data).

Below them, ``_checks`` (argument checks) and ``_modes`` (the gates, pools and BatchNorm modes).
"""

from . import functional, models
from .kernels import use_backend
from .layers import (
    BAM,
    CBAM,
    CECA,
    ECA,
    ESE,
    ChannelAttention,
    CoordAttention,
    GatherExcite,
    GlobalContext,
    GridGenerator,
    LightCBAM,
    NonLocal,
    SelectiveKernel,
    SimAM,
    SpatialAttention,
    SpatialTransformer,
    SqueezeExcite,
    TripletAttention,
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

#: Sub-packages imported on first use (``visattn.viz.capture`` works after ``import visattn``
#: without importing matplotlib, the engine or the data code up front).
_LAZY = ("commands", "data", "engine", "viz")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'visattn' has no attribute {name!r}")


__all__ = [
    "BAM",
    "CBAM",
    "CECA",
    "ECA",
    "ESE",
    "AttentionReport",
    "ChannelAttention",
    "CoordAttention",
    "GatherExcite",
    "GlobalContext",
    "GridGenerator",
    "LightCBAM",
    "ModelSummary",
    "NonLocal",
    "PreservedAttention",
    "SelectiveKernel",
    "SimAM",
    "SpatialAttention",
    "SpatialTransformer",
    "SqueezeExcite",
    "TripletAttention",
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
