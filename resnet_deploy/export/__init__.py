"""PyTorch -> ONNX export, graph passes, and the export pipeline."""

from .pipeline import DEFAULT_BATCH, DEFAULT_OPSET, ExportResult, export

__all__ = ["DEFAULT_BATCH", "DEFAULT_OPSET", "ExportResult", "export"]
