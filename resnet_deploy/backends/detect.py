"""What can run here, and why not: one place that verify, bench and doctor ask."""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str = ""  # why not, when not


def torch_cpu() -> Availability:
    if importlib.util.find_spec("torch") is None:
        return Availability(False, "torch is not installed")
    return Availability(True)


def torch_cuda() -> Availability:
    try:
        import torch
    except ImportError:
        return Availability(False, "torch is not installed")

    if not torch.cuda.is_available():
        cuda = torch.version.cuda
        return Availability(False, "no CUDA GPU visible to torch" if cuda else "torch is a CPU-only build")
    return Availability(True)


def onnxruntime_provider(provider: str) -> Availability:
    import onnxruntime as ort

    if provider in ort.get_available_providers():
        return Availability(True)
    return Availability(False, f"onnxruntime has no {provider} (install onnxruntime-gpu instead of onnxruntime)")


def cuda_gpu() -> bool:
    """A CUDA GPU is visible, to the CUDA runtime of cuda-python or to torch: a target without PyTorch
    sees its GPU too."""
    from . import cuda

    return (cuda.bindings_installed() and cuda.device_count() > 0) or torch_cuda().available


def tensorrt() -> Availability:
    """TensorRT with cuda-python (its device buffers) and a CUDA GPU: no PyTorch needed."""
    from . import cuda

    if importlib.util.find_spec("tensorrt") is None:
        return Availability(False, "tensorrt is not installed (pip install 'resnet-deploy[gpu-cu12]' or '[gpu-cu13]' on a machine with an NVIDIA GPU)")
    if not cuda.bindings_installed():
        return Availability(False, f"tensorrt is installed but cuda-python is not ({cuda.INSTALL_HINT})")
    if cuda.device_count() == 0:
        return Availability(False, f"tensorrt is installed but {cuda.driver_problem() or 'the CUDA runtime sees no GPU'}")
    return Availability(True)


@functools.lru_cache(maxsize=None)
def openvino() -> Availability:
    """OpenVINO and its CPU plugin (asked once per process: it starts OpenVINO's runtime)."""
    if importlib.util.find_spec("openvino") is None:
        return Availability(False, "openvino is not installed (pip install 'resnet-deploy[openvino]')")
    import openvino as ov

    if "CPU" not in ov.Core().available_devices:
        return Availability(False, f"openvino {ov.__version__} has no CPU plugin on this machine")
    return Availability(True)


def openvino_bf16() -> Availability:
    """OpenVINO on a CPU with native bf16 (emulated bf16 would be slower than f32, and is not offered)."""
    from ..environment import bf16_problem

    problem = bf16_problem()
    return Availability(False, problem) if problem else openvino()
