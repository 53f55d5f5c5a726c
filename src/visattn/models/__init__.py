"""Model zoo (ResNets with attention, the Spatial Transformer paper's networks) and tools.

See docs/models.md. Tests: ``tests/models/``.
"""

from .integrate import AttentionReport, Insertion, PreservedAttention, add_attention
from .registry import ModelEntry, create_model, list_models, register_model
from .resnet import PLACEMENTS, BasicBlock, Bottleneck, ResNet, cifar_resnet, imagenet_resnet
from .stn_nets import STNClassifier, cnn, fcn, stcnn, stfcn
from .summary import ModelSummary, attention_modules, summary

__all__ = [
    "PLACEMENTS",
    "AttentionReport",
    "BasicBlock",
    "Bottleneck",
    "Insertion",
    "ModelEntry",
    "ModelSummary",
    "PreservedAttention",
    "ResNet",
    "STNClassifier",
    "add_attention",
    "attention_modules",
    "cifar_resnet",
    "cnn",
    "create_model",
    "fcn",
    "imagenet_resnet",
    "list_models",
    "register_model",
    "stcnn",
    "stfcn",
    "summary",
]
