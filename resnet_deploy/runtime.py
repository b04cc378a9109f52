"""Load an artifact as a runner: the one entry point of predict, bench and serve.

    with resnet_deploy.runtime.load("artifacts/resnet50.onnx") as runner:
        runner.warmup()
        logits = runner(batch)["logits"]

The backend follows the file (``.engine`` -> TensorRT, ``.onnx`` -> ONNX Runtime)
unless chosen (``openvino`` runs ONNX too); ``torch`` runs the float32 PyTorch
model the artifact was exported from (rebuilt from the manifest), the reference
and the baseline. The backends are rows of :mod:`resnet_deploy.backends.registry`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .artifacts import manifest_for
from .backends.base import Runner
from .backends.registry import BACKENDS as _REGISTRY
from .backends.registry import LoadOptions, open_runner

BACKENDS = ("auto", *_REGISTRY)


def load(
    artifact: str | os.PathLike[str],
    *,
    backend: str = "auto",
    device: str | None = None,
    threads: int | None = None,
    graph_cache: bool = True,
    channels_last: bool = False,
    compile: bool = False,
    half: bool = False,
    cuda_graphs: bool = False,
    ort_tensorrt: bool = False,
) -> Runner:
    """A runner for ``artifact`` (a file listed in its manifest, unchanged since export) on ``backend``
    and ``device``: the fields of :class:`~resnet_deploy.backends.registry.LoadOptions`.

    ``threads``: CPU threads of ONNX Runtime, OpenVINO or torch (default: physical cores).
    ``graph_cache``: keep ONNX Runtime's optimised graph (OpenVINO's compiled blob) beside the artifact.
    ``channels_last``/``compile``/``half`` (float16): torch options. ``cuda_graphs``: TensorRT option.
    ``ort_tensorrt``: ONNX Runtime with its TensorRT execution provider (CUDA and CPU as fallbacks).
    """
    path = Path(artifact)
    manifest, precision = manifest_for(path)
    options = LoadOptions(device=device, threads=threads, graph_cache=graph_cache, channels_last=channels_last,
                          compile=compile, half=half, cuda_graphs=cuda_graphs, ort_tensorrt=ort_tensorrt)
    return open_runner(path, manifest, precision, backend, options)
