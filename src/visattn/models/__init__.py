"""Model zoo (ResNets with attention, the Spatial Transformer paper's networks) and tools.

See docs/models.md. Tests: ``tests/models/``.
"""

from .registry import ModelEntry, create_model, list_models, register_model
from .resnet import PLACEMENTS, BasicBlock, Bottleneck, ResNet, cifar_resnet, imagenet_resnet
from .stn_nets import STNClassifier, cnn, fcn, stcnn, stfcn

__all__ = [
    "PLACEMENTS",
    "BasicBlock",
    "Bottleneck",
    "ModelEntry",
    "ResNet",
    "STNClassifier",
    "cifar_resnet",
    "cnn",
    "create_model",
    "fcn",
    "imagenet_resnet",
    "list_models",
    "register_model",
    "stcnn",
    "stfcn",
]
