"""The TensorRT runner's own logic (buffers per shape, copies, CUDA graphs, errors, release) against
stand-ins of the documented TensorRT 10/11 and cuda-python APIs. No engine is built or run here: these
stand-ins compute a known function so the runner's plumbing can be checked without a GPU; the real
engine tests are tests/integration/test_engine.py, which skip where TensorRT is missing."""

from __future__ import annotations

import ctypes
import sys
import types

import numpy as np
import pytest

from resnet_deploy.backends import cuda, detect
from resnet_deploy.backends.detect import Availability
from resnet_deploy.errors import DeployError


class FakeCudaRuntime:
    """cuda.bindings.runtime's shape: every call answers (error, *values); memory is a dict of bytearrays."""

    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeGlobal=0)

    def __init__(self, memory_limit: int = 1 << 20):
        self.memory: dict[int, bytearray] = {}
        self.limit, self.next_ptr = memory_limit, 0x1000
        self.capturing: list | None = None

    def cudaMalloc(self, nbytes):
        if nbytes > self.limit:
            return (2, None)
        ptr, self.next_ptr = self.next_ptr, self.next_ptr + nbytes + 256
        self.memory[ptr] = bytearray(nbytes)
        return (0, ptr)

    def cudaFree(self, ptr):
        del self.memory[ptr]
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            self.memory[dst][:nbytes] = ctypes.string_at(src, nbytes)
        else:
            ctypes.memmove(dst, bytes(self.memory[src][:nbytes]), nbytes)
        return (0,)

    def cudaStreamCreate(self):
        return (0, 7)

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaGetDevice(self):
        return (0, 0)

    def cudaGetDeviceCount(self):
        return (0, 1)

    def cudaGetErrorName(self, error):
        return (0, {2: b"cudaErrorMemoryAllocation"}.get(int(error), b"cudaErrorUnknown"))

    def cudaStreamBeginCapture(self, stream, mode):
        self.capturing = []
        return (0,)

    def cudaStreamEndCapture(self, stream):
        graph, self.capturing = self.capturing, None
        return (0, graph)

    def cudaGraphInstantiate(self, graph, flags):
        return (0, list(graph))

    def cudaGraphLaunch(self, graph_exec, stream):
        for work in graph_exec:
            work()
        return (0,)


class FakeContext:
    """An engine of input (B, 3, 2, 2) float32 -> logits (B, 3): the sum over each channel's pixels."""

    def __init__(self, cudart):
        self.cudart, self.shape, self.addresses, self.executions = cudart, None, {}, 0

    def set_input_shape(self, name, shape):
        self.shape = tuple(shape)
        return 1 <= shape[0] <= 4

    def get_tensor_shape(self, name):
        return (self.shape[0], 3)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def execute_async_v3(self, stream):
        source, target, batch = self.addresses["input"], self.addresses["logits"], self.shape[0]

        def work():
            self.executions += 1
            images = np.frombuffer(bytes(self.cudart.memory[source]), np.float32).reshape(batch, 3, 2, 2)
            self.cudart.memory[target][:] = images.sum(axis=(2, 3)).astype(np.float32).tobytes()

        if self.cudart.capturing is not None:
            self.cudart.capturing.append(work)  # recorded into the graph, not run
        else:
            work()
        return True


