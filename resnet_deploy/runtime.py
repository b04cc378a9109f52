"""Load an artifact as a runner: the one entry point of predict, bench and serve.

    with resnet_deploy.runtime.load("artifacts/resnet50.onnx") as runner:
        runner.warmup()
        logits = runner(batch)["logits"]

The backend follows the file (``.engine`` -> TensorRT, ``.onnx`` -> ONNX Runtime)
unless chosen; ``torch`` runs the float32 PyTorch model the artifact was
exported from (rebuilt from the manifest), the reference and the baseline.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from .artifacts import Manifest, manifest_for
from .backends import detect
from .backends.base import Runner
from .errors import DeployError, DeployWarning

BACKENDS = ("auto", "torch", "ort", "trt")
_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def parse_device(device: str | None, *, default_cuda: bool) -> tuple[str, int]:
    """``"cuda:1"`` -> ("cuda", 1); None -> the GPU when there is one and ``default_cuda``, else the CPU."""
    if device is None:
        return ("cuda" if default_cuda and detect.torch_cuda().available else "cpu"), 0
    match = _DEVICE.match(device)
    if not match:
        raise DeployError(f"unknown device {device!r}: use cpu, cuda or cuda:N")
    return match.group(1), int(match.group(2) or 0)


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
    """A runner for ``artifact`` (a file listed in its manifest) on ``backend`` and ``device``.

    ``threads``: ONNX Runtime intra-op threads (default: physical cores) or torch's thread count.
    ``graph_cache``: keep ONNX Runtime's optimised graph beside the artifact.
    ``channels_last``/``compile``/``half`` (float16): torch options. ``cuda_graphs``: TensorRT option.
    ``ort_tensorrt``: ONNX Runtime with its TensorRT execution provider (CUDA and CPU as fallbacks).
    """
    path = Path(artifact)
    if backend not in BACKENDS:
        raise DeployError(f"unknown backend {backend!r}: choose from {', '.join(BACKENDS)}")
    manifest, precision = manifest_for(path)
    if backend == "auto":
        backend = "trt" if precision == "engine" else "ort"
    if backend == "trt":
        runner = _tensorrt(path, manifest, precision, device, cuda_graphs)
    elif precision == "engine":
        raise DeployError(f"{path.name} is a TensorRT engine: only --backend trt runs it "
                          f"(the ONNX it was built from is {manifest.precision_options['engine']['built_from']})")
    elif backend == "ort":
        runner = _onnxruntime(path, manifest, precision, device, threads, graph_cache, ort_tensorrt)
    else:
        runner = _torch(manifest, device, threads, channels_last, compile, half)
    runner.artifact, runner.manifest = str(path), manifest
    if backend == "torch":
        runner.precision = "fp16" if half else "fp32"
    else:
        runner.precision = precision
    return runner


def _batch_range(manifest: Manifest) -> tuple[int, int]:
    return manifest.batch.min, manifest.batch.max


def _tensorrt(path: Path, manifest: Manifest, precision: str, device: str | None, cuda_graphs: bool) -> Runner:
    from .backends.tensorrt import TensorRTRunner, check_engine_compatible, current_environment

    if precision != "engine":
        raise DeployError(f"TensorRT runs engines: build one with `resnet-deploy build {path}`")
    kind, index = parse_device(device, default_cuda=True)
    if kind != "cuda":
        raise DeployError("a TensorRT engine runs on a CUDA GPU, not the CPU")
    import torch

    environment = current_environment(index)  # first: says why when TensorRT or the GPU is missing
    torch.cuda.set_device(index)
    check_engine_compatible(manifest.precision_options["engine"], *environment)
    return TensorRTRunner(path, cuda_graphs=cuda_graphs)


def _onnxruntime(path: Path, manifest: Manifest, precision: str, device: str | None, threads: int | None,
                 graph_cache: bool, ort_tensorrt: bool) -> Runner:
    from .backends.onnxrt import OnnxRuntimeRunner, int8_kernel_problem

    gpu_provider = "TensorrtExecutionProvider" if ort_tensorrt else "CUDAExecutionProvider"
    gpu = detect.onnxruntime_provider(gpu_provider)
    kind, index = parse_device(device, default_cuda=gpu.available or ort_tensorrt)
    if (kind == "cuda" or ort_tensorrt) and not gpu.available:
        raise DeployError(f"cannot run {path.name} on {gpu_provider} with ONNX Runtime: {gpu.reason}")
    if ort_tensorrt and kind != "cuda":
        raise DeployError("ONNX Runtime's TensorRT provider runs on a CUDA GPU, not the CPU")
    provider = gpu_provider if kind == "cuda" else "CPUExecutionProvider"
    if precision == "int8" and provider == "CPUExecutionProvider":
        problem = int8_kernel_problem(manifest.precision_options.get("int8", {}))
        if problem:
            warnings.warn(f"{path.name}: {problem}", DeployWarning, stacklevel=3)
    return OnnxRuntimeRunner(path, provider=provider, device_id=index, threads=threads, graph_cache=graph_cache,
                             model_sha256=manifest.artifact(precision).sha256, batch_range=_batch_range(manifest))


def _torch(manifest: Manifest, device: str | None, threads: int | None, channels_last: bool, compile: bool,
           half: bool) -> Runner:
    try:
        import torch
    except ImportError:
        raise DeployError("the torch backend needs PyTorch, which is not installed here: use --backend ort or trt") from None

    from .backends.pytorch import TorchRunner, reference_model

    kind, index = parse_device(device, default_cuda=True)
    if kind == "cuda":
        cuda = detect.torch_cuda()
        if not cuda.available:
            raise DeployError(f"cannot run torch on CUDA: {cuda.reason}")
    if threads:
        torch.set_num_threads(threads)
    return TorchRunner(reference_model(manifest), manifest.outputs, input_spec=manifest.input,
                       device=f"{kind}:{index}" if kind == "cuda" else "cpu", channels_last=channels_last,
                       compile=compile, half=half, batch_range=_batch_range(manifest))
