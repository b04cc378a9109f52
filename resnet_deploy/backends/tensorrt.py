"""TensorRT: an engine deserialised once, run with cuda-python device buffers (no PyTorch).

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
from . import cuda, detect
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

    index = cuda.check(cuda.runtime_api().cudaGetDevice()) if device is None else device
    name, capability = cuda.device_properties(index)
    return trt.__version__, name, capability


class _Bound:
    """The device buffers of one input shape, the host arrays outputs land in, and its CUDA graph."""

    def __init__(self, shape: tuple[int, ...], input_dtype: np.dtype, outputs: dict[str, tuple[tuple[int, ...], np.dtype]]):
        self.input = cuda.DeviceBuffer(int(np.prod(shape)) * input_dtype.itemsize)
        self.outputs = {name: (cuda.DeviceBuffer(int(np.prod(out_shape)) * dtype.itemsize),
                               np.empty(out_shape, dtype)) for name, (out_shape, dtype) in outputs.items()}
        self.graph: Any = None

    def free(self) -> None:
        self.input.free()
        for buffer, _host in self.outputs.values():
            buffer.free()


class TensorRTRunner(Runner):
    """Runs a serialized engine on the current CUDA device: deserialised once, device buffers from
    cuda-python (no PyTorch), a dedicated stream, input shape set per call within the optimization
    profile; buffers are kept per input shape.

    With ``cuda_graphs`` the enqueue of each batch size is captured once into a CUDA graph
    and replayed, which removes per-layer launch overhead at small batch sizes.
    """

    def __init__(self, engine_path: str | os.PathLike[str], *, dla_core: int | None = None,
                 cuda_graphs: bool = False) -> None:
        available = detect.tensorrt()
        if not available.available:
            raise DeployError(f"cannot run {Path(engine_path).name}: {available.reason}")
        import tensorrt as trt

        self._trt = trt
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
        self.stream = cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        if sum(is_input.values()) != 1:
            raise DeployError(f"expected an engine with one input, found {[n for n in names if is_input[n]]}")
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}

        def spec(name: str) -> TensorSpec:
            return TensorSpec(name, list(self.engine.get_tensor_shape(name)), self._dtypes[name].name)

        self.name = "tensorrt"
        self.device = f"cuda:{cuda.check(cuda.runtime_api().cudaGetDevice())}"
        self.inputs = [spec(n) for n in names if is_input[n]]
        self.outputs = [spec(n) for n in names if not is_input[n]]
        low, _, high = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.batch_range = (int(low[0]), int(high[0]))
        self.cuda_graphs = cuda_graphs
        self._bound: dict[tuple[int, ...], _Bound] = {}

    def _bind(self, shape: tuple[int, ...]) -> _Bound:
        """The buffers of ``shape`` (made on its first call), their addresses set on the context."""
        context = self.context
        if not context.set_input_shape(self.input_name, shape):
            raise DeployError(f"input shape {list(shape)} is outside the engine's optimization profile")
        if shape not in self._bound:
            outputs = {name: (tuple(context.get_tensor_shape(name)), self._dtypes[name]) for name in self.output_names}
            self._bound[shape] = _Bound(shape, self._dtypes[self.input_name], outputs)
        bound = self._bound[shape]
        context.set_tensor_address(self.input_name, bound.input.ptr)
        for name, (buffer, _host) in bound.outputs.items():
            context.set_tensor_address(name, buffer.ptr)
        return bound

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.ptr):
            raise DeployError("TensorRT execution failed")

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        source = np.ascontiguousarray(batch, dtype=self._dtypes[self.input_name])
        bound = self._bind(tuple(batch.shape))
        self.stream.to_device(bound.input, source.ctypes.data, source.nbytes)
        if not self.cuda_graphs:
            self._enqueue()
        else:
            if bound.graph is None:
                self._enqueue()  # TensorRT needs one run after a shape change before capture
                bound.graph = self.stream.capture(self._enqueue)
            self.stream.launch(bound.graph)
        for buffer, host in bound.outputs.values():
            self.stream.to_host(host.ctypes.data, buffer, host.nbytes)
        self.stream.synchronize()
        return {name: host.astype(np.float32) for name, (_buffer, host) in bound.outputs.items()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tensorrt": self._trt.__version__, "cuda_graphs": self.cuda_graphs}

    def close(self) -> None:
        for bound in self._bound.values():
            bound.free()
        self._bound.clear()
        if self.stream is not None:
            self.stream.destroy()
        self.stream = self.context = self.engine = None


def load(path: Path, manifest: Manifest, precision: str, options: LoadOptions) -> TensorRTRunner:
    """The registry's loader: the engine on a CUDA GPU, after checking it was built for this one."""
    kind, index = parse_device(options.device, default_cuda=True)
    if kind != "cuda":
        raise DeployError("a TensorRT engine runs on a CUDA GPU, not the CPU")
    environment = current_environment(index)  # first: says why when TensorRT or the GPU is missing
    cuda.check(cuda.runtime_api().cudaSetDevice(index))
    check_engine_compatible(manifest.precision_options["engine"], *environment)
    return TensorRTRunner(path, cuda_graphs=options.cuda_graphs)
