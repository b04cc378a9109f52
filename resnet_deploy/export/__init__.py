"""PyTorch -> ONNX export, graph passes, and the export pipeline.

The pipeline (and PyTorch with it) is imported on first use, so that the
precision and graph helpers load where PyTorch is not installed.
"""

import importlib
from typing import Any

_LAZY = {"BuildOptions": ".engine", "DEFAULT_BATCH": ".options", "DEFAULT_OPSET": ".options",
         "ExportOptions": ".options", "ExportResult": ".pipeline", "build": ".pipeline", "export": ".pipeline"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
