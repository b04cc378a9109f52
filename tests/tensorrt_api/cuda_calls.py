"""Run every CUDA runtime call of resnet_deploy.backends.cuda against the real cuda-python importable here
(no GPU, no driver), and print what happened as JSON.

Each call goes to the real function with the arguments the package passes: a TypeError there means the
package passes what the real API does not take. The real answer must be an ``(error, *values)`` tuple of
the length the package unpacks. Without a driver the answer is an error, so a value of the real type
(a null stream, graph or event; real pinned memory for numpy) is handed back as a success in its place,
and the package goes on to its next call with real values, as it would on a GPU. Also checks the test
stand-in (tests/standins/cudart.py): each function it defines exists here with the same parameters.
"""

from __future__ import annotations

import ctypes
import inspect
import json
import sys

import numpy as np

from resnet_deploy.backends import cuda
from resnet_deploy.errors import DeployError
from tests.standins.cudart import CudaRuntime

real = cuda.runtime_api()
pinned: list[ctypes.Array] = []


def _pinned(size: int) -> int:
    buffer = ctypes.create_string_buffer(size)
    pinned.append(buffer)
    return ctypes.addressof(buffer)


# What a GPU would have answered, by function: a value of the real type (the functions not named answer
# the error alone).
ANSWERS = {
    "cudaGetDeviceCount": lambda args: 1, "cudaGetDevice": lambda args: 0,
    "cudaDriverGetVersion": lambda args: 12040, "cudaRuntimeGetVersion": lambda args: 12090,
    "cudaGetDeviceProperties": lambda args: real.cudaDeviceProp(),
    "cudaGetErrorName": lambda args: b"cudaErrorUnknown",
    "cudaMalloc": lambda args: 0x10000, "cudaMallocHost": lambda args: _pinned(args[0]),
    "cudaStreamCreate": lambda args: real.cudaStream_t(), "cudaEventCreate": lambda args: real.cudaEvent_t(),
    "cudaStreamEndCapture": lambda args: real.cudaGraph_t(),
    "cudaGraphInstantiate": lambda args: real.cudaGraphExec_t(),
    "cudaEventElapsedTime": lambda args: 0.5,
}
calls: dict[str, int] = {}  # function -> length of the real answer
problems: list[str] = []


class Checked:
    """The real module, each function call checked and, where it failed for want of a driver, answered."""

    def __getattr__(self, name):
        value = getattr(real, name)
        if not name.startswith("cuda") or isinstance(value, type) or not callable(value):
            return value

        def call(*args):
            answer = value(*args)  # a TypeError propagates: the package's argument forms are wrong
            expected = 2 if name in ANSWERS else 1
            if not isinstance(answer, tuple) or not isinstance(answer[0], real.cudaError_t):
                problems.append(f"{name} answered {answer!r}, not an (error, *values) tuple")
            elif len(answer) != expected:
                problems.append(f"{name} answered {len(answer)} items, the package unpacks {expected}")
            calls[name] = len(answer)
            if int(answer[0]) == 0:
                return answer
            success = real.cudaError_t.cudaSuccess
            return (success, ANSWERS[name](args)) if name in ANSWERS else (success,)

        return call


def exercise() -> None:
    """Every function of the package's CUDA layer, in the order a build and a run use them."""
    cuda.device_count()
    cuda.versions()
    cuda.driver_problem()
    cuda.device_properties(cuda.current_device())
    cuda.call("cudaSetDevice", 0)
    device = cuda.DeviceBuffer(64)
    host = cuda.HostBuffer((4, 4), np.float32)
    stream = cuda.Stream()
    stream.to_device(device, host.ptr, host.array.nbytes)
    stream.to_host(host.ptr, device, host.array.nbytes)
    stream.synchronize()
    graph = stream.capture(lambda: None)
    graph.launch(stream)
    graph.destroy()
    timer = cuda.EventTimer(stream)
    with timer:
        pass
    timer.close()
    host.free()
    device.free()
    stream.destroy()


def main() -> None:
    real_check = cuda.check
    cuda.runtime_api = lambda: Checked()
    exercise()
    try:  # an error from the real module becomes one line naming it
        real_check(real.cudaStreamCreate())
        problems.append("cudaStreamCreate succeeded without a driver")
    except DeployError as exc:
        error_line = str(exc)
    standin = {}
    for name, function in vars(CudaRuntime).items():
        if name.startswith("cuda") and inspect.isfunction(function):
            if not hasattr(real, name):
                problems.append(f"the stand-in defines {name}, which cuda-python does not have")
                continue
            ours = list(inspect.signature(function).parameters)[1:]
            theirs = list(inspect.signature(getattr(real, name)).parameters)
            standin[name] = ours == theirs
            if ours != theirs:
                problems.append(f"the stand-in's {name}{tuple(ours)} differs from cuda-python's {tuple(theirs)}")
    json.dump({"module": real.__name__, "calls": calls, "problems": problems, "error_line": error_line,
               "standin": standin}, sys.stdout)


if __name__ == "__main__":
    main()
