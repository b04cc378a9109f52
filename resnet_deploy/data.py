"""Inputs for checking and running models: images, seeded random images, .npy batches,
and calibration data with its held-out part.

Random inputs are drawn as images (uniform in [0, 1] per pixel) and then
normalised with the model's mean/std, so they cover the range real
preprocessed images cover rather than a standard normal the model never sees.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from .errors import DeployError, DeployWarning, first_line
from .fileio import regular_file, sha256_file, special_file
from .imageprep import (IMAGE_SUFFIXES, UNREADABLE_IMAGE, ImagePreprocess, UnreadableImage, UnsupportedPixels, open_image,
                        read_rgb)
from .imageprep import random_images as random_images  # the public name here too: defined once, in imageprep

T = TypeVar("T")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
INTERPOLATIONS = ("bilinear", "bicubic")
# Named normalisations users train with (export --preprocess NAME); an arch's own is the default.
PREPROCESS_PRESETS = {
    "imagenet": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    "cifar": {"mean": CIFAR_MEAN, "std": CIFAR_STD},
    # Inception-style (x - 0.5) / 0.5: pixels mapped to [-1, 1]
    "inception": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
    "unit": {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)},  # pixels in [0, 1], no normalisation
}


def batched(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` cut into consecutive pieces of ``size`` (the last may be shorter)."""
    return [items[start: start + size] for start in range(0, len(items), size)]


