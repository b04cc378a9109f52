"""ONNX Runtime: session loading and a runner."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort


def physical_cores() -> int:
    """Physical cores (ONNX Runtime's best intra-op thread count), from /proc/cpuinfo where it exists."""
    try:
        cores = set()
        physical = core = None
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not key and core is not None:
                    cores.add((physical, core))
                    physical = core = None
        if core is not None:
            cores.add((physical, core))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1


def session_options(*, threads: int | None = None, optimize: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or physical_cores()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 3  # errors only: ORT's warnings are not the user's business
    return options


# execution provider -> the short name runners and reports use
PROVIDER_NAMES = {
    "CPUExecutionProvider": "cpu",
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "tensorrt",
}


class OnnxRuntimeRunner:
    """Runs an ONNX model (path or serialized bytes) on one ONNX Runtime execution provider."""

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        provider: str = "CPUExecutionProvider",
        threads: int | None = None,
        optimize: bool = True,
    ) -> None:
        source = model if isinstance(model, bytes) else str(Path(model))
        providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
        self.session = ort.InferenceSession(
            source, sess_options=session_options(threads=threads, optimize=optimize), providers=providers
        )
        self.name = f"onnxruntime-{PROVIDER_NAMES.get(provider, provider)}"
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(self.output_names, {self.input_name: batch})
        return dict(zip(self.output_names, values))
