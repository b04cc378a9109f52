"""TensorRT: an engine deserialised once, run with torch CUDA tensors as buffers.

Written against the TensorRT 10/11 Python API: tensors addressed by name
(``num_io_tensors``, ``get_tensor_name``, ``set_input_shape``,
``set_tensor_address``), ``execute_async_v3`` on a dedicated stream.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import Manifest, TensorSpec
from ..errors import DeployError
from . import detect
from .base import Runner
from .registry import LoadOptions, parse_device


def check_engine_compatible(record: dict[str, Any], trt_version: str, gpu_name: str,
                            compute_capability: tuple[int, int]) -> None:
    """A clear error, naming both sides, when an engine cannot run with this TensorRT or GPU."""
    current_cc = f"{compute_capability[0]}.{compute_capability[1]}"
    if record["tensorrt"] != trt_version and not record.get("version_compatible"):
        raise DeployError(
            f"the engine was built with TensorRT {record['tensorrt']}, this machine has TensorRT {trt_version}: "
            "rebuild it here with `resnet-deploy build`, or build with --version-compatible"
        )
    hardware = record.get("hardware_compat", "none")
    if record["compute_capability"] != current_cc:
        ampere_plus = hardware == "ampere+" and compute_capability[0] >= 8
        if not ampere_plus:
            raise DeployError(
                f"the engine was built for {record['gpu']} (compute capability {record['compute_capability']}), "
                f"this GPU is {gpu_name} ({current_cc}): rebuild it here, or build with --hardware-compat ampere+"
            )


def current_environment(device: int | None = None) -> tuple[str, str, tuple[int, int]]:
    """(TensorRT version, GPU name, compute capability) of this machine's GPU ``device`` (default: the
    current one); a DeployError saying why where TensorRT or the GPU is missing."""
    available = detect.tensorrt()
    if not available.available:
        raise DeployError(f"cannot run a TensorRT engine here: {available.reason}")
    import tensorrt as trt
    import torch

    return trt.__version__, torch.cuda.get_device_name(device), tuple(torch.cuda.get_device_capability(device))


def trt_dtype_to_torch(trt: Any, torch: Any, dtype: Any) -> Any:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.int8: torch.int8,
        trt.bool: torch.bool,
    }
    if dtype not in table:
        raise DeployError(f"unsupported TensorRT I/O dtype {dtype}")
    return table[dtype]


class TensorRTRunner(Runner):
    """Runs a serialized engine on the current CUDA device: deserialised once, torch CUDA tensors
    as buffers, a dedicated stream, input shape set per call within the optimization profile.

    With ``cuda_graphs`` the enqueue of each batch size is captured once into a CUDA graph
    (static input and output buffers) and replayed, which removes per-layer launch overhead
    at small batch sizes.
    """

    def __init__(self, engine_path: str | os.PathLike[str], *, dla_core: int | None = None,
                 cuda_graphs: bool = False) -> None:
        available = detect.tensorrt()
        if not available.available:
            raise DeployError(f"cannot run {Path(engine_path).name}: {available.reason}")
        import tensorrt as trt
        import torch

        self._trt, self._torch = trt, torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        if dla_core is not None:
            self.runtime.DLA_core = dla_core
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise DeployError(
                f"TensorRT {trt.__version__} could not load {Path(engine_path).name}: it was built for another "
                "TensorRT version or GPU; rebuild it here with `resnet-deploy build`"
            )
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        if sum(is_input.values()) != 1:
            raise DeployError(f"expected an engine with one input, found {[n for n in names if is_input[n]]}")

        def spec(name: str) -> TensorSpec:
            dtype = trt_dtype_to_torch(trt, torch, self.engine.get_tensor_dtype(name))
            return TensorSpec(name, list(self.engine.get_tensor_shape(name)), str(dtype).removeprefix("torch."))

        self.name = "tensorrt"
        self.device = f"cuda:{torch.cuda.current_device()}"
        self.inputs = [spec(n) for n in names if is_input[n]]
        self.outputs = [spec(n) for n in names if not is_input[n]]
        low, _, high = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.batch_range = (int(low[0]), int(high[0]))
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, dict[str, Any]]] = {}

    def _bind(self, shape: tuple[int, ...]) -> tuple[Any, dict[str, Any]]:
        """Fresh input and output buffers for ``shape``, their addresses set on the context."""
        torch, engine, context = self._torch, self.engine, self.context
        dtype = trt_dtype_to_torch(self._trt, torch, engine.get_tensor_dtype(self.input_name))
        source = torch.empty(shape, dtype=dtype, device="cuda")
        if not context.set_input_shape(self.input_name, shape):
            raise DeployError(f"input shape {list(shape)} is outside the engine's optimization profile")
        context.set_tensor_address(self.input_name, source.data_ptr())
        outputs = {}
        for name in self.output_names:
            out_dtype = trt_dtype_to_torch(self._trt, torch, engine.get_tensor_dtype(name))
            outputs[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=out_dtype, device="cuda")
            context.set_tensor_address(name, outputs[name].data_ptr())
        return source, outputs

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise DeployError("TensorRT execution failed")

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        host = torch.from_numpy(batch)
        with torch.cuda.stream(self.stream):
            if not self.cuda_graphs:
                source, outputs = self._bind(tuple(batch.shape))
                source.copy_(host, non_blocking=True)
                self._enqueue()
            else:
                if batch.shape not in self._graphs:
                    source, outputs = self._bind(tuple(batch.shape))
                    self._enqueue()  # TensorRT needs one run after a shape change before capture
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, stream=self.stream):
                        self._enqueue()
                    self._graphs[batch.shape] = (graph, source, outputs)
                graph, source, outputs = self._graphs[batch.shape]
                source.copy_(host, non_blocking=True)
                graph.replay()
            result = {name: tensor.float().cpu() for name, tensor in outputs.items()}
        self.stream.synchronize()
        return {name: tensor.numpy() for name, tensor in result.items()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tensorrt": self._trt.__version__, "cuda_graphs": self.cuda_graphs}

    def close(self) -> None:
        self._graphs.clear()
        self.context = self.engine = None


def load(path: Path, manifest: Manifest, precision: str, options: LoadOptions) -> TensorRTRunner:
    """The registry's loader: the engine on a CUDA GPU, after checking it was built for this one."""
    kind, index = parse_device(options.device, default_cuda=True)
    if kind != "cuda":
        raise DeployError("a TensorRT engine runs on a CUDA GPU, not the CPU")
    environment = current_environment(index)  # first: says why when TensorRT or the GPU is missing
    import torch

    torch.cuda.set_device(index)
    check_engine_compatible(manifest.precision_options["engine"], *environment)
    return TensorRTRunner(path, cuda_graphs=options.cuda_graphs)
