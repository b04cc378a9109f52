"""`verify`: run every backend that can run here on the same inputs and compare
each with the float32 PyTorch reference rebuilt from the manifest."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ..artifacts import Manifest, artifact_filename, manifest_for
from ..backends import detect
from ..backends.onnxrt import OnnxRuntimeRunner
from ..backends.pytorch import TorchRunner
from ..data import load_npy_batch, random_images
from ..errors import ArtifactError, DeployError
from ..fileio import atomic_open, sha256_file
from ..models import create_model
from .layerwise import LayerwiseReport, localize
from .compare import ResultRow, compare_outputs
from .tolerances import DEFAULT_TOLERANCES, Tolerance


@dataclass
class Report:
    artifact: str
    precision: str
    arch: str
    reference: str
    inputs: dict[str, Any]
    tolerance: dict[str, Any]
    rows: list[ResultRow] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    layerwise: LayerwiseReport | None = None

    @property
    def passed(self) -> bool:
        """True when at least one backend ran and every row passed."""
        return bool(self.rows) and all(row.passed for row in self.rows)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data

    def write(self, path: str | os.PathLike[str]) -> None:
        with atomic_open(path, "w") as handle:
            json.dump(self.to_dict(), handle, indent=2, default=float)
            handle.write("\n")


def reference_model(manifest: Manifest) -> nn.Module:
    """The float32 PyTorch model the artifact was exported from, rebuilt from the manifest."""
    weights = manifest.weights
    options = manifest.model_options
    kwargs = {"features_only": options.get("features_only", False), "last_stride": options.get("last_stride", 2)}
    num_classes = None if kwargs["features_only"] else manifest.num_classes
    if "file" in weights:
        path = Path(weights["file"])
        if not path.is_file():
            raise ArtifactError(f"the weights file the artifact was exported from, {path}, is gone")
        if sha256_file(path) != weights["sha256"]:
            raise ArtifactError(f"{path} changed since export (sha256 differs from the manifest): re-export")
        return create_model(manifest.arch, num_classes=num_classes, weights=path, **kwargs)
    with torch.random.fork_rng():
        torch.manual_seed(int(weights["seed"]))
        return create_model(manifest.arch, num_classes=num_classes, **kwargs)


def _input_batches(manifest: Manifest, batch_sizes: list[int] | None, seed: int, inputs: str | None) -> tuple[list[np.ndarray], dict[str, Any]]:
    shape = manifest.input.shape[1:]
    if any(isinstance(d, str) for d in shape):  # dynamic H/W: check at the export size
        shape = [3, *manifest.preprocess["crop"]]
    profile = manifest.batch
    if inputs is not None:
        data = load_npy_batch(inputs, shape)
        chunks = [data[i: i + profile.max] for i in range(0, len(data), profile.max)]
        return chunks, {"kind": "npy", "file": str(inputs), "images": len(data)}
    sizes = batch_sizes or sorted({profile.min, profile.opt})
    outside = [b for b in sizes if not profile.min <= b <= profile.max]
    if outside:
        raise DeployError(f"batch sizes {outside} are outside the artifact's profile {profile}")
    mean, std = manifest.preprocess["mean"], manifest.preprocess["std"]
    batches = [random_images(b, shape, mean, std, seed=seed + i) for i, b in enumerate(sizes)]
    return batches, {"kind": "random", "seed": seed, "batch_sizes": sizes, "range": "normalised uniform [0, 1] images"}


def _onnx_runners(path: Path) -> tuple[list[Any], list[dict[str, str]]]:
    runners, skipped = [OnnxRuntimeRunner(path)], []
    for provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        available = detect.onnxruntime_provider(provider)
        if available.available:
            runners.append(OnnxRuntimeRunner(path, provider=provider))
        else:
            skipped.append({"backend": f"onnxruntime-{provider[:-len('ExecutionProvider')].lower()}", "reason": available.reason})
    return runners, skipped


def verify(
    artifact: str | os.PathLike[str],
    *,
    batch_sizes: list[int] | None = None,
    seed: int = 0,
    inputs: str | None = None,
    tolerance: Tolerance | None = None,
    layerwise: bool = False,
    reference: nn.Module | None = None,
) -> Report:
    """Compare every backend that can run ``artifact`` here with the PyTorch reference.

    ``reference`` replaces the model rebuilt from the manifest (for a model
    changed after export). Raises :class:`DeployError` when nothing can run;
    a parity failure is a report with ``passed == False``.
    """
    artifact = Path(artifact)
    if artifact.suffix == ".engine":
        trt = detect.tensorrt()
        if not trt.available:
            stem = artifact.name[: -len(".engine")]
            raise DeployError(
                f"cannot verify {artifact.name}: {trt.reason}; verify the ONNX it was built from instead, "
                f"e.g. {artifact.parent / artifact_filename(stem, 'fp32')}"
            )
        raise DeployError("verifying TensorRT engines is not implemented in this version; verify the ONNX file")
    manifest, precision = manifest_for(artifact)
    tol = tolerance or DEFAULT_TOLERANCES[precision]
    batches, input_info = _input_batches(manifest, batch_sizes, seed, inputs)
    model = reference if reference is not None else reference_model(manifest)
    names = [o.name for o in manifest.outputs]
    reference_runner = TorchRunner(model, names)

    report = Report(
        artifact=str(artifact), precision=precision, arch=manifest.arch,
        reference=f"{reference_runner.name} float32", inputs=input_info, tolerance=tol.to_dict(),
    )
    runners, report.skipped = _onnx_runners(artifact)
    cuda = detect.torch_cuda()
    if cuda.available:
        runners.insert(0, TorchRunner(copy.deepcopy(model), names, device="cuda"))
    else:
        report.skipped.insert(0, {"backend": "torch-cuda", "reason": cuda.reason})
    report.skipped.append({"backend": "tensorrt", "reason": detect.tensorrt().reason or "no engine in the manifest"})

    expected = [reference_runner(batch) for batch in batches]
    for runner in runners:
        for batch, want in zip(batches, expected):
            report.rows += compare_outputs(runner.name, want, runner(batch), tol)
    if layerwise:
        report.layerwise = localize(onnx.load(str(artifact)), model, batches[0], precision=precision)
    return report
