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
from typing import Any

from .artifacts import manifest_for
from .backends.base import Runner
from .backends.options import LoadOptions
from .backends.registry import open_runner


def load(
    artifact: str | os.PathLike[str],
    *,
    backend: str = "auto",
    device: str | None = None,
    threads: int | None = None,
    graph_cache: bool = True,
    **own: Any,
) -> Runner:
    """A runner for ``artifact`` (a file listed in its manifest, unchanged since export).

    Args:
        artifact: an artifact file (``STEM.onnx``, ``STEM.fp16.onnx``, ``STEM.int8.onnx``, ``STEM.engine``).
        backend: a backend of :func:`~resnet_deploy.backends.registry.backend_choices`; ``"auto"``: the
            file's own (ONNX Runtime, TensorRT).
        device: ``cpu``, ``cuda`` or ``cuda:N``; None: the GPU where the backend can use one here.
        threads: CPU threads of ONNX Runtime, OpenVINO or torch (default: physical cores).
        graph_cache: keep ONNX Runtime's optimised graph (OpenVINO's compiled blob) beside the artifact.
        **own: the backend's own options, the fields of its row's options type in
            :mod:`resnet_deploy.backends.options` (``cuda_graphs`` for trt; ``channels_last``, ``compile``,
            ``half`` for torch; ``tensorrt_provider``, ``as_written`` for ort).

    Returns:
        A :class:`~resnet_deploy.backends.base.Runner`; use it as a context manager to release it.

    Raises:
        DeployError: the file is not an artifact of its manifest, the backend does not run it, cannot
            run here (and why), or does not take one of ``own``.
    """
    path = Path(artifact)
    manifest, precision = manifest_for(path)
    options = LoadOptions(device=device, threads=threads, graph_cache=graph_cache, own=own)
    return open_runner(path, manifest, precision, backend, options)
