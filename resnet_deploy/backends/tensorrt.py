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

from ..errors import DeployError
from . import detect


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


def current_environment() -> tuple[str, str, tuple[int, int]]:
    """(TensorRT version, GPU name, compute capability) of this machine; needs tensorrt and a GPU."""
    import tensorrt as trt
    import torch

    return trt.__version__, torch.cuda.get_device_name(), tuple(torch.cuda.get_device_capability())


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


class TensorRTRunner:
    """Runs a serialized engine on the current CUDA device, shapes set per call within the profile."""

    def __init__(self, engine_path: str | os.PathLike[str], *, dla_core: int | None = None) -> None:
        available = detect.tensorrt()
        if not available.available:
            raise DeployError(f"cannot run {Path(engine_path).name}: {available.reason}")
        import tensorrt as trt
        import torch

        self._trt, self._torch = trt, torch
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        if dla_core is not None:
            runtime.DLA_core = dla_core
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise DeployError(
                f"TensorRT {trt.__version__} could not load {Path(engine_path).name}: it was built for another "
                "TensorRT version or GPU; rebuild it here with `resnet-deploy build`"
            )
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        if len(inputs) != 1:
            raise DeployError(f"expected an engine with one input, found {inputs}")
        self.name = "tensorrt"
        self.input_name = inputs[0]
        self.output_names = [n for n in names if n not in inputs]

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        torch, engine, context = self._torch, self.engine, self.context
        dtype = trt_dtype_to_torch(self._trt, torch, engine.get_tensor_dtype(self.input_name))
        with torch.cuda.stream(self.stream):
            source = torch.from_numpy(np.ascontiguousarray(batch)).to("cuda", dtype=dtype, non_blocking=True)
            if not context.set_input_shape(self.input_name, tuple(source.shape)):
                raise DeployError(f"input shape {list(source.shape)} is outside the engine's optimization profile")
            context.set_tensor_address(self.input_name, source.data_ptr())
            outputs = {}
            for name in self.output_names:
                shape = tuple(context.get_tensor_shape(name))
                out_dtype = trt_dtype_to_torch(self._trt, torch, engine.get_tensor_dtype(name))
                outputs[name] = torch.empty(shape, dtype=out_dtype, device="cuda")
                context.set_tensor_address(name, outputs[name].data_ptr())
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise DeployError("TensorRT execution failed")
        self.stream.synchronize()
        return {name: tensor.float().cpu().numpy() for name, tensor in outputs.items()}
