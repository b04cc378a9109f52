"""Write N distinct real-size JPEG photographs for batch benchmarks and tests, offline.

The two photographs scikit-learn ships (china.jpg, flower.jpg, 640x427) are cropped at seeded positions and
sizes (at least 400x300), some flipped or mirrored, and saved as JPEG at quality 90: every file differs, is
a real photograph's content, and is about the size catalogue images are (a 500x380 JPEG decodes and
preprocesses in about 4 ms of one core).

    python tools/make_photos.py OUT_DIR [--count 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def photographs() -> list[Image.Image]:
    """scikit-learn's sample photographs, as RGB images."""
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(array) for array in load_sample_images().images]


def write_photos(folder: Path, count: int, *, seed: int = 0) -> list[Path]:
    """``count`` distinct JPEGs in ``folder`` (``photo_00000.jpg``...).

    Args:
        folder: created if missing.
        count: how many.
        seed: the crops' and flips' seed.

    Returns:
        The files, in name order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    sources, rng, paths = photographs(), np.random.default_rng(seed), []
    for index in range(count):
        image = sources[index % len(sources)]
        width, height = int(rng.integers(400, image.width + 1)), int(rng.integers(300, image.height + 1))
        left, top = int(rng.integers(0, image.width - width + 1)), int(rng.integers(0, image.height - height + 1))
        crop = image.crop((left, top, left + width, top + height))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < 0.25:
            crop = crop.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        path = folder / f"photo_{index:05d}.jpg"
        crop.save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = write_photos(args.out, args.count, seed=args.seed)
    print(f"{len(paths)} JPEGs in {args.out}")


if __name__ == "__main__":
    main()
