"""Classify image files with an artifact: the one preprocessing path, then top-k softmax probabilities."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..backends.base import Runner
from ..data import ImagePreprocess, batched, imagenet_classes, list_images, load_images
from ..errors import DeployError, within
from ..fileio import regular_file

DEFAULT_TOPK = 5


def class_names(num_classes: int, labels_file: str | os.PathLike[str] | None = None) -> list[str] | None:
    """Names for the classifier's outputs: one per line of ``labels_file``, else ImageNet's for a
    1000-class head, else None (classes are shown by index)."""
    if labels_file is not None:
        try:
            text = regular_file(labels_file, "labels file").read_text()
            names = [line.strip() for line in text.splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DeployError(f"cannot read labels file {labels_file}: {exc}") from None
        if len(names) != num_classes:
            raise DeployError(f"{labels_file} has {len(names)} labels; the model has {num_classes} classes")
        return names
    return imagenet_classes() if num_classes == 1000 else None


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


@dataclass
class Prediction:
    image: str
    top: list[dict]  # [{"index", "label", "probability"}], most probable first

    def to_dict(self) -> dict:
        return asdict(self)


def expand_images(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Image files as given, with any folder replaced by the images in it."""
    files: list[Path] = []
    for path in map(Path, paths):
        files += list_images(path) if path.is_dir() else [path]
    return files


def predict(
    runner: Runner,
    images: Sequence[str | os.PathLike[str]],
    preprocess: ImagePreprocess,
    *,
    topk: int = DEFAULT_TOPK,
    names: list[str] | None = None,
) -> list[Prediction]:
    """Top-``topk`` classes of each image. Images are decoded in parallel and run in batches the
    artifact's profile allows (a short last batch is padded up to the profile's minimum)."""
    if "logits" not in runner.output_names:
        raise DeployError(f"predict needs a classifier; this artifact outputs {runner.output_names}")
    within("--topk", topk, 1, None)  # more than the classes shows them all
    files = expand_images(images)
    high = runner.batch_range[1] if runner.batch_range else 32
    results: list[Prediction] = []
    for chunk in batched(files, min(high, 32)):
        probabilities = softmax(runner.run_padded(load_images(chunk, preprocess))["logits"])
        k = min(topk, probabilities.shape[1])
        for path, row in zip(chunk, probabilities):
            order = np.argsort(-row, kind="stable")[:k]
            results.append(Prediction(str(path), [
                {"index": int(i), "label": names[i] if names else f"class {i}", "probability": float(row[i])}
                for i in order
            ]))
    return results
