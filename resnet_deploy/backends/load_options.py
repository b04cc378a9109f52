"""How a runner is loaded: the options every backend shares, each backend's own, and the device.

Each backend's own options are a dataclass its registry row names; every field carries its CLI
flag and help in its metadata, so the CLI's flags, ``runtime.load``'s keywords and the loaders
read one definition. PyTorch-, ONNX Runtime- and TensorRT-free: the CLI reads it at start-up.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import DeployError, within
from . import detect


def flag(name: str, help: str) -> Any:
    """A backend option's field: off by default, ``--name`` on the command line."""
    return field(default=False, metadata={"flag": name, "help": help})


@dataclass(frozen=True)
class NoOptions:
    """A backend without options of its own."""


@dataclass(frozen=True)
class OrtOptions:
    tensorrt_provider: bool = flag("--ort-tensorrt", "ort backend on CUDA: ONNX Runtime's TensorRT execution provider.")
    as_written: bool = flag("--ort-as-written", "ort backend: every graph optimisation off, so an INT8 graph's Q/DQ "
                                                "pairs run as written (what the graph means; slow).")


@dataclass(frozen=True)
class OpenVINOOptions:
    bf16: bool = flag("--openvino-bf16", "openvino backend: bf16 inference precision, on CPUs with native bf16 "
                                         "(AVX512_BF16, AMX); the default pins f32, the precision verified.")
    throughput: bool = flag("--openvino-throughput", "openvino backend: the THROUGHPUT hint: OpenVINO's streams, "
                                                     "each batch split across them and run in parallel.")


@dataclass(frozen=True)
class TensorRTOptions:
    cuda_graphs: bool = flag("--cuda-graphs", "trt backend: capture each batch size into a CUDA graph.")


@dataclass(frozen=True)
class TorchOptions:
    channels_last: bool = flag("--channels-last", "torch backend: NHWC memory format.")
    compile: bool = flag("--compile", "torch backend: torch.compile (on CUDA in reduce-overhead mode: CUDA graphs).")
    half: bool = flag("--torch-fp16", "torch backend: run in float16.")


@dataclass(frozen=True)
class LoadOptions:
    """How to load a runner: what every backend takes, and ``own``, the backend's own options (an
    instance of its row's ``options`` type, or its fields as a dict; None: its defaults)."""

    device: str | None = None  # cpu, cuda, cuda:N; None: the GPU where the backend can use one
    threads: int | None = None  # CPU threads (default: physical cores)
    graph_cache: bool = True  # keep the optimised graph or compiled blob beside the artifact (ORT, OpenVINO)
    own: Any = None
    # threads that will call at once, each wanting ``threads`` CPU threads (the lanes of target.pipeline):
    # OpenVINO compiles a stream for each (its requests on one stream take turns); the others run concurrent
    # calls in the callers' threads already
    lanes: int = 1
    # other processes compute on these cores too (Ray's actors on one node): no runtime pins its threads to
    # cores (OpenVINO pins by default, and two processes pinned their streams to the same cores)
    shared_cores: bool = False

    def __post_init__(self) -> None:
        within("lanes", self.lanes, 1, None)
        if self.threads is not None:  # more threads than cores only contend (and each costs memory)
            within("--threads", self.threads, 1, os.cpu_count() or 1, "this machine's logical cores")


def backend_options(options_type: type, backend: str, given: dict[str, Any]) -> Any:
    """``given`` (keyword -> value) as ``options_type``, or a one-line error naming a keyword it lacks."""
    known = {f.name for f in fields(options_type)}
    unknown = sorted(set(given) - known)
    if unknown:
        takes = f"it takes {', '.join(sorted(known))}" if known else "it takes none"
        raise DeployError(f"{', '.join(unknown)}: not an option of the {backend} backend ({takes})")
    return options_type(**given)


def cli_flags(options_type: type) -> list[tuple[str, str, str]]:
    """(flag, field name, help) of each of a backend's own options."""
    return [(f.metadata["flag"], f.name, f.metadata["help"]) for f in fields(options_type)]


_DEVICE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def parse_device(device: str | None, *, default_cuda: bool) -> tuple[str, int]:
    """``"cuda:1"`` -> ("cuda", 1); None -> the GPU when there is one and ``default_cuda``, else the CPU."""
    if device is None:
        return ("cuda" if default_cuda and detect.cuda_gpu() else "cpu"), 0
    match = _DEVICE.match(device)
    if not match:
        raise DeployError(f"unknown device {device!r}: use cpu, cuda or cuda:N")
    return match.group(1), int(match.group(2) or 0)
