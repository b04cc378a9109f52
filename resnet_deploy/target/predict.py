"""Classify image files with an artifact: the one preprocessing path, then top-k softmax probabilities."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import LARGEST_RUN_BATCH, LOGITS
from ..backends.base import Runner
from ..data import ImagePreprocess, imagenet_classes, list_images, load_preprocessed
from ..errors import DeployError, within
from ..fileio import regular_file
from ..render import table
from .pipeline import LanePlan, lane_plan, run_pipelined
from .runtime import load

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


def top_classes(logits: np.ndarray, topk: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``topk`` most probable classes of each image's logits ((N, classes) -> (N, k) each), most probable
    first (ties: lower index first), and their softmax probabilities.

    Ordered by the logits (the softmax keeps their order) with a partial sort, and only the k probabilities
    computed in float64 over a float32 normaliser: a batch job's driver does this for every image."""
    logits = logits.reshape(len(logits), -1)
    k = min(topk, logits.shape[1])
    order = np.argpartition(-logits, k - 1, axis=1)[:, :k]  # the k largest, unordered
    picked = np.take_along_axis(logits, order, axis=1)
    order = np.take_along_axis(order, np.lexsort((order, -picked), axis=-1), axis=1)
    tied = (logits >= picked.min(axis=1, keepdims=True)).sum(axis=1) > k  # the k-th value shared further
    if tied.any():  # which of the tied the partition kept is arbitrary: the lower indices, as a stable sort
        order[tied] = np.argsort(-logits[tied], axis=1, kind="stable")[:, :k]
    top = logits.max(axis=1, keepdims=True)
    total = np.exp(logits - top).sum(axis=1, keepdims=True, dtype=np.float64)
    return order, np.exp(np.take_along_axis(logits, order, axis=1).astype(np.float64) - top) / total


def prediction_batch(runner: Runner, count: int, lanes: int) -> int:
    """Images per call for ``count`` images over ``lanes``: enough for every lane, within the profile."""
    low, high = runner.batch_range or (1, LARGEST_RUN_BATCH)
    return max(low, min(high, LARGEST_RUN_BATCH, -(-count // lanes)))


def predict(
    runner: Runner,
    images: Sequence[str | os.PathLike[str]],
    preprocess: ImagePreprocess,
    *,
    topk: int = DEFAULT_TOPK,
    names: list[str] | None = None,
    plan: LanePlan | None = None,
) -> list[Prediction]:
    """Top-``topk`` classes of each image: decoding overlapped with inference (:mod:`.pipeline`), in batches
    the artifact's profile allows (a short last batch is padded up to the profile's minimum).

    Raises:
        DeployError: an artifact that is not a classifier, a file that is not an image.
    """
    if LOGITS not in runner.output_names:
        raise DeployError(f"predict needs a classifier; this artifact outputs {runner.output_names}")
    within("--topk", topk, 1, None)  # more than the classes shows them all
    files = [str(path) for path in expand_images(images)]
    plan = plan or lane_plan(runner.device, threads=getattr(runner, "threads", None))
    results: list[Prediction] = []
    chunks = run_pipelined(runner, enumerate(files), lambda path: load_preprocessed(path, preprocess), plan=plan,
                           batch_size=prediction_batch(runner, len(files), plan.lanes))
    with contextlib.closing(chunks):  # on an error, the lanes stop before the caller closes the runner
        for item in itertools.chain.from_iterable(chunks):
            if item.error is not None:
                raise DeployError(item.error)
            [order], [probabilities] = top_classes(item.outputs[LOGITS][None], topk)
            results.append(Prediction(item.source, [
                {"index": int(i), "label": names[i] if names else f"class {i}", "probability": float(p)}
                for i, p in zip(order, probabilities)
            ]))
    return results


@dataclass
class Predictions:
    """What ``predict`` answered: the file, backend and precision that ran, how ``auto`` chose them, and the
    top classes of each image."""

    artifact: str | None
    backend: str
    precision: str
    selection: str | None
    predictions: list[Prediction]

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "backend": self.backend, "precision": self.precision,
                "selection": self.selection, "predictions": [p.to_dict() for p in self.predictions]}

    def to_text(self) -> str:
        rows = [[p.image if rank == 0 else "", rank + 1, c["label"], f"{c['probability']:.4f}"]
                for p in self.predictions for rank, c in enumerate(p.top)]
        return table(rows, ["image", "rank", "class", "probability"], right={1, 3})


def classify(artifact: str | os.PathLike[str], images: Sequence[str | os.PathLike[str]], *, topk: int = DEFAULT_TOPK,
             labels: str | os.PathLike[str] | None = None, backend: str = "auto", device: str | None = None,
             threads: int | None = None, announce: Callable[[str], None] | None = None) -> Predictions:
    """Load ``artifact`` and classify ``images`` with it: what ``resnet-deploy predict`` does.

    Args:
        artifact: an artifact file (its manifest beside it).
        images: image files or folders of them.
        topk: classes per image.
        labels: class names, one per line (default: ImageNet's for a 1000-class head).
        backend, device: as :func:`resnet_deploy.target.runtime.load` takes them.
        threads: CPU threads per lane (default 1, a lane per core: :func:`.pipeline.lane_plan`).
        announce: called with how ``auto`` chose the configuration.

    Returns:
        The :class:`Predictions`.

    Raises:
        DeployError: an artifact that is not a classifier, a file that is not an image, a bad labels file.
    """
    wanted = lane_plan(device or "cpu", threads=threads)
    with load(artifact, backend=backend, device=device, threads=wanted.threads, lanes=wanted.lanes) as runner:
        if runner.selection and announce:
            announce(runner.selection)
        manifest = runner.manifest
        found = predict(runner, images, ImagePreprocess.from_manifest(manifest.preprocess), topk=topk,
                        names=class_names(manifest.num_classes, labels),
                        plan=lane_plan(runner.device, threads=wanted.threads))
    return Predictions(runner.artifact, runner.name, runner.precision, runner.selection, found)
