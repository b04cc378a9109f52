"""TensorRT: an engine deserialised once, run with cuda-python device buffers (no PyTorch).

Written against the TensorRT 10/11 Python API: tensors addressed by name
(``num_io_tensors``, ``get_tensor_name``, ``set_input_shape``,
``set_tensor_address``), ``execute_async_v3`` on a dedicated stream, as
Polygraphy's TensorRT runner and trtexec do. Checked against the real bindings
of 10.0 to 11.4 by tests/tensorrt_api.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import Manifest, TensorSpec
from ..errors import DeployError, DeployWarning
from ..precisions import ENGINE
from . import cuda, detect
from .base import Runner
from .load_options import LoadOptions

MAX_BOUND_SHAPES = 8  # input shapes kept ready (buffers; with CUDA graphs a context and a graph each)


def version_tuple(version: str) -> tuple[int, ...]:
    """"10.12.0.36" -> (10, 12, 0): what TensorRT's compatibility rules compare."""
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def check_engine_compatible(record: dict[str, Any], trt_version: str, gpu_name: str,
                            compute_capability: tuple[int, int]) -> None:
    """A clear error, naming both sides, when an engine cannot run with this TensorRT or GPU; a warning
    where TensorRT would run it but says it may fail (another GPU model of the same compute capability).

    TensorRT's rules: a plain engine runs only on the TensorRT version it was built with; a
    version-compatible one on that version and later ones of the same major version (forward only).
    ``none`` ties it to the GPU model, ``same-cc`` to the compute capability, ``ampere+`` to any GPU
    of compute capability 8.0 or newer.
    """
    built = record["tensorrt"]
    if record.get("version_compatible"):
        here, there = version_tuple(trt_version), version_tuple(built)
        if here[:1] != there[:1] or here < there:
            raise DeployError(
                f"the engine was built version-compatible with TensorRT {built}, which runs it on TensorRT "
                f"{there[0]}.x from {built} on; this machine has TensorRT {trt_version}: rebuild it here with "
                "`resnet-deploy build`"
            )
    elif built != trt_version:
        raise DeployError(
            f"the engine was built with TensorRT {built}, this machine has TensorRT {trt_version}: "
            "rebuild it here with `resnet-deploy build`, or build with --version-compatible"
        )
    hardware = record.get("hardware_compat", "none")
    current_cc = f"{compute_capability[0]}.{compute_capability[1]}"
    fits = compute_capability[0] >= 8 if hardware == "ampere+" else record["compute_capability"] == current_cc
    if not fits:
        raise DeployError(
            f"the engine was built for {record['gpu']} (compute capability {record['compute_capability']}), "
            f"this GPU is {gpu_name} ({current_cc}): rebuild it here, or build with --hardware-compat ampere+"
        )
    if hardware == "none" and record["gpu"] != gpu_name:
        warnings.warn(
            f"the engine was built for {record['gpu']}, this GPU is {gpu_name}: TensorRT runs it (same compute "
            f"capability {current_cc}) but its tactics were timed on the other model and may be slow or fail; "
            "rebuild it here, or build with --hardware-compat same-cc", DeployWarning, stacklevel=3)


def current_environment(device: int | None = None) -> tuple[str, str, tuple[int, int]]:
    """(TensorRT version, GPU name, compute capability) of this machine's GPU ``device`` (default: the
    current one); a DeployError saying why where TensorRT or the GPU is missing."""
    available = detect.tensorrt()
    if not available.available:
        raise DeployError(f"cannot run a TensorRT engine here: {available.reason}")
    import tensorrt as trt

    name, capability = cuda.device_properties(cuda.current_device() if device is None else device)
    return trt.__version__, name, capability


@dataclass(frozen=True)
class HostType:
    """How a tensor of one TensorRT data type is held on the host: ``storage`` is what its buffers hold,
    ``name`` what the runner reports. bfloat16 has no numpy type: it is held as its 16 bits."""

    name: str
    storage: np.dtype

    def from_float(self, values: np.ndarray) -> np.ndarray:
        if self.name != "bfloat16":
            return values.astype(self.storage, copy=False)
        bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even

    def to_float(self, stored: np.ndarray) -> np.ndarray:
        if self.name != "bfloat16":
            return stored.astype(np.float32)
        return (stored.astype(np.uint32) << 16).view(np.float32)


# TensorRT DataType member name -> host type. FP8, INT4, FP4 and E8M0 tensors have no host form here
# (trt.nptype raises for them and for BF16): the ONNX should keep such tensors inside the graph.
HOST_TYPES = {
    "FLOAT": HostType("float32", np.dtype(np.float32)), "HALF": HostType("float16", np.dtype(np.float16)),
    "BF16": HostType("bfloat16", np.dtype(np.uint16)), "INT8": HostType("int8", np.dtype(np.int8)),
    "UINT8": HostType("uint8", np.dtype(np.uint8)), "INT32": HostType("int32", np.dtype(np.int32)),
    "INT64": HostType("int64", np.dtype(np.int64)), "BOOL": HostType("bool", np.dtype(np.bool_)),
}


