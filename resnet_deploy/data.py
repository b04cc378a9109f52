"""Inputs for checking and running models: seeded random images, .npy batches.

Random inputs are drawn as images (uniform in [0, 1] per pixel) and then
normalised with the model's mean/std, so they cover the range real
preprocessed images cover rather than a standard normal the model never sees.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import DeployError


def random_images(
    batch: int,
    shape: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    seed: int = 0,
) -> np.ndarray:
    """``batch`` normalised random images of ``shape`` (C, H, W), float32 NCHW."""
    rng = np.random.default_rng(seed)
    pixels = rng.random((batch, *shape), dtype=np.float32)
    mean_arr = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std_arr = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((pixels - mean_arr) / std_arr, dtype=np.float32)


def load_npy_batch(path: str | os.PathLike[str], shape: Sequence[int]) -> np.ndarray:
    """A preprocessed NCHW float32 batch from a .npy file, checked against (C, H, W)."""
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DeployError(f"cannot read {path} as a .npy array: {exc}") from None
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or tuple(array.shape[1:]) != tuple(shape):
        raise DeployError(f"{path} holds an array of shape {list(array.shape)}; expected [N, {', '.join(map(str, shape))}]")
    if not np.issubdtype(array.dtype, np.floating):
        raise DeployError(f"{path} holds {array.dtype} data; expected preprocessed float32 images")
    return np.ascontiguousarray(array, dtype=np.float32)
