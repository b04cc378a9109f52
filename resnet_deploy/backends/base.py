"""The interface every backend's runner implements, and the input checks they share.

A runner takes a float32 NCHW numpy batch and returns ``{output name: array}``.
It says what it takes and gives (``inputs``, ``outputs``, ``batch_range``),
is warmed up explicitly (first calls pay for allocation, autotuning, graph
capture), and is a context manager that releases its session or engine.

Every runner is safe across threads: one whose ``run`` can be called by several threads
at once says ``concurrent = True``; the others are called one at a time (a lock in
``__call__``), and say so, so a server does not start workers that would only queue.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy as np

from ..artifacts import Manifest, TensorSpec
from ..errors import DeployError
from ..precisions import FP32


class DeviceTimer(Protocol):
    """Device time of the calls made inside ``with timer:``, from events the runner records on its own
    stream around each call (the runner owns the stream: nothing else touches it)."""

    samples: list[float]  # seconds, one per call

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...

    def close(self) -> None:
        """Release the events."""


class Runner:
    """Base of the torch, ONNX Runtime and TensorRT runners."""

    name: str  # e.g. "onnxruntime-cpu", "torch-cpu", "tensorrt"
    device: str = "cpu"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    batch_range: tuple[int, int] | None = None  # smallest and largest batch it takes, when bounded
    backend: str | None = None  # the registry's name of its backend, when loaded by runtime.load
    artifact: str | None = None  # the file it runs, when loaded by runtime.load
    manifest: Manifest | None = None  # that file's manifest, when loaded by runtime.load
    precision: str = FP32
    selection: str | None = None  # how --backend auto chose this configuration, when it did
    concurrent: bool = True  # run() may be called by several threads at once; else __call__ serialises calls
    serial_reason: str = ""  # why not, when not

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.check_input(batch)
        if self.concurrent:
            return self.run(batch)
        with self._call_lock():
            return self.run(batch)

    def _call_lock(self) -> threading.Lock:
        """This runner's lock, made on first use (subclasses do not call ``__init__`` here); ``setdefault``
        is atomic, so two threads' first calls get the same lock."""
        return self.__dict__.setdefault("_serial_lock", threading.Lock())

    def release_memory_above(self, batch: int | None) -> None:
        """After a call with more than ``batch`` images, hand the memory the call took back (None: keep it for
        the next call, the fastest). For a long-lived server: its memory returns after an overload. A runtime
        that manages its own memory (TensorRT's fixed buffers, OpenVINO's requests) ignores it."""

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a batch already checked by :meth:`check_input`."""
        raise NotImplementedError

    def run_padded(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a batch smaller than the artifact's profile allows (a short last chunk, a lone request):
        padded with zeros up to the profile's minimum, the padding's outputs dropped."""
        count = len(batch)
        low = self.batch_range[0] if self.batch_range else 1
        if count >= low:
            return self(batch)
        padded = np.concatenate([batch, np.zeros((low - count, *batch.shape[1:]), batch.dtype)])
        return {name: value[:count] for name, value in self(padded).items()}

    @property
    def input_dtype(self) -> np.dtype:
        """What the model takes: float32 images, or uint8 pixels where the artifact embeds its preprocessing."""
        return np.dtype(self.inputs[0].dtype)

    def check_input(self, batch: Any) -> np.ndarray:
        """The batch as a C-contiguous array of the input's dtype, or a one-line error saying what is wrong."""
        if not isinstance(batch, np.ndarray):
            raise DeployError(f"{self.name} takes a numpy array, not {type(batch).__name__}")
        if batch.dtype != self.input_dtype:
            how = ("uint8 pixels, resized and cropped (the artifact embeds its preprocessing)" if self.input_dtype == np.uint8
                   else "preprocessed images: resnet_deploy.data.ImagePreprocess, or batch.astype(np.float32)")
            raise DeployError(f"input dtype is {batch.dtype}; {self.name} takes {self.input_dtype} ({how})")
        expected = self.inputs[0].shape
        if batch.ndim != len(expected) or any(
            isinstance(want, int) and want != got for want, got in zip(expected[1:], batch.shape[1:])
        ):
            raise DeployError(f"input shape {list(batch.shape)} does not match the model's {expected}")
        if self.batch_range is not None:
            low, high = self.batch_range
            if not low <= batch.shape[0] <= high:
                raise DeployError(
                    f"batch size {batch.shape[0]} is outside the artifact's profile ({low} to {high}): "
                    "re-export with a wider --batch MIN:OPT:MAX"
                )
        elif batch.shape[0] < 1:
            raise DeployError("an empty batch: give at least one image")
        return np.ascontiguousarray(batch)

    def example_batch(self, batch_size: int | None = None) -> np.ndarray:
        """Zeros of the input's shape at ``batch_size`` (default: the smallest the runner takes); a model
        with dynamic height and width is given the size it was exported at (the manifest's crop)."""
        size = batch_size or (self.batch_range[0] if self.batch_range else 1)
        dims = [d if isinstance(d, int) else None for d in self.inputs[0].shape[1:]]
        if None in dims and self.manifest is not None and len(dims) == 3:
            dims = list(self.manifest.example_shape)
        if None in dims:
            raise DeployError(f"{self.name}: the input has symbolic spatial dims {self.inputs[0].shape}; "
                              "give an example batch")
        return np.zeros((size, *dims), dtype=self.input_dtype)

    def warmup(self, batch_size: int | None = None, iterations: int = 3) -> None:
        """Run a few batches so allocation, autotuning and graph capture are not timed later."""
        batch = self.example_batch(batch_size)
        for _ in range(iterations):
            self(batch)

    def device_timer(self) -> DeviceTimer | None:
        """How to time a run on the device (as Polygraphy's runners own their timing): a timer recording
        events on this runner's stream, or None where the host's wall clock is the only clock (the CPU)."""
        return None

    def describe(self) -> dict[str, Any]:
        """What a report or a server's metadata says about this runner."""
        return {
            "backend": self.name,
            "artifact": self.artifact,
            "precision": self.precision,
            "device": self.device,
            "selection": self.selection,
            "inputs": [vars(t) for t in self.inputs],
            "outputs": [vars(t) for t in self.outputs],
            "batch_range": list(self.batch_range) if self.batch_range else None,
            "concurrent": self.concurrent, **({} if self.concurrent else {"serial_reason": self.serial_reason}),
        }

    def close(self) -> None:
        """Release the session or engine; the runner is unusable afterwards."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
