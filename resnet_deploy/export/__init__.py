"""PyTorch -> ONNX export, graph passes, and the export pipeline.

The pipeline (and PyTorch with it) is imported on first use, so that the
precision and graph helpers load where PyTorch is not installed.
"""

from ..lazy import lazy_attributes

_LAZY = {"BuildOptions": ".engine", "DEFAULT_BATCH": ".options", "DEFAULT_OPSET": ".options",
         "ExportOptions": ".options", "ExportResult": ".pipeline", "build": ".pipeline", "export": ".pipeline"}

__all__ = sorted(_LAZY)

__getattr__ = lazy_attributes(__name__, _LAZY)
