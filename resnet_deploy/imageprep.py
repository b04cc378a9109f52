"""From a decoded image to the model's input: the one definition of the toolkit's preprocessing.

Self-contained on purpose (numpy and Pillow, nothing of resnet_deploy): `predict`, `verify` and
calibration use it through :mod:`resnet_deploy.data`, and `triton --ensemble` copies this file
verbatim into the preprocessing model it writes, since a Triton server's Python has no resnet_deploy.
So the server computes the same numbers as `predict`, by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image


def random_images(batch: int, shape: tuple[int, ...], mean: tuple[float, ...], std: tuple[float, ...], *,
                  seed: int = 0) -> np.ndarray:
    """``batch`` seeded random images of ``shape`` (C, H, W), float32 NCHW: pixels uniform in [0, 1], then
    normalised with ``mean``/``std``, so they cover the range real preprocessed images cover."""
    pixels = np.random.default_rng(seed).random((batch, *shape), dtype=np.float32)
    mean_arr = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std_arr = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((pixels - mean_arr) / std_arr, dtype=np.float32)


# The encoded formats decoded (Pillow's names; its JPEG decoder also opens the multi-picture JPEGs cameras
# write): the files of IMAGE_SUFFIXES. Pillow knows many more (EPS hands the bytes to Ghostscript), none of
# them for photographs.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "PPM", "GIF")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")


# What Pillow raises, while opening and decoding, for bytes that are not a readable image: OSError and ValueError
# mostly, but a damaged PNG chunk raises SyntaxError, a truncated header EOFError or struct.error, an oversized
# image its bomb error, and its plugins more. Caught around Pillow's calls only: one unreadable file is that
# file's error (a row of a batch job), never the end of the job.
UNREADABLE_IMAGE = (Exception,)


class UnreadableImage(ValueError):
    """Bytes Pillow cannot decode as an image; the message is Pillow's (or its exception's type name)."""


def open_image(source: Any) -> Image.Image:
    """``Image.open`` for the formats of :data:`IMAGE_FORMATS` only (a path or a binary file object): any
    other format is refused as not an image, before a decoder of it runs."""
    return Image.open(source, formats=IMAGE_FORMATS)


class UnsupportedPixels(ValueError):
    """Pixels whose brightness has no standard meaning (32-bit integers, floats outside [0, 1])."""


def read_rgb(source: Any) -> Image.Image:
    """A path or binary file object decoded as 8-bit RGB (:func:`open_image`, then :func:`to_rgb`): the one
    decode of ``predict``, ``batch`` and the Triton ensemble.

    Raises:
        UnsupportedPixels: pixels whose brightness has no standard meaning.
        UnreadableImage: anything else Pillow raised while opening or decoding it.
    """
    try:
        with open_image(source) as image:
            image.load()
            return to_rgb(image)
    except UnsupportedPixels:
        raise
    except UNREADABLE_IMAGE as exc:
        raise UnreadableImage(str(exc) or type(exc).__name__) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: greyscale, palette, CMYK and alpha images are converted, and images of more than 8 bits
    are scaled to 8 (16-bit greyscale by 65535, float images from [0, 1]), not clipped, which made them
    white or black."""
    if image.mode.startswith("I;16") or image.mode == "I" and image.format == "PNG":  # 16-bit greyscale
        pixels = np.asarray(image, dtype=np.float64) / 65535.0
    elif image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
            raise UnsupportedPixels(f"is a float image with values outside [0, 1] ({np.nanmin(pixels):.3g} to "
                                    f"{np.nanmax(pixels):.3g}): its brightness has no standard meaning; save it as "
                                    "an 8- or 16-bit image")
    elif image.mode in ("I", "I;32"):
        raise UnsupportedPixels("holds 32-bit integer pixels, whose range has no standard meaning: save it as an "
                                "8- or 16-bit image")
    else:
        return image.convert("RGB")
    grey = Image.fromarray(np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8), mode="L")
    return grey.convert("RGB")


@dataclass(frozen=True)
class ImagePreprocess:
    """The one path from an RGB image to the model's input, shared by verify, calibration, predict and
    the Triton ensemble: resize the shorter side to ``resize``, centre-crop ``crop`` (H, W), scale to
    [0, 1], normalise with ``mean``/``std``, channels first. ``embedded``: the artifact does the scaling,
    normalising and transposing itself (`export --embed-preprocess`), so its input is the resized and
    cropped uint8 pixels, (H, W, 3)."""

    resize: int
    crop: tuple[int, int]
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embedded: bool = False

    @classmethod
    def from_manifest(cls, preprocess: Any) -> ImagePreprocess:
        """From the manifest's ``preprocess``: its record, or the JSON object it is written as."""
        return cls(
            resize=int(preprocess["resize"]),
            crop=(int(preprocess["crop"][0]), int(preprocess["crop"][1])),
            interpolation=preprocess.get("interpolation", "bilinear"),
            mean=tuple(preprocess["mean"]),
            std=tuple(preprocess["std"]),
            embedded=bool(preprocess.get("embedded", False)),
        )

    def __call__(self, image: Image.Image) -> np.ndarray:
        """The model's input for one RGB image: (3, H, W) float32, or (H, W, 3) uint8 when embedded."""
        pixels = self.resized(image)
        return pixels if self.embedded else self.normalise(pixels)

    def random_inputs(self, count: int, *, seed: int = 0) -> np.ndarray:
        """``count`` seeded random images as the model takes them: pixels uniform in [0, 1], normalised
        ((N, 3, H, W) float32), or uniform uint8 pixels (N, H, W, 3) when embedded."""
        if self.embedded:
            return np.random.default_rng(seed).integers(0, 256, (count, *self.crop, 3), dtype=np.uint8)
        return random_images(count, (len(self.mean), *self.crop), self.mean, self.std, seed=seed)

    def resized(self, image: Image.Image) -> np.ndarray:
        """(H, W, 3) uint8: the image resized and centre-cropped, before scaling (what an artifact with
        its preprocessing embedded takes). Only the crop's window is resampled (the source region under it),
        which gives the pixels of resizing the whole image and cropping, at a cost bounded by the crop: a
        1 x 20000 image would otherwise be resized to 224 x 4.5 million."""
        width, height = image.size
        scale = self.resize / min(width, height)
        size = (max(self.crop[1], round(width * scale)), max(self.crop[0], round(height * scale)))
        resample = Image.Resampling.BICUBIC if self.interpolation == "bicubic" else Image.Resampling.BILINEAR
        left = (size[0] - self.crop[1]) // 2
        top = (size[1] - self.crop[0]) // 2
        sx, sy = width / size[0], height / size[1]  # source pixels per resized pixel, along each axis
        box = (left * sx, top * sy, (left + self.crop[1]) * sx, (top + self.crop[0]) * sy)
        window = image.resize((self.crop[1], self.crop[0]), resample, box=box, reducing_gap=None)
        return np.asarray(window, dtype=np.uint8)

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """(3, H, W) float32 from (H, W, 3) uint8 pixels."""
        scaled = pixels.astype(np.float32) / 255.0
        normalised = (scaled - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(normalised.transpose(2, 0, 1))
