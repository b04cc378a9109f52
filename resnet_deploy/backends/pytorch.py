"""PyTorch: the reference every artifact is compared with, and the baseline it is timed against."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..artifacts import Manifest, TensorSpec
from ..errors import ArtifactError
from ..fileio import recorded_problem
from ..models import EmbeddedPreprocess, create_model
from .base import Runner
from .load_options import LoadOptions


def reference_model(manifest: Manifest) -> nn.Module:
    """The float32 PyTorch model the artifact was exported from, rebuilt from the manifest (behind its
    input normalisation where the artifact embeds it)."""
    model = _bare_reference(manifest)
    if manifest.embedded_preprocess:
        return EmbeddedPreprocess(model, tuple(manifest.preprocess["mean"]), tuple(manifest.preprocess["std"]))
    return model


def _bare_reference(manifest: Manifest) -> nn.Module:
    weights = manifest.weights
    options = manifest.model_options
    kwargs = {"features_only": options.get("features_only", False), "last_stride": options.get("last_stride", 2)}
    num_classes = None if kwargs["features_only"] else manifest.num_classes
    if not manifest.random_init:
        path = Path(weights["file"])
        problem = recorded_problem(path, weights["sha256"])
        if problem is not None:
            raise ArtifactError(f"the weights file the artifact was exported from, {path}, {problem}: the PyTorch "
                                "reference cannot be rebuilt; re-export, or verify --reference golden")
        return create_model(manifest.arch, num_classes=num_classes, weights=path, **kwargs)
    with torch.random.fork_rng():
        torch.manual_seed(int(weights["seed"]))
        return create_model(manifest.arch, num_classes=num_classes, **kwargs)


class TorchRunner(Runner):
    """Runs an ``nn.Module`` in eval mode under ``inference_mode``; outputs named like the ONNX graph's.

    ``channels_last`` stores weights and inputs NHWC (faster convolutions on GPUs and oneDNN);
    ``half`` runs weights and activations in float16 (outputs come back float32);
    ``compile`` wraps the module in ``torch.compile`` (the first call of each shape compiles), on
    CUDA in "reduce-overhead" mode, which replays CUDA graphs.
    """

    def __init__(
        self,
        model: nn.Module,
        outputs: Sequence[str | TensorSpec],
        *,
        input_spec: TensorSpec | None = None,
        device: str = "cpu",
        channels_last: bool = False,
        compile: bool = False,
        half: bool = False,
        batch_range: tuple[int, int] | None = None,
    ) -> None:
        self.torch_device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.dtype = torch.float16 if half else torch.float32
        self.precision = "fp16" if half else "fp32"  # of the model as run: the float32 reference, or its half
        module = model.eval().to(self.torch_device, dtype=self.dtype, memory_format=self.memory_format)
        mode = "reduce-overhead" if self.torch_device.type == "cuda" else None
        self.model = torch.compile(module, mode=mode) if compile else module
        self.stream = torch.cuda.Stream(self.torch_device) if self.torch_device.type == "cuda" else None
        self.name = f"torch-{self.torch_device.type}"
        self.device = str(self.torch_device)
        self.options = {"channels_last": channels_last, "compile": compile, "half": half}
        self.inputs = [input_spec or TensorSpec("input", ["batch", "channels", "height", "width"])]
        self.outputs = [o if isinstance(o, TensorSpec) else TensorSpec(o, []) for o in outputs]  # [] = not known
        self.batch_range = batch_range

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        on_stream = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        with torch.inference_mode(), on_stream:
            source = torch.from_numpy(batch).to(self.torch_device, non_blocking=True)
            result = self.model(source.to(self.dtype).contiguous(memory_format=self.memory_format))
        if self.stream is not None:
            self.stream.synchronize()
        tensors = result if isinstance(result, (list, tuple)) else [result]
        return {name: t.float().cpu().numpy() for name, t in zip(self.output_names, tensors)}

    def device_timer(self) -> _EventTimer | None:
        return _EventTimer(self.stream) if self.stream is not None else None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.options}

    def close(self) -> None:
        self.model = None


class _EventTimer:
    """Device time of each call, from torch CUDA events recorded on the runner's own stream around it."""

    def __init__(self, stream: torch.cuda.Stream) -> None:
        self.stream, self.samples = stream, []
        self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def __enter__(self) -> _EventTimer:
        self.start.record(self.stream)
        return self

    def __exit__(self, *exc: object) -> None:
        self.end.record(self.stream)
        self.end.synchronize()
        self.samples.append(self.start.elapsed_time(self.end) / 1e3)

    def close(self) -> None:
        """torch frees its events with the objects."""


def load(path: Path, manifest: Manifest, precision: str, device: tuple[str, int], options: LoadOptions) -> TorchRunner:
    """The registry's loader: the float32 model the artifact ``path`` was exported from, rebuilt."""
    kind, index = device
    if options.threads:
        torch.set_num_threads(options.threads)
    own = options.own
    return TorchRunner(reference_model(manifest), manifest.outputs, input_spec=manifest.input,
                       device=f"{kind}:{index}" if kind == "cuda" else "cpu", channels_last=own.channels_last,
                       compile=own.compile, half=own.half)