def host_type(data_type: Any, tensor: str) -> HostType:
    name = getattr(data_type, "name", str(data_type))
    if name not in HOST_TYPES:
        raise DeployError(f"the engine's tensor {tensor!r} is {name}, which has no host form: export with "
                          "float32 or float16 inputs and outputs")
    return HOST_TYPES[name]


def named_dims(shape: Any) -> list[int | str]:
    """An engine's tensor shape with TensorRT's -1 (set per call) named as the manifest names them."""
    dims = [int(d) for d in shape]
    names = ["batch", "channels", "height", "width"] if len(dims) == 4 else ["batch"]
    return [d if d >= 0 else (names[i] if i < len(names) else f"dim{i}") for i, d in enumerate(dims)]


class _Binding:
    """What one input shape runs with: an execution context with that shape set, device buffers, pinned
    host buffers, and (with CUDA graphs) the graph captured on that context."""

    def __init__(self, context: Any, shape: tuple[int, ...], input_name: str, types: dict[str, HostType],
                 output_names: list[str]) -> None:
        self.context, self.shape, self.graph, self.graph_failed = context, shape, None, False
        self.buffers: dict[str, tuple[cuda.DeviceBuffer, cuda.HostBuffer]] = {}
        try:
            for name in [input_name, *output_names]:
                dims = shape if name == input_name else tuple(context.get_tensor_shape(name))
                host = cuda.HostBuffer(dims, types[name].storage)
                try:
                    self.buffers[name] = (cuda.DeviceBuffer(host.array.nbytes), host)
                except DeployError:
                    host.free()
                    raise
        except DeployError:
            self.free()
            raise

    def set_addresses(self) -> None:
        for name, (device, _host) in self.buffers.items():
            self.context.set_tensor_address(name, device.ptr)

    def free(self) -> None:
        if self.graph is not None:
            self.graph.destroy()
            self.graph = None
        for device, host in self.buffers.values():
            device.free()
            host.free()
        self.buffers.clear()