def load_npy_batch(path: str | os.PathLike[str], shape: Sequence[int], *, pixels: bool = False) -> np.ndarray:
    """A preprocessed NCHW float32 batch from a .npy file, checked against (C, H, W); with ``pixels``,
    an NHWC uint8 batch of resized pixels (an artifact with its preprocessing embedded), against (H, W, 3)."""
    path = regular_file(path, "array file")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # EOFError: an empty file
        raise DeployError(f"cannot read {path} as a .npy array: {first_line(exc)}") from None
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or tuple(array.shape[1:]) != tuple(shape):
        raise DeployError(f"{path} holds an array of shape {list(array.shape)}; expected [N, {', '.join(map(str, shape))}]")
    if pixels != (array.dtype == np.uint8) or not (pixels or np.issubdtype(array.dtype, np.floating)):
        want = "uint8 pixels (the artifact embeds its preprocessing)" if pixels else "preprocessed float32 images"
        raise DeployError(f"{path} holds {array.dtype} data; expected {want}")
    if len(array) == 0:
        raise DeployError(f"{path} holds no images (shape {list(array.shape)})")
    if pixels:
        return np.ascontiguousarray(array)
    array = np.ascontiguousarray(array, dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:  # NaN ranges, scales and outputs downstream, and a message that blames something else
        raise DeployError(f"{path} holds {bad} NaN or infinite values; preprocessed images are finite numbers")
    return array


IMAGENET_CLASSES_FILE = "imagenet_classes.txt"  # shipped in the package, ILSVRC-2012 class index order


def imagenet_classes() -> list[str]:
    """ImageNet-1k's class names in index order: the labels of a 1000-class classifier."""
    return resources.files(__package__).joinpath(IMAGENET_CLASSES_FILE).read_text().splitlines()


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Decode an image file as 8-bit RGB: greyscale, palette, CMYK and alpha images are converted, and
    images of more than 8 bits are scaled to 8 (16-bit greyscale by 65535, float images from [0, 1]),
    not clipped, which made them white or black."""
    path = regular_file(path, "image")
    try:
        return read_rgb(path)
    except UnsupportedPixels as exc:
        raise DeployError(f"{path} {exc}") from None
    except UnreadableImage as exc:
        raise DeployError(f"cannot read {path} as an image: {first_line(exc)}") from None


LARGE_IMAGE_PIXELS = 4096 * 4096  # decoded one at a time: a 12000x12000 PNG is 430 MB as RGB alone
_large_image = threading.Lock()


def load_preprocessed(path: str | os.PathLike[str], preprocess: ImagePreprocess) -> np.ndarray:
    """One image decoded and preprocessed; a large one only while no other large one is (parallel
    decodes of large images multiplied the memory peak)."""
    path = regular_file(path, "image")
    try:
        with open_image(path) as header:  # reads the size, not the pixels
            large = header.width * header.height > LARGE_IMAGE_PIXELS
    except UNREADABLE_IMAGE as exc:
        raise DeployError(f"cannot read {path} as an image: {first_line(exc)}") from None
    with _large_image if large else contextlib.nullcontext():
        return preprocess(load_image(path))


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DeployError(f"{folder} is not a folder of images")
    images = sorted(filter(is_image_file, folder.iterdir()))
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
        images = sorted(filter(is_image_file, (root / name).iterdir()))
        paths += images
        labels += [index] * len(images)
    if not paths:
        raise DeployError(f"{root} holds no images in its class folders")
    return paths, np.asarray(labels, dtype=np.int64), classes


def load_images(paths: Sequence[Path], preprocess: ImagePreprocess, *, workers: int | None = None) -> np.ndarray:
    """Decode and preprocess ``paths`` in parallel threads (Pillow releases the GIL): (N, 3, H, W) float32,
    or (N, H, W, 3) uint8 pixels for an artifact with its preprocessing embedded."""
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) + 2)) as pool:
        arrays = list(pool.map(lambda p: load_preprocessed(p, preprocess), paths))
    return np.stack(arrays)


CALIBRATION_BATCH = 16
# Part of real calibration data kept out of range estimation, on which the gate judges reduced precisions:
# a fifth of what is given, at most 64 images, none when fewer than 5 are given.
HOLDOUT_FRACTION = 5
HOLDOUT_MAX = 64


@dataclass
class Calibration:
    """Where calibration images come from, a key that changes when they do, and a held-out part."""

    source: str  # a folder, a .npy file, or "random"
    seed: int  # of the hold-out split and of random images
    images: int
    key: str
    batches: Callable[[], Iterator[np.ndarray]]  # lazily decoded, so a cache hit reads nothing
    holdout: Callable[[], np.ndarray] | None = None  # images never used for ranges, for the gate
    holdout_images: int = 0

    def to_record(self) -> dict[str, Any]:
        return {"source": self.source, "images": self.images, "holdout": self.holdout_images, "seed": self.seed}


def _split(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (calibration, hold-out) index sets of ``count`` items: the hold-out first, then up to ``size``."""
    holdout = min(HOLDOUT_MAX, count // HOLDOUT_FRACTION)
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[holdout: holdout + size]), np.sort(order[:holdout])


def check_normalisation(array: np.ndarray, preprocess: ImagePreprocess, source: str) -> str | None:
    """Why ``array`` does not look like images normalised with ``preprocess``'s mean/std, or None.

    Undone with the declared statistics, real images are pixels spanning most
    of [0, 1]; data made with other statistics lands outside it, or in a narrow band.
    """
    mean = np.asarray(preprocess.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(preprocess.std, dtype=np.float32).reshape(1, -1, 1, 1)
    pixels = array * std + mean
    outside = float(np.mean((pixels < -0.05) | (pixels > 1.05)))
    low, high = float(pixels.min()), float(pixels.max())
    if outside <= 0.01 and high - low >= 0.75:
        return None
    return (f"{source} does not look normalised with mean {list(preprocess.mean)} and std {list(preprocess.std)}: "
            f"undone with them its values are pixels from {low:.2f} to {high:.2f} ({outside:.0%} outside [0, 1]); "
            "declare the normalisation it was made with (--mean/--std or --preprocess), or calibration, gate and "
            "verify will use inputs the model never sees")


def calibration_data(
    source: str | os.PathLike[str] | None,
    *,
    preprocess: ImagePreprocess,
    shape: tuple[int, int, int],
    size: int,
    seed: int,
) -> Calibration:
    """Calibration images from a folder (searched recursively), a preprocessed .npy batch, or ``"random"``.

    Real data loses a seeded hold-out (see :data:`HOLDOUT_FRACTION`) that the
    ranges never see; random data has none (the gate then judges on random images).
    """
    if source is None:
        raise DeployError(
            "--int8 needs --calib-data DIR|FILE.npy: activation ranges are measured on the data you give, and random "
            "pixels have none of the structure of real images, so their ranges (and the INT8 scales) are wrong for "
            "real inputs; pass --calib-data random to accept that on purpose"
        )
    if size < 1:
        raise DeployError("--calib-size must be at least 1")
    if str(source) == "random":
        def random_batches() -> Iterator[np.ndarray]:
            for start in range(0, size, CALIBRATION_BATCH):
                count = min(CALIBRATION_BATCH, size - start)
                yield preprocess.random_inputs(count, seed=seed + 1000 + start)

        return Calibration("random", seed, size, f"random:{seed}:{size}:{shape}", random_batches)
    path = Path(source)
    if path.is_file() and preprocess.embedded:
        raise DeployError(f"--calib-data {path}: an artifact with its preprocessing embedded calibrates on images "
                          "(a folder) or random pixels, not a preprocessed .npy")
    if path.is_file():
        return _npy_calibration(path, preprocess, shape, size, seed)
    if not path.is_dir():
        kind = special_file(path)
        raise DeployError(f"calibration data {path} " + (f"is {kind}: give a folder of images or a .npy file"
                                                         if kind else "does not exist"))
    found = sorted(filter(is_image_file, path.rglob("*")))
    if not found:
        raise DeployError(f"{path} holds no images for calibration")
    chosen, held = _split(len(found), size, seed)
    paths, holdout_paths = [found[i] for i in chosen], [found[i] for i in held]
    key = "dir:" + hashlib.sha256(
        "\n".join(f"{p.relative_to(path)}:{p.stat().st_size}" for p in paths).encode() + str(preprocess).encode()
    ).hexdigest()

    def image_batches() -> Iterator[np.ndarray]:
        for chunk in batched(paths, CALIBRATION_BATCH):
            yield load_images(chunk, preprocess)

    return Calibration(str(path), seed, len(paths), key, image_batches,
                       (lambda: load_images(holdout_paths, preprocess)) if holdout_paths else None, len(holdout_paths))


def _npy_calibration(path: Path, preprocess: ImagePreprocess, shape: Sequence[int], size: int,
                     seed: int) -> Calibration:
    """Calibration on a preprocessed .npy batch: ``size`` of its images, the rest held out."""
    array = load_npy_batch(path, shape)
    problem = check_normalisation(array, preprocess, path.name)
    if problem:
        warnings.warn(problem, DeployWarning, stacklevel=3)
    chosen, held = _split(len(array), size, seed)
    calibration, holdout = array[chosen], array[held]
    return Calibration(str(path), seed, len(calibration), f"npy:{sha256_file(path)}:{size}:{seed}",
                       lambda: iter(batched(calibration, CALIBRATION_BATCH)),
                       (lambda: holdout) if len(holdout) else None, len(holdout))
