"""`verify`: run every backend that can run here on the same inputs and compare
each with the float32 PyTorch reference rebuilt from the manifest, or, where
PyTorch is not installed, with the golden outputs stored at export.

PyTorch is imported only for the ``torch`` reference, so a target with ONNX
Runtime or TensorRT alone verifies against the golden file."""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..artifacts import Manifest, artifact_filename, open_artifact, split_artifact_name
from ..backends import detect
from ..backends.registry import FORMAT_WORDS, artifact_format, open_runner, variants
from ..data import ImagePreprocess, batched, labelled_images, list_images, load_images, load_npy_batch
from ..errors import MAX_SEED, ArtifactError, DeployError, DeployWarning, within
from ..fileio import atomic_open
from ..precisions import ENGINE, ENGINE_SUFFIX
from .compare import REFERENCE, Check, ResultRow, run_checks
from .golden import NAME as GOLDEN
from .golden import read_golden
from .inputs import InputSet, calibration_holdout, default_sets, describe_sets, random_batches
from .int8 import int8_checks
from .tolerances import Tolerance, tolerance_for

REFERENCE_VARIANT = "torch-cpu"  # the reference itself: every other runner is compared with it


@dataclass
class Report:
    artifact: str
    precision: str
    arch: str
    reference: str
    inputs: dict[str, Any]
    tolerance: dict[str, Any]
    rows: list[ResultRow] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    layerwise: Any = None  # a layerwise.LayerwiseReport with --layerwise
    file_changed: str | None = None  # why the artifact's bytes are not the ones the manifest recorded
    strict: bool = False  # a changed file fails by itself
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)  # backend -> top1/top5, with --data
    notes: list[str] = field(default_factory=list)  # criteria set aside, and why

    @property
    def passed(self) -> bool:
        """True when at least one judged row exists and every judged row passed (rows of runtimes
        that are not the artifact's target are reported, not judged)."""
        judged = [row for row in self.rows if row.judged]
        return bool(judged) and all(row.passed for row in judged) and not (self.strict and self.file_changed)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data

    def write(self, path: str | os.PathLike[str]) -> None:
        with atomic_open(path, "w") as handle:
            json.dump(self.to_dict(), handle, indent=2, default=float)
            handle.write("\n")


@dataclass
class VerifyInputs:
    sets: list[InputSet]
    description: dict[str, Any]
    labels: np.ndarray | None = None  # with --data: one class index per image of the one set
    note: str | None = None  # why the calibration hold-out was not used

    @property
    def batches(self) -> list[np.ndarray]:
        return [batch for inputs in self.sets for batch in inputs.batches]


