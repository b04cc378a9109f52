"""What this machine has: tool versions, and why an optional backend is missing."""

from __future__ import annotations

import importlib
import importlib.metadata
import platform

_TOOLS = ("torch", "onnx", "onnxruntime", "onnxsim", "tensorrt")
# onnxruntime-gpu installs the module onnxruntime under another distribution name
_DISTRIBUTIONS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu")}


def package_version(name: str) -> str | None:
    for dist in _DISTRIBUTIONS.get(name, (name,)):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def tool_versions() -> dict[str, str]:
    """Versions recorded in manifests; a tool that is not installed is left out."""
    versions = {"python": platform.python_version()}
    for name in _TOOLS:
        version = package_version(name)
        if version is not None:
            versions[name] = version
    return versions
