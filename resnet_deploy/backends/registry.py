"""The runtimes artifacts run on: one row per backend, the table that ``runtime.load``, verify,
export's gates, bench, serve, the Triton writer and doctor all read.

A backend runs one artifact format (``onnx``, ``engine``) or, for ``torch``, the
PyTorch model the manifest describes. Its variants are the ways it runs (CPU,
CUDA, an execution provider): each says whether it can run here and why not.
Its loader is named, not imported, so a backend's library is imported only
where that backend is used; what every loader would otherwise repeat (the
device, whether the GPU side is there, the batch range, the INT8-kernel
warning) is done once here, in :func:`open_runner`. Adding a backend is a
module with a loader, a row here and, if it has options of its own, their
dataclass in :mod:`.options`.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import DeployError, DeployWarning
from ..precisions import ENGINE, PRECISIONS
from . import detect
from .detect import Availability
from .load_options import (
    LoadOptions,
    NoOptions,
    OpenVINOOptions,
    OrtOptions,
    TensorRTOptions,
    TorchOptions,
    backend_options,
    parse_device,
)

if TYPE_CHECKING:
    from ..artifacts import Manifest
    from .base import Runner


@dataclass(frozen=True)
class Variant:
    """One way a backend runs: what doctor lists, and what verify tries on every artifact it takes."""

    name: str  # the runner's name in reports, e.g. "onnxruntime-cuda"
    options: LoadOptions
    availability: Callable[[], Availability]
    int8_as_written: bool = True  # its INT8 kernels execute the Q/DQ graph as written (not a graph of its own)
    precision: str | None = None  # the precision it computes a file in, where not the file's own (bf16)

    def runs_file_of(self, file_precision: str) -> bool:
        """Whether it runs a file of ``file_precision``: any, unless it computes another precision from one
        precision's file (bf16 from the fp32 file)."""
        return self.precision is None or PRECISIONS[self.precision].runs_file == file_precision


@dataclass(frozen=True)
class Backend:
    name: str  # what --backend takes
    runs: str  # the artifact format it runs, or "model": the manifest's PyTorch model, for any artifact
    loader: str  # "module:function" below resnet_deploy.backends, called (path, manifest, precision, device, options)
    platform: str  # the Triton platform (or backend) / inference-protocol metadata name
    variants: tuple[Variant, ...]
    title: str  # the runtime's name in sentences: "ONNX Runtime"
    summary: str
    options: type = NoOptions  # its own options (resnet_deploy.backends.load_options), LoadOptions.own
    # the GPU side, given its own options: whether it is there (None: the backend has no GPU side)
    gpu: Callable[[Any], Availability] | None = None
    on_cpu: Callable[[Any], bool] = field(default=lambda _own: True)  # whether it runs on the CPU, given its options
    cpu_int8_kernels: bool = False  # on the CPU, x86 INT8 kernels: exact only with VNNI or 7-bit weights (parity.int8)
    triton_key: str = "platform"  # how a Triton config names it: `platform: "tensorrt_plan"` or `backend: "openvino"`
    # the precision it computes a file of ``precision`` in, given its own options (OpenVINO's bf16 hint)
    computes: Callable[[Any, str], str] = field(default=lambda _own, precision: precision)
    # settings `tune` tries on each of its variants, as own options (OpenVINO's latency and throughput hints)
    tunables: tuple[dict[str, bool], ...] = ({},)

    def load(self, path: Path, manifest: Manifest, precision: str, device: tuple[str, int],
             options: LoadOptions) -> Runner:
        module, _, function = self.loader.partition(":")
        try:
            loader = getattr(importlib.import_module(module, __package__), function)
        except ImportError as exc:
            raise DeployError(f"the {self.name} backend needs {exc.name}, which is not installed here "
                              "(`resnet-deploy doctor` says what can run)") from None
        return loader(path, manifest, precision, device, options)

    def takes(self, artifact_format: str) -> bool:
        return self.runs in (artifact_format, "model")

    def device(self, requested: str | None, own: Any, artifact_name: str) -> tuple[str, int]:
        """The device it runs on (``requested``; None: the GPU where it has one here), or a one-line
        error saying why it cannot run there."""
        gpu = self.gpu(own) if self.gpu else None
        kind, index = parse_device(requested, default_cuda=gpu is not None and (gpu.available or not self.on_cpu(own)))
        needs_gpu = kind == "cuda" or not self.on_cpu(own)
        if needs_gpu and gpu is None:
            raise DeployError(f"the {self.name} backend runs on the CPU here: use --device cpu, or another backend "
                              "on a GPU")
        if needs_gpu and not gpu.available:
            raise DeployError(f"cannot run {artifact_name} on CUDA with the {self.name} backend: {gpu.reason}")
        if kind == "cpu" and not self.on_cpu(own):
            with_these = " with these options" if self.on_cpu(self.options()) else ""  # ort's TensorRT provider
            raise DeployError(f"the {self.name} backend{with_these} runs on a CUDA GPU, not the CPU")
        return kind, index


def _ort_gpu(own: OrtOptions) -> Availability:
    return detect.onnxruntime_provider("TensorrtExecutionProvider" if own.tensorrt_provider else "CUDAExecutionProvider")


_CPU, _CUDA = LoadOptions(device="cpu"), LoadOptions(device="cuda")

BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("ort", "onnx", ".onnxrt:load", "onnxruntime_onnx", (
        Variant("onnxruntime-cpu", _CPU, lambda: Availability(True)),
        Variant("onnxruntime-cuda", _CUDA, lambda: _ort_gpu(OrtOptions())),
        Variant("onnxruntime-tensorrt", replace(_CUDA, own=OrtOptions(tensorrt_provider=True)),
                lambda: _ort_gpu(OrtOptions(tensorrt_provider=True))),
    ), "ONNX Runtime", "ONNX Runtime: CPU, or CUDA and TensorRT execution providers with onnxruntime-gpu",
        options=OrtOptions, gpu=_ort_gpu, on_cpu=lambda own: not own.tensorrt_provider, cpu_int8_kernels=True),
    Backend("trt", "engine", ".tensorrt:load", "tensorrt_plan", (
        Variant("tensorrt", _CUDA, lambda: detect.tensorrt()),
    ), "TensorRT", "TensorRT engines (STEM.engine) on an NVIDIA GPU",
        options=TensorRTOptions, gpu=lambda _own: detect.tensorrt(), on_cpu=lambda _own: False),
    Backend("openvino", "onnx", ".openvino:load", "openvino", (
        # OpenVINO turns Q/DQ pairs into FakeQuantize and fuses its own INT8 graph: on the trained digits
        # model, cosine 0.9985 against the graph as written, 0.9990 against PyTorch (ONNX Runtime: 0.9997)
        Variant("openvino-cpu", _CPU, detect.openvino, int8_as_written=False),
        Variant("openvino-cpu-bf16", replace(_CPU, own=OpenVINOOptions(bf16=True)), detect.openvino_bf16,
                int8_as_written=False, precision="bf16"),
    ), "OpenVINO", "OpenVINO on x86 and ARM CPUs: the same ONNX, fp32 and Q/DQ INT8; the fp32 file in bf16 where "
       "the CPU has native bf16", options=OpenVINOOptions, cpu_int8_kernels=True, triton_key="backend",
        computes=lambda own, precision: "bf16" if own.bf16 else precision, tunables=({}, {"throughput": True})),
    Backend("torch", "model", ".pytorch:load", "pytorch", (
        Variant("torch-cpu", _CPU, detect.torch_cpu),
        Variant("torch-cuda", _CUDA, detect.torch_cuda),
    ), "PyTorch", "the float32 PyTorch model the artifact was exported from (the reference and the baseline)",
        options=TorchOptions, gpu=lambda _own: detect.torch_cuda()),
)}

# artifact format -> the backend that runs it when none is named
NATIVE = {"onnx": "ort", "engine": "trt"}
FORMAT_WORDS = {"onnx": "an ONNX model", "engine": "a TensorRT engine"}
HOW_TO_GET = {"engine": "build one with `resnet-deploy build STEM.onnx`"}


def artifact_format(precision: str) -> str:
    """What kind of file an artifact of ``precision`` is: an engine, or an ONNX model."""
    return "engine" if precision == ENGINE else "onnx"


def open_runner(path: Path, manifest: Manifest, precision: str, backend: str, options: LoadOptions) -> Runner:
    """A runner of the artifact ``path`` (its manifest already read) on ``backend`` ("auto": the format's
    own): the device chosen and checked, the INT8-kernel warning given, the runner labelled. ``options.own``:
    the backend's own options, typed or as keywords (None: its defaults)."""
    chosen = backend_for(backend, artifact_format(precision), path.name)
    own = options.own if options.own is not None else chosen.options()
    if isinstance(own, dict):  # keywords, as runtime.load takes them
        own = backend_options(chosen.options, chosen.name, own)
    if not isinstance(own, chosen.options):
        raise DeployError(f"the {chosen.name} backend takes {chosen.options.__name__}, not {type(own).__name__}")
    device = chosen.device(options.device, own, path.name)
    row = PRECISIONS.get(precision)  # None for an engine
    if device[0] == "cpu" and chosen.cpu_int8_kernels and row is not None and row.cpu_kernel_problem is not None:
        problem = row.cpu_kernel_problem(row.read_options(manifest.precision_options))
        if problem:
            warnings.warn(f"{path.name}: {problem}", DeployWarning, stacklevel=3)
    runner = chosen.load(path, manifest, precision, device, replace(options, own=own))
    runner.artifact, runner.manifest, runner.backend = str(path), manifest, chosen.name
    if runner.batch_range is None:
        runner.batch_range = (manifest.batch.min, manifest.batch.max)
    if chosen.runs != "model":  # the torch backend runs the float32 model (or its own float16), whatever the file
        runner.precision = chosen.computes(own, precision)
    return runner


def native_backend(precision: str) -> Backend:
    """The backend that runs an artifact of ``precision`` when none is named: ONNX Runtime for ONNX, TensorRT
    for an engine."""
    return BACKENDS[NATIVE[artifact_format(precision)]]


def precision_variant(precision: str) -> tuple[Backend, Variant]:
    """What runs an artifact of ``precision`` as the export's gate does: its file's own backend, first variant
    (ONNX Runtime on the CPU; TensorRT), or, for a precision without a file (bf16), the variant that
    computes its file in it."""
    if PRECISIONS.get(precision) is not None and PRECISIONS[precision].runs_file:
        return next((backend, variant) for backend, variant in variants() if variant.precision == precision)
    backend = native_backend(precision)
    return backend, backend.variants[0]


def runs_here(precision: str) -> Availability:
    """Whether artifacts of ``precision`` run here as the gate runs them (an engine: TensorRT with cuda-python
    and a GPU; bf16: OpenVINO on a CPU with native bf16), and why not: the one question export, build and
    verify ask."""
    return precision_variant(precision)[1].availability()


def backend_choices() -> tuple[str, ...]:
    """What --backend takes: auto (the file's own), then every backend's name."""
    return ("auto", *BACKENDS)


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
