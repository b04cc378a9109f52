"""Inputs for checking and running models: images, seeded random images, .npy batches.

Random inputs are drawn as images (uniform in [0, 1] per pixel) and then
normalised with the model's mean/std, so they cover the range real
preprocessed images cover rather than a standard normal the model never sees.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from .errors import DeployError, first_line

T = TypeVar("T")


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


def batched(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` cut into consecutive pieces of ``size`` (the last may be shorter)."""
    return [items[start: start + size] for start in range(0, len(items), size)]


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


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")


@dataclass(frozen=True)
class ImagePreprocess:
    """The one path from an image file to the model's input, shared by verify,
    calibration and predict: decode, convert to RGB, resize the shorter side to
    ``resize``, centre-crop ``crop`` (H, W), scale to [0, 1], normalise."""

    resize: int
    crop: tuple[int, int]
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_manifest(cls, preprocess: dict[str, Any]) -> ImagePreprocess:
        return cls(
            resize=int(preprocess["resize"]),
            crop=(int(preprocess["crop"][0]), int(preprocess["crop"][1])),
            interpolation=preprocess.get("interpolation", "bilinear"),
            mean=tuple(preprocess["mean"]),
            std=tuple(preprocess["std"]),
        )

    def __call__(self, image: Image.Image) -> np.ndarray:
        """(3, H, W) float32 for one RGB image."""
        width, height = image.size
        scale = self.resize / min(width, height)
        size = (max(self.crop[1], round(width * scale)), max(self.crop[0], round(height * scale)))
        resample = Image.Resampling.BICUBIC if self.interpolation == "bicubic" else Image.Resampling.BILINEAR
        image = image.resize(size, resample)
        left = (size[0] - self.crop[1]) // 2
        top = (size[1] - self.crop[0]) // 2
        image = image.crop((left, top, left + self.crop[1], top + self.crop[0]))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        normalised = (pixels - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(normalised.transpose(2, 0, 1))


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file as RGB (greyscale, palette, CMYK and alpha images are converted)."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise DeployError(f"image {path} does not exist") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DeployError(f"cannot read {path} as an image: {first_line(exc)}") from None


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DeployError(f"{folder} is not a folder of images")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DeployError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def labelled_images(root: str | os.PathLike[str]) -> tuple[list[Path], np.ndarray, list[str]]:
    """An ImageFolder-style data set: one sub-folder per class, classes indexed in sorted name order."""
    root = Path(root)
    if not root.is_dir():
        raise DeployError(f"{root} is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DeployError(f"{root} has no class folders: expected one sub-folder of images per class")
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        images = [p for p in sorted((root / name).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        paths += images
        labels += [index] * len(images)
    if not paths:
        raise DeployError(f"{root} holds no images in its class folders")
    return paths, np.asarray(labels, dtype=np.int64), classes


def load_images(paths: Sequence[Path], preprocess: ImagePreprocess, *, workers: int | None = None) -> np.ndarray:
    """Decode and preprocess ``paths`` in parallel threads (Pillow releases the GIL); (N, 3, H, W) float32."""
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) + 2)) as pool:
        arrays = list(pool.map(lambda p: preprocess(load_image(p)), paths))
    return np.stack(arrays).astype(np.float32, copy=False)
