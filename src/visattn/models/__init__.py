"""Model zoo and tools: ResNets (He et al., arXiv:1512.03385) with Squeeze-and-Excitation
(Hu et al., arXiv:1709.01507) or CBAM (Woo et al., arXiv:1807.06521), Selective Kernel ResNets
(Li et al., arXiv:1903.06586), the Spatial Transformer paper's networks (Jaderberg et al.,
arXiv:1506.02025), ``add_attention`` and ``summary``.

See docs/models.md. Tests: ``tests/models/``.
"""

from .integrate import AttentionReport, Insertion, PreservedAttention, add_attention
from .registry import PAPER_RESNETS, ModelEntry, create_model, list_models, register_model
from .resnet import (
    ATTENTION_AT,
    PLACEMENTS,
    STEMS,
    BasicBlock,
    Bottleneck,
    ResNet,
    cifar_resnet,
    imagenet_resnet,
)
from .sknet import SelectiveKernelBasic, SelectiveKernelBottleneck, sk_resnet
from .stn_nets import STNClassifier, cnn, fcn, stcnn, stfcn
from .summary import ModelSummary, attention_modules, summary

__all__ = [
    "ATTENTION_AT",
    "PAPER_RESNETS",
    "PLACEMENTS",
    "STEMS",
    "AttentionReport",
    "BasicBlock",
    "Bottleneck",
    "Insertion",
    "ModelEntry",
    "ModelSummary",
    "PreservedAttention",
    "ResNet",
    "STNClassifier",
    "SelectiveKernelBasic",
    "SelectiveKernelBottleneck",
    "add_attention",
    "attention_modules",
    "cifar_resnet",
    "cnn",
    "create_model",
    "fcn",
    "imagenet_resnet",
    "list_models",
    "register_model",
    "sk_resnet",
    "stcnn",
    "stfcn",
    "summary",
]