def _inputs(
    manifest: Manifest,
    precision: str,
    *,
    batch_sizes: list[int] | None,
    seed: int,
    npy: str | None,
    images: str | None,
    data: str | None,
) -> VerifyInputs:
    """The user's inputs (judged), or else seeded random images and, where the export had real
    calibration data, its hold-out (see :mod:`resnet_deploy.parity.inputs`)."""
    if sum(x is not None for x in (npy, images, data)) > 1:
        raise DeployError("give at most one of --inputs, --images and --data")
    shape = manifest.input.shape[1:]
    if any(isinstance(d, str) for d in shape):  # dynamic H/W: check at the export size
        shape = [3, *manifest.preprocess["crop"]]
    profile = manifest.batch
    preprocess = ImagePreprocess.from_manifest(manifest.preprocess)
    if npy is not None:
        array = load_npy_batch(npy, shape)
        return VerifyInputs([InputSet("npy", batched(array, profile.max), True)],
                            {"kind": "npy", "file": str(npy), "images": len(array)})
    if images is not None or data is not None:
        if data is not None:
            paths, labels, classes = labelled_images(data)
            if manifest.num_classes and len(classes) > manifest.num_classes:
                raise DeployError(
                    f"{data} has {len(classes)} class folders but the model predicts {manifest.num_classes} classes"
                )
            description = {"kind": "labelled images", "folder": str(data), "images": len(paths), "classes": len(classes)}
        else:
            paths, labels = list_images(images), None
            description = {"kind": "images", "folder": str(images), "images": len(paths)}
        return VerifyInputs([InputSet(description["kind"], batched(load_images(paths, preprocess), profile.max), True)],
                            description, labels)
    sizes = batch_sizes or sorted({profile.min, profile.opt})
    outside = [b for b in sizes if not profile.min <= b <= profile.max]
    if outside:
        raise DeployError(f"batch sizes {outside} are outside the artifact's profile {profile}")
    holdout, note = calibration_holdout(manifest)
    sets = default_sets(precision, random_batches(sizes, tuple(shape), preprocess, seed), holdout, profile)
    description = {"kind": describe_sets(sets), "seed": seed, "batch_sizes": sizes,
                   "range": "normalised uniform [0, 1] images"}
    if holdout is not None:
        description["holdout"] = manifest.precision_options["int8"]["calibration"]["source"]
    return VerifyInputs(sets, description, note=note)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 and top-5 accuracy of (N, classes) scores against class indices."""
    k = min(5, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return {"top1": float((top[:, 0] == labels).mean()), "top5": float((top == labels[:, None]).any(axis=1).mean())}


def _checks(artifact: Path, manifest: Manifest, file_precision: str, tol: Tolerance, *, with_torch: bool,
            notes: list[str]) -> tuple[list[Check], list[dict[str, str]]]:
    """A check of every backend variant in the registry that runs ``artifact`` here, and why each
    other one does not (the PyTorch reference on the CPU excepted: everything is compared with it).
    An INT8 ONNX is judged on the graph as written, CPU kernels against it (see :mod:`.int8`)."""
    kind = artifact_format(file_precision)
    checks: list[Check] = []
    kernels: list[tuple[Any, bool]] = []  # runners of optimised x86 INT8 kernels, and whether they run it as written
    skipped: list[dict[str, str]] = []
    for backend, variant in variants():
        if variant.name == REFERENCE_VARIANT:
            continue
        state = variant.availability()
        if not backend.takes(kind):
            reason = state.reason or f"it runs {FORMAT_WORDS[backend.runs]}: verify that file instead"
        elif backend.runs == "model" and not with_torch:
            reason = "--reference golden: the PyTorch model is not rebuilt"
        else:
            reason = state.reason
        if reason:
            skipped.append({"backend": variant.name, "reason": reason})
            continue
        with warnings.catch_warnings():  # the INT8 kernels' problem is the report's note, not a warning
            warnings.simplefilter("ignore", DeployWarning)
            runner = open_runner(artifact, manifest, file_precision, backend.name,
                                 replace(variant.options, graph_cache=False))  # a changed file must not meet a cache
        if file_precision == "int8" and variant.cpu_int8_kernels:
            kernels.append((runner, variant.int8_as_written))
        else:
            checks.append(Check(runner, tol))
    if kernels:
        int8, int8_notes = int8_checks(artifact, manifest.precision_options.get("int8", {}), tol, kernels)
        checks = int8 + checks
        notes += int8_notes
    return checks, skipped


REFERENCES = ("auto", "torch", "golden")
# Tolerance field -> (its verify option, lowest, highest)
OVERRIDABLE = {"max_rel_to_scale": ("--max-error", 0.0, None), "min_cosine": ("--min-cosine", -1.0, 1.0),
               "min_top1": ("--min-top1", 0.0, 1.0)}


def verify(
    artifact: str | os.PathLike[str],
    *,
    batch_sizes: list[int] | None = None,
    seed: int = 0,
    inputs: str | None = None,
    images: str | None = None,
    data: str | None = None,
    tolerance_overrides: dict[str, float] | None = None,
    layerwise: bool = False,
    reference: str = "auto",
    strict: bool = False,
) -> Report:
    """Compare every backend that can run ``artifact`` here with the reference.

    The artifact is compared whatever its bytes: a file changed since export
    (by the user's own graph pass, or corrupted) is reported in ``file_changed``,
    and with ``strict`` that alone fails. ``reference``: ``torch`` rebuilds the
    float32 PyTorch model from the manifest; ``golden`` reads ``STEM.golden.npz``
    (its own inputs; no PyTorch needed); ``auto`` is torch where it is installed.
    ``tolerance_overrides`` replaces fields of the precision's default
    :class:`~resnet_deploy.parity.tolerances.Tolerance`. ``inputs`` is a
    preprocessed .npy batch, ``images`` a folder of images, ``data`` a folder of
    class folders (adds top-1/top-5 accuracy per backend). Raises
    :class:`DeployError` when nothing can run; a parity failure is a report
    with ``passed == False``.
    """
    artifact = Path(artifact)
    within("--seed", seed, 0, MAX_SEED)
    if reference not in REFERENCES:
        raise DeployError(f"unknown --reference {reference!r}: choose from {', '.join(REFERENCES)}")
    if reference == "auto":
        reference = "torch" if importlib.util.find_spec("torch") is not None else "golden"
    if artifact.name.endswith(ENGINE_SUFFIX):
        trt = detect.tensorrt()
        if not trt.available:
            stem = artifact.name[: -len(ENGINE_SUFFIX)]
            raise DeployError(
                f"cannot verify {artifact.name}: {trt.reason}; verify the ONNX it was built from instead, "
                f"e.g. {artifact.parent / artifact_filename(stem, 'fp32')}"
            )
    manifest, file_precision, changed = open_artifact(artifact)
    precision = file_precision
    if precision == ENGINE:
        record = manifest.precision_options[ENGINE]
        if layerwise:
            raise DeployError(f"--layerwise compares ONNX graphs: verify {record['built_from']} with it")
        precision = split_artifact_name(record["built_from"])[1]  # judged as the ONNX it was built from
    default, note = tolerance_for(precision, random_init=manifest.random_init)
    overrides = tolerance_overrides or {}
    for key, value in overrides.items():
        if key not in OVERRIDABLE:
            raise DeployError(f"unknown tolerance {key!r}: choose from {', '.join(OVERRIDABLE)}")
        option, low, high = OVERRIDABLE[key]
        within(option, value, low, high)
    tol = replace(default, **overrides)
    if "min_top1" in overrides:
        note = None
    names = [o.name for o in manifest.outputs]
    if reference == "golden":
        if any(x is not None for x in (inputs, images, data)) or batch_sizes or layerwise:
            raise DeployError("--reference golden checks the golden file's own inputs: it takes none of --inputs, "
                              "--images, --data, --batch-sizes and --layerwise, which need PyTorch")
        sets, reference_runner = read_golden(manifest, artifact.parent, precision)
        given = VerifyInputs(sets, {"kind": describe_sets(sets), "golden": manifest.golden["file"]})
        described = f"golden outputs of PyTorch float32 ({manifest.golden['file']})"
    else:
        from ..backends.pytorch import TorchRunner, reference_model

        given = _inputs(manifest, precision, batch_sizes=batch_sizes, seed=seed, npy=inputs, images=images, data=data)
        model = reference_model(manifest)
        reference_runner = TorchRunner(model, names)
        described = f"{reference_runner.name} float32"

    report = Report(
        artifact=str(artifact), precision=precision, arch=manifest.arch, reference=described,
        inputs=given.description, tolerance=tol.to_dict(), notes=[n for n in (note, given.note) if n],
        file_changed=changed, strict=strict,
    )
    try:
        checks, report.skipped = _checks(artifact, manifest, file_precision, tol, with_torch=reference == "torch",
                                         notes=report.notes)
    except DeployError as exc:
        if changed is None:
            raise
        raise ArtifactError(f"{changed}, and it does not load: {exc}") from None

    label = GOLDEN if reference == "golden" else REFERENCE
    report.rows, outputs = run_checks(reference_runner, checks, given.sets, reference_label=label)
    if given.labels is not None and names[0] == "logits":
        for name, produced in outputs.items():
            report.accuracy[reference_runner.name if name == label else name] = accuracy(
                np.concatenate([o[names[0]] for o in produced]), given.labels)
    if layerwise:
        from .layerwise import localize

        report.layerwise = localize(onnx.load(str(artifact)), model, given.batches[0], precision=precision)
    return report
