"""The peak memory a model takes to serve, measured: a fresh Python process loads it as the server would (the
artifact through :func:`~.runtime.load`, or a Triton repository's ONNX file through ONNX Runtime or OpenVINO with
its config's threads, one session per instance), runs one batch of the largest size through each, and reports
its peak resident set (VmHWM). A fresh process, so nothing this process holds is counted; what a pod must
request is at least this.

    python -m resnet_deploy.target.memory SPEC_JSON      (prints {"peak_bytes": N, "baseline_bytes": N})
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import DeployError

MEASURE_TIMEOUT_S = 600.0  # loading and one batch of a large model on a busy machine


@dataclass(frozen=True)
class MemorySpec:
    """What to load and run, at ``batch`` (0: a model whose dims hold the batch, Triton's max_batch_size 0): an
    ``artifact`` (with ``backend``) or a bare ONNX ``model_file`` run by ``engine``
    (``onnxruntime`` or ``openvino``, as Triton's backends of those names load it) with ``input_dims`` (no batch
    axis) and ``input_dtype`` (numpy's name); ``sessions`` copies, ``threads`` each, at ``batch``."""

    batch: int
    threads: int
    sessions: int = 1
    artifact: str | None = None
    backend: str = "auto"
    model_file: str | None = None
    engine: str = "onnxruntime"
    input_dims: tuple[int, ...] = field(default=())
    input_dtype: str = "float32"


@dataclass(frozen=True)
class PeakMemory:
    """A measured peak: the whole process's, and its baseline (Python and the runtime's libraries, no model)."""

    peak_bytes: int
    baseline_bytes: int
    spec: MemorySpec

    def describe(self) -> str:
        what = self.spec.artifact or self.spec.model_file
        return (f"{self.peak_bytes / 2**20:.0f} MiB peak ({self.spec.sessions} x {what}, batch {self.spec.batch}, "
                f"{self.spec.threads} thread{'s' if self.spec.threads != 1 else ''}, measured in a fresh process here)")


def measure_peak(spec: MemorySpec) -> PeakMemory:
    """Run ``spec`` in a fresh process and read its peak resident memory.

    Raises:
        DeployError: the model did not load or run there (its one-line reason), or took over the bound.
    """
    what = spec.artifact or spec.model_file
    with tempfile.TemporaryFile("w+") as errors:  # a file, not a pipe: a child that writes much costs no memory here
        try:
            done = subprocess.run([sys.executable, "-m", __name__, json.dumps(asdict(spec))], stdout=subprocess.PIPE,
                                  stderr=errors, text=True, timeout=MEASURE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise DeployError(f"measuring the memory of {what} took over {MEASURE_TIMEOUT_S:g} s") from None
        errors.seek(max(0, errors.seek(0, 2) - 4096))
        lines = [line for line in errors.read().splitlines() if line.strip()]
    try:
        figures = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
        return PeakMemory(int(figures["peak_bytes"]), int(figures["baseline_bytes"]), spec)
    except (IndexError, ValueError, TypeError, KeyError):
        reason = lines[-1] if lines else f"exit {done.returncode}"
        raise DeployError(f"measuring the memory of {what} failed: {reason}") from None


def _peak_rss() -> int:
    """This process's peak resident set: Linux's VmHWM, of this program's own memory map. Not ``ru_maxrss``,
    which an exec carries over from the forked parent (a 1.3 GB test process made a 200 MB model read 1.4 GB)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _artifact_calls(spec: MemorySpec) -> list[Any]:
    import numpy as np

    from .runtime import load

    runners = [load(spec.artifact, backend=spec.backend, threads=spec.threads) for _ in range(spec.sessions)]
    shape = (spec.batch, *runners[0].manifest.example_shape)
    batch = np.zeros(shape, np.uint8 if runners[0].manifest.input.dtype == "uint8" else np.float32)
    return [lambda runner=runner: runner(batch) for runner in runners]


def _model_file_calls(spec: MemorySpec) -> list[Any]:
    import numpy as np

    shape = (spec.batch, *spec.input_dims) if spec.batch else spec.input_dims
    batch = np.zeros(shape, np.dtype(spec.input_dtype))
    calls = []
    for _ in range(spec.sessions):
        if spec.engine == "openvino":
            import openvino

            compiled = openvino.Core().compile_model(spec.model_file, "CPU", {
                "INFERENCE_NUM_THREADS": spec.threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"})
            calls.append(lambda compiled=compiled: compiled([batch]))
        else:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = spec.threads, 1
            session = onnxruntime.InferenceSession(spec.model_file, options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            calls.append(lambda session=session, name=name: session.run(None, {name: batch}))
    return calls


def _main(argument: str) -> None:
    raw = json.loads(argument)
    spec = MemorySpec(**{**raw, "input_dims": tuple(raw.get("input_dims", ()))})
    import numpy  # noqa: F401  (the baseline holds the libraries a server holds before any model)

    if spec.engine == "onnxruntime" or spec.artifact:
        import onnxruntime  # noqa: F401
    baseline = _peak_rss()
    for call in _artifact_calls(spec) if spec.artifact else _model_file_calls(spec):
        call()
    print(json.dumps({"peak_bytes": _peak_rss(), "baseline_bytes": baseline}))


if __name__ == "__main__":
    _main(sys.argv[1])
