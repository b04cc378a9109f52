"""Golden outputs: PyTorch's float32 outputs on the export's check inputs, stored beside the
artifacts as ``STEM.golden.npz`` (hashed in the manifest), so that an artifact can be verified
on a target that has ONNX Runtime or TensorRT but no PyTorch (``verify --reference golden``).

They are the reference's :class:`~resnet_deploy.parity.results.RunResults` on the gate's input
sets (seeded random images, and the calibration hold-out where the export had real
calibration data), saved: verify loads them and adds its runners' outputs on the same inputs.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..artifacts import Manifest
from ..errors import ArtifactError
from ..fileio import recorded_problem
from .inputs import HOLDOUT, InputSet
from .results import RunResults

NAME = "golden"  # how rows name this reference
HOLDOUT_IMAGES = 16  # of the calibration hold-out kept: resnet50's 224 px inputs are 0.6 MB an image


def write_golden(path: str | os.PathLike[str], results: RunResults) -> None:
    """The reference's ``results``, the hold-out cut to its first :data:`HOLDOUT_IMAGES` images (its
    batches kept within the profile)."""
    kept = RunResults([], {name: [] for name in results.outputs}, results.runners)
    index = 0
    for inputs in results.sets:
        left = HOLDOUT_IMAGES if inputs.label == HOLDOUT else None
        batches = []
        for batch in inputs.batches:
            count = len(batch) if left is None else min(len(batch), left)
            if count:
                batches.append(batch[:count])
                for name, produced in results.outputs.items():
                    kept.outputs[name].append({key: value[:count] for key, value in produced[index].items()})
            left = None if left is None else left - count
            index += 1
        kept.sets.append(InputSet(inputs.label, batches))
    kept.save(path)


def read_golden(manifest: Manifest, folder: Path) -> RunResults:
    """The golden results of ``manifest``'s export, checked against the manifest's record."""
    record = manifest.golden
    if not record:
        raise ArtifactError(f"{manifest.stem}.json lists no golden outputs (exported before they existed): "
                            "re-export, or verify where PyTorch is installed")
    path = folder / record["file"]
    problem = recorded_problem(path, record["sha256"])
    if problem is not None:
        raise ArtifactError(f"the golden outputs {path} {problem}: copy the ones {manifest.stem}.json records beside "
                            "the artifact, or re-export")
    results = RunResults.load(path)
    if len(results.outputs) != 1:
        raise ArtifactError(f"{path.name} holds {len(results.outputs)} runners' outputs, not the reference's alone")
    return results
