"""The runtimes artifacts run on: one row per backend, the table that ``runtime.load``, verify,
bench, serve, the Triton writer and doctor all read.

A backend runs one artifact format (``onnx``, ``engine``) or, for ``torch``, the
PyTorch model the manifest describes. Its variants are the ways it runs (CPU,
CUDA, an execution provider): each says whether it can run here and why not.
Its loader is named, not imported, so a backend's library is imported only
where that backend is used. Adding a backend is a module with a loader and a
row here.
"""

from __future__ import annotations

import importlib
import os
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..environment import cpu_description, package_version
from ..errors import DeployError, within
from ..precisions import ENGINE
from . import detect
from .detect import Availability

if TYPE_CHECKING:
    from ..artifacts import Manifest
    from .base import Runner


@dataclass(frozen=True)
class LoadOptions:
    """How to load a runner; each backend reads the fields that concern it."""

    device: str | None = None  # cpu, cuda, cuda:N; None: the GPU where the backend can use one
    threads: int | None = None  # CPU threads (default: physical cores)
    graph_cache: bool = True  # keep the optimised graph or compiled blob beside the artifact (ORT, OpenVINO)
    channels_last: bool = False  # torch
    compile: bool = False  # torch
    half: bool = False  # torch: float16
    cuda_graphs: bool = False  # TensorRT
    ort_tensorrt: bool = False  # ONNX Runtime's TensorRT execution provider

    def __post_init__(self) -> None:
        if self.threads is not None:  # more threads than cores only contend (and each costs memory)
            within("--threads", self.threads, 1, os.cpu_count() or 1, "this machine's logical cores")


@dataclass(frozen=True)
class Variant:
    """One way a backend runs: what doctor lists, and what verify tries on every artifact it takes."""

    name: str  # the runner's name in reports, e.g. "onnxruntime-cuda"
    options: LoadOptions
    availability: Callable[[], Availability]
    cpu_int8_kernels: bool = False  # x86 INT8 kernels: exact only with VNNI or 7-bit weights (parity.int8)
    int8_as_written: bool = True  # its INT8 kernels execute the Q/DQ graph as written (not a graph of its own)


@dataclass(frozen=True)
class Backend:
    name: str  # what --backend takes
    runs: str  # the artifact format it runs, or "model": the manifest's PyTorch model, for any artifact
    loader: str  # "module:function" below resnet_deploy.backends, called (path, manifest, precision, options)
    platform: str  # the Triton platform / inference-protocol metadata name
    variants: tuple[Variant, ...]
    summary: str

    def load(self, path: Path, manifest: Manifest, precision: str, options: LoadOptions) -> Runner:
        module, _, function = self.loader.partition(":")
        try:
            loader = getattr(importlib.import_module(module, __package__), function)
        except ImportError as exc:
            raise DeployError(f"the {self.name} backend needs {exc.name}, which is not installed here "
                              "(`resnet-deploy doctor` says what can run)") from None
        return loader(path, manifest, precision, options)

    def takes(self, artifact_format: str) -> bool:
        return self.runs in (artifact_format, "model")


_CPU, _CUDA = LoadOptions(device="cpu"), LoadOptions(device="cuda")

BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("ort", "onnx", ".onnxrt:load", "onnxruntime_onnx", (
        Variant("onnxruntime-cpu", _CPU, lambda: Availability(True), cpu_int8_kernels=True),
        Variant("onnxruntime-cuda", _CUDA, lambda: detect.onnxruntime_provider("CUDAExecutionProvider")),
        Variant("onnxruntime-tensorrt", LoadOptions(device="cuda", ort_tensorrt=True),
                lambda: detect.onnxruntime_provider("TensorrtExecutionProvider")),
    ), "ONNX Runtime: CPU, or CUDA and TensorRT execution providers with onnxruntime-gpu"),
    Backend("trt", "engine", ".tensorrt:load", "tensorrt_plan", (
        Variant("tensorrt", _CUDA, detect.tensorrt),
    ), "TensorRT engines (STEM.engine) on an NVIDIA GPU"),
    Backend("openvino", "onnx", ".openvino:load", "openvino", (
        # OpenVINO turns Q/DQ pairs into FakeQuantize and fuses its own INT8 graph: on the trained digits
        # model, cosine 0.9985 against the graph as written, 0.9990 against PyTorch (ONNX Runtime: 0.9997)
        Variant("openvino-cpu", _CPU, detect.openvino, cpu_int8_kernels=True, int8_as_written=False),
    ), "OpenVINO on x86 and ARM CPUs: the same ONNX, fp32 and Q/DQ INT8"),
    Backend("torch", "model", ".pytorch:load", "pytorch", (
        Variant("torch-cpu", _CPU, detect.torch_cpu),
        Variant("torch-cuda", _CUDA, detect.torch_cuda),
    ), "the float32 PyTorch model the artifact was exported from (the reference and the baseline)"),
)}