class TensorRTRunner(Runner):
    """Runs a serialized engine on the current CUDA device: deserialised once, device and pinned host
    buffers from cuda-python (no PyTorch), a dedicated stream, input shape set per call within the
    optimization profile; buffers are kept for the last few input shapes.

    With ``cuda_graphs`` the enqueue of each input shape is captured once into a CUDA graph and
    replayed, which removes per-layer launch overhead at small batch sizes. A captured graph holds
    the state of the context it was captured on, so each shape gets its own context; where capture
    fails, that shape runs without a graph (with a warning), as trtexec does.
    ``host_code_allowed``: a version-compatible engine carries the lean runtime it runs on.

    Calls run one at a time: the context(s), the stream and the buffers of a shape are the runner's own.
    """

    concurrent = False
    serial_reason = "one stream and one set of buffers per input shape: calls run one at a time"

    def __init__(self, engine_path: str | os.PathLike[str], *, dla_core: int | None = None,
                 cuda_graphs: bool = False, host_code_allowed: bool = False) -> None:
        available = detect.tensorrt()
        if not available.available:
            raise DeployError(f"cannot run {Path(engine_path).name}: {available.reason}")
        import tensorrt as trt

        self._trt, self.engine_name = trt, Path(engine_path).name
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.runtime.engine_host_code_allowed = host_code_allowed
        if dla_core is not None:
            self.runtime.DLA_core = dla_core
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise DeployError(
                f"TensorRT {trt.__version__} could not load {self.engine_name}: it was built for another "
                "TensorRT version or GPU; rebuild it here with `resnet-deploy build`"
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        if sum(is_input.values()) != 1:
            raise DeployError(f"expected an engine with one input, found {[n for n in names if is_input[n]]}")
        self._types = {n: host_type(self.engine.get_tensor_dtype(n), n) for n in names}

        def spec(name: str) -> TensorSpec:
            return TensorSpec(name, named_dims(self.engine.get_tensor_shape(name)), self._types[name].name)

        self.name = "tensorrt"
        self.inputs = [spec(n) for n in names if is_input[n]]
        self.outputs = [spec(n) for n in names if not is_input[n]]
        self.profile = tuple(tuple(int(d) for d in dims)
                             for dims in self.engine.get_tensor_profile_shape(self.input_name, 0))
        self.batch_range = (self.profile[0][0], self.profile[2][0])
        self.cuda_graphs = cuda_graphs
        self._bound: OrderedDict[tuple[int, ...], _Binding] = OrderedDict()
        self._shared = None
        self.stream = cuda.Stream()
        try:
            self.device = f"cuda:{cuda.current_device()}"
            self._shared = None if cuda_graphs else self._new_context()
        except DeployError:
            self.close()
            raise

    @classmethod
    def for_record(cls, engine_path: str | os.PathLike[str], record: dict[str, Any], *,
                   cuda_graphs: bool = False) -> TensorRTRunner:
        """The runner of an engine the manifest recorded: on its DLA core, with its lean runtime allowed
        where it was built version-compatible."""
        return cls(engine_path, dla_core=record.get("dla_core"), cuda_graphs=cuda_graphs,
                   host_code_allowed=bool(record.get("version_compatible")))

    def _new_context(self) -> Any:
        context = self.engine.create_execution_context()
        if context is None:  # TensorRT logs why (most often: not enough GPU memory for its activations)
            raise DeployError(f"TensorRT could not create an execution context for {self.engine_name} "
                              "(see its message above; often the GPU is out of memory)")
        return context

    def _bind(self, shape: tuple[int, ...]) -> _Binding:
        """The binding of ``shape`` (made on its first call, the least recently used dropped past
        MAX_BOUND_SHAPES), its shape and addresses set on its context."""
        binding = self._bound.get(shape)
        if binding is None:
            context = self._shared or self._new_context()
            if not context.set_input_shape(self.input_name, shape):
                raise DeployError(f"input shape {list(shape)} is outside the engine's optimization profile "
                                  f"({list(self.profile[0])} to {list(self.profile[2])})")
            binding = _Binding(context, shape, self.input_name, self._types, self.output_names)
            binding.set_addresses()
            self._bound[shape] = binding
            if len(self._bound) > MAX_BOUND_SHAPES:
                self._bound.popitem(last=False)[1].free()
        else:
            self._bound.move_to_end(shape)
            if self._shared is not None:  # the one context serves every shape: set this call's
                self._shared.set_input_shape(self.input_name, shape)
                binding.set_addresses()
        return binding

    def _execute(self, context: Any) -> None:
        if not context.execute_async_v3(self.stream.ptr):
            raise DeployError("TensorRT execution failed (see its message above)")

    def _replay(self, binding: _Binding) -> None:
        """Launch the shape's graph, capturing it on first use (after the one plain run TensorRT needs
        after a shape is set); where capture fails, run without a graph from then on."""
        if binding.graph is None:
            self._execute(binding.context)
            try:
                binding.graph = self.stream.capture(lambda: self._execute(binding.context))
            except cuda.CaptureError as exc:
                binding.graph_failed = True
                warnings.warn(f"{self.engine_name}: {exc}; input shape {list(binding.shape)} runs "
                              "without a CUDA graph", DeployWarning, stacklevel=4)
                self._execute(binding.context)
                return
        binding.graph.launch(self.stream)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        binding = self._bind(tuple(batch.shape))
        device, host = binding.buffers[self.input_name]
        host.array[...] = self._types[self.input_name].from_float(batch)
        self.stream.to_device(device, host.ptr, host.array.nbytes)
        if self.cuda_graphs and not binding.graph_failed:
            self._replay(binding)
        else:
            self._execute(binding.context)
        outputs = [(name, *binding.buffers[name]) for name in self.output_names]
        for _name, device, host in outputs:
            self.stream.to_host(host.ptr, device, host.array.nbytes)
        self.stream.synchronize()
        return {name: self._types[name].to_float(host.array) for name, _device, host in outputs}  # copies

    def example_batch(self, batch_size: int | None = None) -> np.ndarray:
        """Zeros at the profile's optimum height and width (an engine with dynamic H/W has no fixed one)."""
        return np.zeros((batch_size or self.batch_range[0], *self.profile[1][1:]), dtype=np.float32)

    def device_timer(self) -> cuda.EventTimer:
        return cuda.EventTimer(self.stream)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "tensorrt": self._trt.__version__, "cuda_graphs": self.cuda_graphs}

    def close(self) -> None:
        for binding in self._bound.values():
            binding.free()
        self._bound.clear()
        if self.stream is not None:
            self.stream.destroy()
        self.stream = self._shared = self.engine = None


def load(path: Path, manifest: Manifest, precision: str, device: tuple[str, int],
         options: LoadOptions) -> TensorRTRunner:
    """The registry's loader: the engine on a CUDA GPU, after checking it was built for this one."""
    index = device[1]
    environment = current_environment(index)  # first: says why when TensorRT or the GPU is missing
    cuda.call("cudaSetDevice", index)
    record = manifest.precision_options[ENGINE]
    check_engine_compatible(record, *environment)
    return TensorRTRunner.for_record(path, record, cuda_graphs=options.own.cuda_graphs)
