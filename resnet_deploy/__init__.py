"""resnet-deploy: ship ResNet-family models from PyTorch to ONNX Runtime and TensorRT, with proof of parity."""

from typing import Any

from .environment import package_version as _package_version
from .errors import ArtifactError, CheckpointError, DeployError, ExportError, ParityError, UnknownArchError

__version__ = _package_version("resnet-deploy") or "unknown"  # pyproject.toml's, as installed

# The subpackage first: importing it later would rebind the name `export` to it, over the function below.
from . import export as _export_package  # noqa: E402  (PyTorch-free until its pipeline is used)
from .lazy import lazy_attributes  # noqa: E402

# Imported on first use: the PyTorch side (export, the model zoo) is not needed, or installed, on a target
# that only runs and verifies artifacts (runtime, predict, serve, verify --reference golden).
_LAZY = {"ExportResult": ".export", "ExportOptions": ".export", "create_model": ".models", "get_model_info": ".models",
         "list_models": ".models", "Report": ".parity.verify", "verify": ".parity.verify",
         "load": ".target.runtime", "tune": ".target.tune", "serve": ".serving.server",
         "ServeLimits": ".serving.limits", "TritonOptions": ".serving.triton",
         "write_model_repository": ".serving.triton", "run_batch": ".batch.job", "BatchOptions": ".batch.job",
         "RayOptions": ".batch.job", "serve_on_ray": ".serving.ray_serve", "RayServeOptions": ".serving.ray_serve",
         "write_kserve": ".serving.kserve", "KServeOptions": ".serving.kserve"}


def export(arch: str, options: Any = None, **keywords: Any) -> Any:
    """Export ``arch``: :func:`resnet_deploy.export.pipeline.export` (imports PyTorch on first call)."""
    return _export_package.export(arch, options, **keywords)


__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = [
    "ArtifactError",
    "BatchOptions",
    "CheckpointError",
    "DeployError",
    "ExportError",
    "ExportOptions",
    "ExportResult",
    "KServeOptions",
    "ParityError",
    "RayOptions",
    "RayServeOptions",
    "Report",
    "ServeLimits",
    "TritonOptions",
    "UnknownArchError",
    "__version__",
    "create_model",
    "export",
    "get_model_info",
    "list_models",
    "load",
    "run_batch",
    "serve",
    "serve_on_ray",
    "tune",
    "verify",
    "write_kserve",
    "write_model_repository",
]
