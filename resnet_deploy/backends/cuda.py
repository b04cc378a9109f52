"""CUDA through NVIDIA's cuda-python bindings (``cuda.bindings.runtime``): device and pinned host
buffers, a stream, CUDA graphs, events and device properties, what the TensorRT runner and the engine
build need, without PyTorch on the target.

Every call of the bindings returns ``(error, *values)``; :func:`call` turns an error into a one-line
DeployError naming the CUDA error. cuda-python 12.1 to 12.6 raise RuntimeError instead where the
driver (libcuda.so) is missing; :func:`call` turns that into the same kind of error.
"""

from __future__ import annotations

import ctypes
import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import DeployError

INSTALL_HINT = "pip install 'resnet-deploy[gpu-cu12]' or '[gpu-cu13]', as the driver's CUDA version"


class CaptureError(DeployError):
    """A CUDA graph could not be captured or instantiated (the work itself may still run without one)."""


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


def call(function: str, *args: Any) -> Any:
    """``cudart.function(*args)``'s value(s), or a one-line DeployError naming the CUDA error."""
    try:
        result = getattr(runtime_api(), function)(*args)
    except RuntimeError as exc:  # cuda-python <= 12.6 without a driver: "Failed to dlopen libcuda.so"
        raise DeployError(f"no CUDA driver: {function} failed ({exc})") from None
    return check(result)


def check(result: Any) -> Any:
    """The value(s) of a binding's ``(error, *values)`` answer, or a DeployError naming the error."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise DeployError(f"CUDA error {int(error)} ({error_name(error)})")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def error_name(error: Any) -> str:
    try:
        name = runtime_api().cudaGetErrorName(error)[1]
    except RuntimeError:
        return str(error)
    return name.decode() if isinstance(name, bytes) else str(name)


def device_count() -> int:
    """CUDA devices the runtime sees (0 where cuda-python, the driver or a GPU is missing)."""
    try:
        return int(call("cudaGetDeviceCount"))
    except DeployError:
        return 0


def _version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"


def versions() -> dict[str, str | None]:
    """The CUDA version the driver supports and the one cuda-python's runtime was built for; ``driver`` is
    None where no driver is installed (a TensorRT cu13 build needs a driver of CUDA 13 or newer)."""
    driver: str | None = None
    try:
        number = int(call("cudaDriverGetVersion"))
        driver = _version(number) if number else None
    except DeployError:
        pass
    try:
        runtime = _version(int(call("cudaRuntimeGetVersion")))
    except DeployError:
        runtime = None
    return {"driver": driver, "runtime": runtime}


def driver_problem(found: dict[str, str | None] | None = None) -> str | None:
    """Why the CUDA runtime of cuda-python cannot use a GPU here, where the driver is the reason: none
    installed, or one older than the CUDA that cuda-python (and so TensorRT's build) was made for.
    ``found``: :func:`versions`' answer, where the caller has it already."""
    found = found or versions()
    if found["driver"] is None:
        return "no CUDA driver is installed (no NVIDIA GPU here, or its driver is missing)"
    driver_major = int(found["driver"].split(".")[0])
    if found["runtime"] is not None and driver_major < int(found["runtime"].split(".")[0]):
        return (f"the driver supports CUDA {found['driver']}, older than the CUDA {found['runtime']} cuda-python was "
                f"built for: pip install 'resnet-deploy[gpu-cu{driver_major}]'")
    return None


def current_device() -> int:
    return int(call("cudaGetDevice"))


def device_properties(index: int) -> tuple[str, tuple[int, int]]:
    """The GPU's name and compute capability."""
    props = call("cudaGetDeviceProperties", index)
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00"), (int(props.major), int(props.minor))


class DeviceBuffer:
    """``nbytes`` of device memory, freed by :meth:`free`."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.ptr = int(call("cudaMalloc", max(nbytes, 1)))

    def free(self) -> None:
        if self.ptr:
            call("cudaFree", self.ptr)
            self.ptr = 0


class HostBuffer:
    """Page-locked host memory seen as a numpy array: copies from and to it run asynchronously and at
    full bus speed (pageable memory is staged through a driver buffer first)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype) -> None:
        nbytes = max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1)
        self.ptr = int(call("cudaMallocHost", nbytes))
        self.array = np.ctypeslib.as_array((ctypes.c_ubyte * nbytes).from_address(self.ptr)).view(dtype)
        self.array = self.array[: int(np.prod(shape))].reshape(shape)

    def free(self) -> None:
        if self.ptr:
            self.array = None
            call("cudaFreeHost", self.ptr)
            self.ptr = 0