# artifact format -> the backend that runs it when none is named
NATIVE = {"onnx": "ort", "engine": "trt"}
FORMAT_WORDS = {"onnx": "an ONNX model", "engine": "a TensorRT engine"}
HOW_TO_GET = {"engine": "build one with `resnet-deploy build STEM.onnx`"}


def artifact_format(precision: str) -> str:
    """What kind of file an artifact of ``precision`` is: an engine, or an ONNX model."""
    return "engine" if precision == ENGINE else "onnx"


def open_runner(path: Path, manifest: Manifest, precision: str, backend: str, options: LoadOptions) -> Runner:
    """A runner of the artifact ``path`` (its manifest already read) on ``backend`` ("auto": the format's own)."""
    chosen = backend_for(backend, artifact_format(precision), path.name)
    runner = chosen.load(path, manifest, precision, options)
    runner.artifact, runner.manifest, runner.backend = str(path), manifest, chosen.name
    if chosen.runs == "model":
        runner.precision = "fp16" if options.half else "fp32"
    else:
        runner.precision = precision
    return runner


_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def parse_device(device: str | None, *, default_cuda: bool) -> tuple[str, int]:
    """``"cuda:1"`` -> ("cuda", 1); None -> the GPU when there is one and ``default_cuda``, else the CPU."""
    if device is None:
        return ("cuda" if default_cuda and detect.cuda_gpu() else "cpu"), 0
    match = _DEVICE.match(device)
    if not match:
        raise DeployError(f"unknown device {device!r}: use cpu, cuda or cuda:N")
    return match.group(1), int(match.group(2) or 0)


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise DeployError(f"unknown backend {name!r}: choose from auto, {', '.join(BACKENDS)}")
    return BACKENDS[name]


def backend_for(name: str, artifact_format: str, artifact_name: str) -> Backend:
    """The backend ``name`` ("auto": the format's own) if it runs ``artifact_format``, else a one-line error."""
    backend = get_backend(NATIVE[artifact_format] if name == "auto" else name)
    if not backend.takes(artifact_format):
        runners = [b.name for b in BACKENDS.values() if b.takes(artifact_format)]
        how = f"; {HOW_TO_GET[backend.runs]}" if backend.runs in HOW_TO_GET else ""
        raise DeployError(f"{artifact_name} is {FORMAT_WORDS[artifact_format]}, and --backend {backend.name} runs "
                          f"{FORMAT_WORDS[backend.runs]}: use --backend {' or '.join(runners)}{how}")
    return backend


def variants() -> list[tuple[Backend, Variant]]:
    return [(backend, variant) for backend in BACKENDS.values() for variant in backend.variants]


def doctor() -> dict[str, object]:
    """What this machine can run and why not: the report of `resnet-deploy doctor`."""
    report: dict[str, object] = {"python": platform.python_version(), "platform": platform.platform(),
                                 "cpu": cpu_description()}
    cuda = detect.torch_cuda()
    try:
        import torch
    except ImportError:  # a target that runs artifacts needs no PyTorch
        torch = None
    report["torch"] = {"version": torch.__version__ if torch else None,
                       "cuda_build": torch.version.cuda if torch else None,
                       "cuda": cuda.available, "reason": cuda.reason or None,
                       "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                       if cuda.available else []}
    for name in ("onnx", "onnxsim", "onnxscript", "openvino", "matplotlib"):
        report[name] = {"version": package_version(name)}
    import onnxruntime as ort

    report["onnxruntime"] = {"version": package_version("onnxruntime"), "providers": ort.get_available_providers()}
    report["cuda"] = cuda_report()
    trt = detect.tensorrt()
    report["tensorrt"] = {"version": package_version("tensorrt"), "usable": trt.available, "reason": trt.reason or None}
    report["backends"] = {}
    for backend, variant in variants():
        state = variant.availability()
        report["backends"][variant.name] = {"backend": backend.name, "usable": state.available,
                                            "reason": state.reason or None}
    return report


def cuda_report() -> dict[str, object]:
    """What cuda-python sees: its version, the CUDA versions of the driver and of its runtime, the GPUs,
    and what stops it, for doctor (TensorRT's cu12 and cu13 builds each need a driver of their CUDA)."""
    from . import cuda

    installed = package_version("cuda-python") or package_version("cuda-bindings")
    if not cuda.bindings_installed():
        return {"cuda_python": installed, "driver": None, "runtime": None, "gpus": 0,
                "problem": cuda.INSTALL_HINT}
    found = cuda.versions()
    gpus = cuda.device_count()
    problem = cuda.driver_problem(found) or (None if gpus else "the CUDA runtime sees no GPU")
    return {"cuda_python": installed, **found, "gpus": gpus, "problem": problem}
