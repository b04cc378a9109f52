"""CUDA through NVIDIA's cuda-python bindings (``cuda.bindings.runtime``): device buffers, a stream,
graph capture and device properties, what the TensorRT runner and the engine build need, without
PyTorch on the target.

Every call of the bindings returns ``(error, *values)``; :func:`check` turns an error into a
one-line DeployError naming the CUDA error.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ..errors import DeployError

INSTALL_HINT = "pip install 'resnet-deploy[gpu]' (cuda-python)"


def bindings_installed() -> bool:
    return importlib.util.find_spec("cuda") is not None and (
        importlib.util.find_spec("cuda.bindings") is not None or importlib.util.find_spec("cuda.cudart") is not None)


def runtime_api() -> Any:
    """The CUDA runtime module of cuda-python: ``cuda.bindings.runtime`` (12.6+), else ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError:
            raise DeployError(f"the TensorRT runner needs cuda-python: {INSTALL_HINT}") from None
    return runtime


def check(result: Any) -> Any:
    """The value(s) of a binding's ``(error, *values)`` answer, or a DeployError naming the error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        cudart = runtime_api()
        name = cudart.cudaGetErrorName(error)[1]
        raise DeployError(f"CUDA error {int(error)} ({name.decode() if isinstance(name, bytes) else name})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_count() -> int:
    """CUDA devices the runtime sees (0 where the driver or a GPU is missing)."""
    try:
        error, count = runtime_api().cudaGetDeviceCount()
    except DeployError:
        return 0
    return int(count) if int(error) == 0 else 0


def device_properties(index: int) -> tuple[str, tuple[int, int]]:
    """The GPU's name and compute capability."""
    props = check(runtime_api().cudaGetDeviceProperties(index))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00"), (int(props.major), int(props.minor))


class DeviceBuffer:
    """``nbytes`` of device memory, freed by :meth:`free`."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.ptr = int(check(runtime_api().cudaMalloc(max(nbytes, 1))))

    def free(self) -> None:
        if self.ptr:
            check(runtime_api().cudaFree(self.ptr))
            self.ptr = 0


class Stream:
    """A CUDA stream, with host<->device copies and graph capture on it."""

    def __init__(self) -> None:
        self.cudart = runtime_api()
        self.handle = check(self.cudart.cudaStreamCreate())

    @property
    def ptr(self) -> int:
        """The stream as the integer TensorRT's ``execute_async_v3`` takes."""
        return int(self.handle)

    def to_device(self, buffer: DeviceBuffer, host_address: int, nbytes: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(self.cudart.cudaMemcpyAsync(buffer.ptr, host_address, nbytes, kind, self.handle))

    def to_host(self, host_address: int, buffer: DeviceBuffer, nbytes: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self.cudart.cudaMemcpyAsync(host_address, buffer.ptr, nbytes, kind, self.handle))

    def synchronize(self) -> None:
        check(self.cudart.cudaStreamSynchronize(self.handle))

    def capture(self, enqueue: Any) -> Any:
        """The work ``enqueue()`` puts on this stream, captured into an instantiated CUDA graph."""
        mode = self.cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        check(self.cudart.cudaStreamBeginCapture(self.handle, mode))
        try:
            enqueue()
        finally:
            graph = check(self.cudart.cudaStreamEndCapture(self.handle))
        return check(self.cudart.cudaGraphInstantiate(graph, 0))

    def launch(self, graph_exec: Any) -> None:
        check(self.cudart.cudaGraphLaunch(graph_exec, self.handle))

    def destroy(self) -> None:
        if self.handle is not None:
            check(self.cudart.cudaStreamDestroy(self.handle))
            self.handle = None