class Graph:
    """An instantiated CUDA graph; the captured graph it came from is destroyed once instantiated."""

    def __init__(self, graph_exec: Any) -> None:
        self.exec = graph_exec

    def launch(self, stream: Stream) -> None:
        call("cudaGraphLaunch", self.exec, stream.handle)

    def destroy(self) -> None:
        if self.exec is not None:
            call("cudaGraphExecDestroy", self.exec)
            self.exec = None


class Stream:
    """A CUDA stream, with host<->device copies and graph capture on it."""

    def __init__(self) -> None:
        self.handle = call("cudaStreamCreate")
        self.cudart = runtime_api()

    @property
    def ptr(self) -> int:
        """The stream as the integer TensorRT's ``execute_async_v3`` takes."""
        return int(self.handle)

    def to_device(self, buffer: DeviceBuffer, host_address: int, nbytes: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        call("cudaMemcpyAsync", buffer.ptr, host_address, nbytes, kind, self.handle)

    def to_host(self, host_address: int, buffer: DeviceBuffer, nbytes: int) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        call("cudaMemcpyAsync", host_address, buffer.ptr, nbytes, kind, self.handle)

    def synchronize(self) -> None:
        call("cudaStreamSynchronize", self.handle)

    def capture(self, enqueue: Callable[[], None]) -> Graph:
        """The work ``enqueue()`` puts on this stream, captured into an instantiated CUDA graph.

        Captured in thread-local mode, as trtexec does: a cudaMalloc in another thread (a server's
        other runner) does not invalidate the capture. Raises CaptureError where capture or
        instantiation fails; the stream is out of capture mode either way.
        """
        mode = self.cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        call("cudaStreamBeginCapture", self.handle, mode)
        failure: BaseException | None = None
        try:
            enqueue()
        except DeployError as exc:
            failure = exc
        try:
            graph = call("cudaStreamEndCapture", self.handle)
        except DeployError as exc:
            raise CaptureError(f"CUDA graph capture failed: {failure or exc}") from None
        try:
            if failure is not None:
                raise CaptureError(f"CUDA graph capture failed: {failure}")
            try:
                return Graph(call("cudaGraphInstantiate", graph, 0))
            except DeployError as exc:
                raise CaptureError(f"CUDA graph instantiation failed: {exc}") from None
        finally:
            call("cudaGraphDestroy", graph)

    def destroy(self) -> None:
        if self.handle is not None:
            call("cudaStreamDestroy", self.handle)
            self.handle = None


class EventTimer:
    """Device time of each call, from two CUDA events recorded on ``stream`` around it."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.start, self.end = call("cudaEventCreate"), call("cudaEventCreate")
        self.samples: list[float] = []  # seconds

    def __enter__(self) -> EventTimer:
        call("cudaEventRecord", self.start, self.stream.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        call("cudaEventRecord", self.end, self.stream.handle)
        call("cudaEventSynchronize", self.end)
        self.samples.append(float(call("cudaEventElapsedTime", self.start, self.end)) / 1e3)

    def close(self) -> None:
        for event in (self.start, self.end):
            if event is not None:
                call("cudaEventDestroy", event)
        self.start = self.end = None

