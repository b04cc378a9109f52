"""PyTorch -> ONNX export, graph passes, and the export pipeline."""

from .engine import BuildOptions
from .pipeline import DEFAULT_BATCH, DEFAULT_OPSET, ExportResult, build, export

__all__ = ["DEFAULT_BATCH", "DEFAULT_OPSET", "BuildOptions", "ExportResult", "build", "export"]
