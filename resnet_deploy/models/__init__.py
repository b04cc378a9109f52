"""The ResNet family in PyTorch, checkpoint-compatible with torchvision, timm and IBN-Net."""

from .checkpoints import read_state_dict, save_checkpoint
from .archs import (
    ArchSpec,
    ModelInfo,
    Preprocess,
    build_model,
    count_macs,
    create_model,
    get_model_info,
    get_spec,
    list_models,
)
from .resnet import EmbeddedPreprocess, ResNet

__all__ = [
    "ArchSpec",
    "EmbeddedPreprocess",
    "ModelInfo",
    "Preprocess",
    "ResNet",
    "build_model",
    "count_macs",
    "create_model",
    "get_model_info",
    "get_spec",
    "list_models",
    "read_state_dict",
    "save_checkpoint",
]
