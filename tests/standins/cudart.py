"""A stand-in of cuda-python's CUDA runtime module (``cuda.bindings.runtime``) for machines without a GPU.

It behaves as the real module does where the package's correctness depends on it: every call answers
``(error, *values)``; device memory is bytes the copies move; pinned host memory is real host memory
(numpy views it); work enqueued while a stream is capturing is recorded into the graph, not run;
capture and instantiation can fail; graphs and graph executables are counted until destroyed. With
``driverless_raises`` every call raises RuntimeError, as cuda-python 12.1 to 12.6 do on a machine
without libcuda.so. tests/tensorrt_api checks each function here against the real 12.x and 13.x
modules (names and parameters).
"""

from __future__ import annotations

import ctypes
import types

SUCCESS, MEMORY_ALLOCATION, INSUFFICIENT_DRIVER, CAPTURE_INVALIDATED = 0, 2, 35, 901
ERROR_NAMES = {MEMORY_ALLOCATION: b"cudaErrorMemoryAllocation", INSUFFICIENT_DRIVER: b"cudaErrorInsufficientDriver",
               CAPTURE_INVALIDATED: b"cudaErrorStreamCaptureInvalidated"}


class _Graph:
    def __init__(self) -> None:
        self.work: list = []


class CudaRuntime:
    """``cuda.bindings.runtime``'s shape: module functions answering (error, *values)."""

    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeGlobal=0, cudaStreamCaptureModeThreadLocal=1,
                                                  cudaStreamCaptureModeRelaxed=2)

    def __init__(self, memory_limit: int = 1 << 20, devices: int = 1, driver: int = 12040, runtime: int = 12090):
        self.memory: dict[int, bytearray] = {}
        self.pinned: dict[int, ctypes.Array] = {}
        self.limit, self.next_ptr, self.devices = memory_limit, 0x1000, devices
        self.driver, self.runtime = driver, runtime
        self.capturing: _Graph | None = None
        self.capture_modes: list[int] = []
        self.fail_end_capture = self.fail_instantiate = False
        self.driverless_raises = False
        self.graphs: set[int] = set()  # captured graphs not destroyed
        self.graph_execs: set[int] = set()  # instantiated graphs not destroyed
        self.events: set[int] = set()
        self._graph_work: dict[int, list] = {}

    def __getattribute__(self, name: str):
        value = object.__getattribute__(self, name)
        if name.startswith("cuda") and callable(value) and object.__getattribute__(self, "driverless_raises"):
            def raises(*args):
                raise RuntimeError("Failed to dlopen libcuda.so")
            return raises
        return value

    def _new_handle(self) -> int:
        self.next_ptr += 64
        return self.next_ptr

    # devices and versions
    def cudaGetDeviceCount(self):
        return (SUCCESS, self.devices) if self.devices else (INSUFFICIENT_DRIVER, None)

    def cudaGetDevice(self):
        return (SUCCESS, 0)

    def cudaSetDevice(self, device):
        return (SUCCESS,) if device < self.devices else (101, )

    def cudaDriverGetVersion(self):
        return (SUCCESS, self.driver)

    def cudaRuntimeGetVersion(self):
        return (SUCCESS, self.runtime)

    def cudaGetDeviceProperties(self, device):
        return (SUCCESS, types.SimpleNamespace(name=b"NVIDIA H100 80GB HBM3\x00\x00", major=9, minor=0))

    def cudaGetErrorName(self, error):
        return (SUCCESS, ERROR_NAMES.get(int(error), b"cudaErrorUnknown"))

    # memory
    def cudaMalloc(self, size):
        if size > self.limit:
            return (MEMORY_ALLOCATION, None)
        ptr = self._new_handle()
        self.next_ptr += size
        self.memory[ptr] = bytearray(size)
        return (SUCCESS, ptr)

    def cudaFree(self, devPtr):
        del self.memory[devPtr]
        return (SUCCESS,)

    def cudaMallocHost(self, size):
        buffer = ctypes.create_string_buffer(size)
        self.pinned[ctypes.addressof(buffer)] = buffer
        return (SUCCESS, ctypes.addressof(buffer))

    def cudaFreeHost(self, ptr):
        del self.pinned[ptr]
        return (SUCCESS,)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        def copy():
            if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
                self.memory[dst][:count] = ctypes.string_at(src, count)
            else:
                ctypes.memmove(dst, bytes(self.memory[src][:count]), count)

        self.enqueue(copy)
        return (SUCCESS,)

    def enqueue(self, work) -> None:
        """Work on a stream: recorded into the graph being captured, else done (the stream is in order)."""
        if self.capturing is not None:
            self.capturing.work.append(work)
        else:
            work()

    # streams and events
    def cudaStreamCreate(self):
        return (SUCCESS, self._new_handle())

    def cudaStreamDestroy(self, stream):
        return (SUCCESS,)

    def cudaStreamSynchronize(self, stream):
        return (SUCCESS,)

    def cudaEventCreate(self):
        event = self._new_handle()
        self.events.add(event)
        return (SUCCESS, event)

    def cudaEventRecord(self, event, stream):
        return (SUCCESS,)

    def cudaEventSynchronize(self, event):
        return (SUCCESS,)

    def cudaEventElapsedTime(self, start, end):
        return (SUCCESS, 1.5)

    def cudaEventDestroy(self, event):
        self.events.remove(event)
        return (SUCCESS,)

    # graphs
    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = _Graph()
        self.capture_modes.append(mode)
        return (SUCCESS,)

    def cudaStreamEndCapture(self, stream):
        graph, self.capturing = self.capturing, None
        if self.fail_end_capture:
            return (CAPTURE_INVALIDATED, None)
        handle = self._new_handle()
        self.graphs.add(handle)
        self._graph_work[handle] = graph.work
        return (SUCCESS, handle)

    def cudaGraphInstantiate(self, graph, flags):
        if self.fail_instantiate:
            return (CAPTURE_INVALIDATED, None)
        handle = self._new_handle()
        self.graph_execs.add(handle)
        self._graph_work[handle] = self._graph_work[graph]
        return (SUCCESS, handle)

    def cudaGraphLaunch(self, graphExec, stream):
        for work in self._graph_work[graphExec]:
            work()
        return (SUCCESS,)

    def cudaGraphDestroy(self, graph):
        self.graphs.remove(graph)
        return (SUCCESS,)

    def cudaGraphExecDestroy(self, graphExec):
        self.graph_execs.remove(graphExec)
        return (SUCCESS,)
