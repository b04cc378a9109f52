"""resnet-deploy: ship ResNet-family models from PyTorch to ONNX Runtime and TensorRT, with proof of parity."""

from .errors import ArtifactError, CheckpointError, DeployError, ExportError, ParityError, UnknownArchError
from .export import ExportResult, export
from .models import create_model, get_model_info, list_models
from .parity.verify import Report, verify

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "CheckpointError",
    "DeployError",
    "ExportError",
    "ExportResult",
    "ParityError",
    "Report",
    "UnknownArchError",
    "__version__",
    "create_model",
    "export",
    "get_model_info",
    "list_models",
    "verify",
]
