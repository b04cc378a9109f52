"""What a parity check runs on, and which of it judges the artifact.

Seeded random images exercise every artifact the same way, but they lie
outside the ranges real calibration data gives INT8 (and sometimes outside
what the weights were trained on). Where a calibration hold-out exists (real
calibration data, a seeded part never used for ranges), reduced precisions
are judged on it and the random images are reported beside it; fp32 computes
the same function on any input, so it is judged on both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..artifacts import BatchProfile, Manifest
from ..data import ImagePreprocess, batched, calibration_data
from ..errors import DeployError


RANDOM, HOLDOUT = "random", "holdout"  # the labels of the export's own input sets


@dataclass
class InputSet:
    label: str  # RANDOM, HOLDOUT, "npy", "images", "labelled images"
    batches: list[np.ndarray]


def default_sets(random: list[np.ndarray], holdout: np.ndarray | None, profile: BatchProfile) -> list[InputSet]:
    """The calibration hold-out, where there is one, then the seeded random images (which of them judge an
    artifact is its precision's rule: :meth:`resnet_deploy.parity.tolerances.Policy.judges`)."""
    if holdout is None or not len(holdout):
        return [InputSet(RANDOM, random)]
    return [InputSet(HOLDOUT, list(batched(holdout, profile.max))), InputSet(RANDOM, random)]


def sets_summary(sets: list[InputSet], judges: Callable[[str], bool] = lambda _label: True) -> str:
    """"16 holdout images, 9 random images (reported)": for progress lines and reports."""
    return ", ".join(f"{sum(map(len, s.batches))} {s.label} images" + ("" if judges(s.label) else " (reported)")
                     for s in sets)


def random_batches(sizes: list[int], preprocess: ImagePreprocess, seed: int) -> list[np.ndarray]:
    """One seeded batch of random images per size, as the model takes them (seeds ``seed``, ``seed + 1``...)."""
    return [preprocess.random_inputs(size, seed=seed + i) for i, size in enumerate(sizes)]


def calibration_holdout(manifest: Manifest) -> tuple[np.ndarray | None, str | None]:
    """The calibration hold-out an export judged on, rebuilt from the manifest (same source, same seeded
    split), and a note when it cannot be: the data is not on this machine or has changed."""
    record = manifest.calibration
    if not record.get("holdout"):
        return None, None
    shape = manifest.example_shape
    try:
        calibration = calibration_data(record["source"], preprocess=ImagePreprocess.from_manifest(manifest.preprocess),
                                       shape=shape, size=record["images"], seed=record.get("seed", 0))
    except DeployError as exc:  # the source is gone, or no longer holds images of the recorded shape
        return None, f"calibration hold-out not used ({exc}): judged on random images"
    if calibration.holdout_images != record["holdout"] or calibration.holdout is None:
        return None, f"calibration data {record['source']} has changed since export: judged on random images"
    return calibration.holdout(), None