def _fake_tensorrt(cudart) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.12.0"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.nptype = lambda dtype: np.float32
    context = FakeContext(cudart)
    engine = types.SimpleNamespace(
        num_io_tensors=2, get_tensor_name=lambda i: ("input", "logits")[i],
        get_tensor_mode=lambda name: "input" if name == "input" else "output",
        get_tensor_dtype=lambda name: "float32",
        get_tensor_shape=lambda name: (-1, 3, 2, 2) if name == "input" else (-1, 3),
        get_tensor_profile_shape=lambda name, profile: ((1, 3, 2, 2), (2, 3, 2, 2), (4, 3, 2, 2)),
        create_execution_context=lambda: context)
    trt.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: engine)
    trt.context = context
    return trt


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    cudart = FakeCudaRuntime()
    trt = _fake_tensorrt(cudart)
    monkeypatch.setattr(cuda, "runtime_api", lambda: cudart)
    monkeypatch.setattr(cuda, "bindings_installed", lambda: True)
    monkeypatch.setattr(detect, "tensorrt", lambda: Availability(True))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "torch", None)  # the runner's path imports no PyTorch
    (tmp_path / "m.engine").write_bytes(b"serialized")
    return cudart, trt.context, tmp_path / "m.engine"


def _batch(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(size, 3, 2, 2)).astype(np.float32)


def test_runner_copies_in_runs_and_copies_out_per_shape(fakes):
    from resnet_deploy.backends.tensorrt import TensorRTRunner

    cudart, context, path = fakes
    runner = TensorRTRunner(path)
    assert runner.batch_range == (1, 4) and runner.inputs[0].shape == [-1, 3, 2, 2] and runner.device == "cuda:0"
    for size, seed in ((2, 0), (3, 1), (2, 2)):
        batch = _batch(size, seed)
        np.testing.assert_allclose(runner(batch)["logits"], batch.sum(axis=(2, 3)), rtol=1e-6)
    assert len(cudart.memory) == 4  # input and output buffers of two shapes, kept for reuse
    with pytest.raises(DeployError, match="outside the artifact's profile"):
        runner(_batch(5, 0))
    runner.close()
    assert cudart.memory == {}


def test_cuda_graphs_capture_once_per_shape_and_replay(fakes):
    from resnet_deploy.backends.tensorrt import TensorRTRunner

    cudart, context, path = fakes
    with TensorRTRunner(path, cuda_graphs=True) as runner:
        first, second = _batch(2, 0), _batch(2, 1)
        np.testing.assert_allclose(runner(first)["logits"], first.sum(axis=(2, 3)), rtol=1e-6)
        assert context.executions == 2  # the run TensorRT needs before capture, then the graph's first launch
        np.testing.assert_allclose(runner(second)["logits"], second.sum(axis=(2, 3)), rtol=1e-6)
        assert context.executions == 3  # one replay: new inputs through the captured work, nothing enqueued


def test_runtime_load_of_an_engine_checks_the_gpu_without_torch(fakes, monkeypatch):
    from resnet_deploy.backends import tensorrt
    from resnet_deploy.backends.registry import LoadOptions

    cudart, _context, path = fakes
    cudart.cudaSetDevice = lambda index: (0,)
    cudart.cudaGetDeviceProperties = lambda index: (0, types.SimpleNamespace(name=b"NVIDIA H100", major=9, minor=0))
    record = {"tensorrt": "10.12.0", "compute_capability": "8.0", "gpu": "NVIDIA A100", "hardware_compat": "none"}
    manifest = types.SimpleNamespace(precision_options={"engine": record})
    with pytest.raises(DeployError, match=r"built for NVIDIA A100 \(compute capability 8.0\), this GPU is NVIDIA H100"):
        tensorrt.load(path, manifest, "engine", LoadOptions(device="cuda:0"))
    record.update(compute_capability="9.0", gpu="NVIDIA H100")
    # no device named: the GPU the CUDA runtime sees (torch, which cannot be imported here, is not asked)
    with tensorrt.load(path, manifest, "engine", LoadOptions()) as runner:
        assert runner.name == "tensorrt" and runner.device == "cuda:0"


def test_a_cuda_error_is_one_line_naming_it(fakes):
    from resnet_deploy.backends.tensorrt import TensorRTRunner

    cudart, _context, path = fakes
    cudart.limit = 8
    with pytest.raises(DeployError, match=r"CUDA error 2 \(cudaErrorMemoryAllocation\)"):
        TensorRTRunner(path)(_batch(2, 0))
