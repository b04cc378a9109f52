"""Golden outputs: PyTorch's float32 outputs on the export's check inputs, stored beside the
artifacts as ``STEM.golden.npz`` (hashed in the manifest), so that an artifact can be verified
on a target that has ONNX Runtime or TensorRT but no PyTorch (``verify --reference golden``).

It holds the gate's input sets (seeded random images, and the calibration hold-out where the
export had real calibration data) batch by batch, each with the reference's outputs.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..artifacts import Manifest
from ..errors import ArtifactError
from ..fileio import sha256_file
from .inputs import InputSet, default_sets

NAME = "golden"  # how rows name this reference


HOLDOUT_IMAGES = 16  # of the calibration hold-out kept: resnet50's 224 px inputs are 0.6 MB an image


def write_golden(path: str | os.PathLike[str], sets: list[InputSet], reference: Callable[[np.ndarray], dict]) -> None:
    """``sets`` (the hold-out cut to :data:`HOLDOUT_IMAGES`) with ``reference``'s outputs on each batch."""
    arrays: dict[str, np.ndarray] = {}
    kept = [(inputs.label, inputs.batches if inputs.label != "holdout" else
             [np.concatenate(inputs.batches)[:HOLDOUT_IMAGES]]) for inputs in sets]
    for label, batches in kept:
        for index, batch in enumerate(batches):
            arrays[f"{label}.{index}.input"] = batch
            for name, value in reference(batch).items():
                arrays[f"{label}.{index}.output.{name}"] = value
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    Path(path).write_bytes(buffer.getvalue())


def _key(batch: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(batch).tobytes()).hexdigest()


class GoldenReference:
    """A stand-in for the PyTorch reference: the stored outputs of the stored inputs, looked up by content."""

    name = NAME

    def __init__(self, outputs: dict[str, dict[str, np.ndarray]]) -> None:
        self._outputs = outputs

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        try:
            return self._outputs[_key(batch)]
        except KeyError:
            raise ArtifactError("the golden file holds no outputs for this input: verify against it with its own "
                                "inputs") from None


def read_golden(manifest: Manifest, folder: Path, precision: str) -> tuple[list[InputSet], GoldenReference]:
    """The input sets (judged as the export gate judged them) and the reference, from ``STEM.golden.npz``."""
    record = manifest.golden
    if not record:
        raise ArtifactError(f"{manifest.stem}.json lists no golden outputs (exported before they existed): "
                            "re-export, or verify where PyTorch is installed")
    path = folder / record["file"]
    if not path.is_file():
        raise ArtifactError(f"golden outputs {path} not found: copy it beside the artifact")
    if sha256_file(path) != record["sha256"]:
        raise ArtifactError(f"{path.name} differs from what {manifest.stem}.json recorded: re-export it")
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    by_label: dict[str, list[np.ndarray]] = {}
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for key in sorted((k for k in arrays if k.endswith(".input")), key=lambda k: (k.split(".")[0], int(k.split(".")[1]))):
        label, index, _ = key.split(".")
        batch = arrays[key]
        by_label.setdefault(label, []).append(batch)
        prefix = f"{label}.{index}.output."
        outputs[_key(batch)] = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
    holdout = by_label.get("holdout")
    sets = default_sets(precision, by_label.get("random", []),
                        np.concatenate(holdout) if holdout else None, manifest.batch)
    return sets, GoldenReference(outputs)
