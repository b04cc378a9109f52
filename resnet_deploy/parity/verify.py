"""`verify`: run every backend that can run here on the same inputs, then judge each against the
float32 PyTorch reference rebuilt from the manifest, or, where PyTorch is not installed, against the
golden outputs stored at export.

Running and judging are apart: the runs make :class:`~.results.RunResults`, the precision's
:class:`~.tolerances.Policy` and the checks of :func:`~.checks.plan_checks` judge them
(:func:`~.compare.judge`). PyTorch is imported only for the ``torch`` reference, so a target with
ONNX Runtime or TensorRT alone verifies against the golden file."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..artifacts import LOGITS, Manifest, artifact_filename, open_artifact, split_artifact_name
from ..backends.registry import FORMAT_WORDS, Backend, Variant, artifact_format, runs_here, variants
from ..data import ImagePreprocess, batched, labelled_images, list_images, load_images, load_npy_batch
from ..errors import MAX_SEED, ArtifactError, DeployError, within
from ..fileio import atomic_open
from ..precisions import ENGINE, ENGINE_SUFFIX, FP32, PRECISIONS
from ..render import pairs, table
from .checks import check, plan_checks
from .compare import REFERENCE, ResultRow
from .golden import NAME as GOLDEN
from .golden import read_golden
from .metrics import accuracy
from .inputs import InputSet, calibration_holdout, default_sets, random_batches, sets_summary
from .results import RunResults, run
from .tolerances import Policy

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
    runners: dict[str, dict[str, Any]] = field(default_factory=dict)  # runner name -> how it ran

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

    def to_text(self) -> str:
        """verify's table: one row per runner, inputs, batch and output; then failures, skips, notes, accuracy,
        the layer-wise table, and the verdict."""
        lines = [f"{self.artifact} ({self.precision}) vs {self.reference} [{self.arch}], inputs: {pairs(self.inputs)}"]
        if self.file_changed:
            lines.append(f"FILE CHANGED SINCE EXPORT: {self.file_changed}"
                         + ("; --strict: that alone fails" if self.strict else "; compared anyway (--strict fails it)"))
        lines += ["", table([_row_cells(row) for row in self.rows],
                            ["backend", "vs", "inputs", "batch", "output", "max|err|", "err/scale", "cosine", "top-1",
                             "top-5", "result"], right={3, 5, 6, 7, 8, 9})]
        lines += [f"{'FAIL' if row.judged else 'reported'} {row.backend} vs {row.reference} on {row.inputs} "
                  f"batch {row.batch} {row.output}: {'; '.join(row.failures)}" for row in self.rows if row.failures]
        lines += [f"skipped {skip['backend']}: {skip['reason']}" for skip in self.skipped]
        lines += [f"note: {note}" for note in self.notes]
        lines += [f"accuracy {backend}: top-1 {scores['top1']:.2%}, top-5 {scores['top5']:.2%}"
                  for backend, scores in self.accuracy.items()]
        if self.layerwise is not None:
            lines += ["", self.layerwise.to_text()]
        lines.append(f"overall: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(lines)


def _row_cells(row: ResultRow) -> list[str]:
    """One row of verify's table."""
    f = row.figures
    top1 = "-" if f.top1_agreement is None else f"{f.top1_agreement:.1%}"
    top5 = "-" if f.top5_overlap is None else f"{f.top5_overlap:.1%}"
    result = ("PASS" if row.passed else "FAIL") if row.judged else "reported"
    return [row.backend, row.reference, row.inputs, str(row.batch), row.output, f"{f.max_abs:.2e}",
            f"{f.rel_to_scale:.2e}", f"{f.cosine:.6f}", top1, top5, result]


@dataclass
class VerifyInputs:
    sets: list[InputSet]
    description: dict[str, Any]
    labels: np.ndarray | None = None  # with --data: one class index per image of the one set
    note: str | None = None  # why the calibration hold-out was not used

    @property
    def batches(self) -> list[np.ndarray]:
        return [batch for inputs in self.sets for batch in inputs.batches]


def gather_inputs(
    manifest: Manifest,
    policy: Policy,
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
    shape = manifest.example_shape
    profile = manifest.batch
    preprocess = ImagePreprocess.from_manifest(manifest.preprocess)
    if npy is not None:
        array = load_npy_batch(npy, shape, pixels=preprocess.embedded)
        return VerifyInputs([InputSet("npy", batched(array, profile.max))],
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
        return VerifyInputs([InputSet(description["kind"], batched(load_images(paths, preprocess), profile.max))],
                            description, labels)
    sizes = batch_sizes or sorted({profile.min, profile.opt})
    outside = [b for b in sizes if not profile.min <= b <= profile.max]
    if outside:
        raise DeployError(f"batch sizes {outside} are outside the artifact's profile {profile}")
    holdout, note = calibration_holdout(manifest)
    sets = default_sets(random_batches(sizes, preprocess, seed), holdout, profile)
    description = {"kind": sets_summary(sets, policy.judges_in(sets)), "seed": seed, "batch_sizes": sizes,
                   "range": "normalised uniform [0, 1] images"}
    if holdout is not None:
        description["holdout"] = manifest.calibration["source"]
    return VerifyInputs(sets, description, note=note)


def _usable(artifact: Path, file_precision: str, *, with_torch: bool) -> tuple[
        list[tuple[Backend, Variant]], list[dict[str, str]]]:
    """Every backend variant of the registry that runs ``artifact`` here, and why each other one does not
    (the PyTorch reference on the CPU excepted: everything is compared with it)."""
    kind = artifact_format(file_precision)
    usable, skipped = [], []
    for backend, variant in variants():
        if variant.name == REFERENCE_VARIANT:
            continue
        state = variant.availability()
        if not backend.takes(kind):
            reason = state.reason or f"it runs {FORMAT_WORDS[backend.runs]}: verify that file instead"
        elif backend.runs == "model" and not with_torch:
            reason = "--reference golden: the PyTorch model is not rebuilt"
        elif not variant.runs_file_of(file_precision):
            runs = PRECISIONS[variant.precision].runs_file
            reason = state.reason or f"it computes the {runs} file in {variant.precision}: verify that file instead"
        else:
            reason = state.reason
        if reason:
            skipped.append({"backend": variant.name, "reason": reason})
        else:
            usable.append((backend, variant))
    return usable, skipped


REFERENCES = ("auto", "torch", "golden")


@dataclass
class ReferenceRun:
    """The inputs and the float32 reference's outputs on them, which every runner is judged against."""

    given: VerifyInputs
    results: RunResults  # the reference's outputs, to which the judged runners' are added
    name: str  # the reference's runner name in the results
    label: str  # how rows name it: torch, or golden
    described: str  # in a report's header
    model: Any = None  # the PyTorch model (torch reference), for --layerwise


def resolve_reference(reference: str) -> str:
    """``auto`` -> torch where PyTorch is installed, else golden; a one-line error for an unknown one."""
    if reference not in REFERENCES:
        raise DeployError(f"unknown --reference {reference!r}: choose from {', '.join(REFERENCES)}")
    if reference == "auto":
        return "torch" if importlib.util.find_spec("torch") is not None else "golden"
    return reference


def reference_run(manifest: Manifest, policy: Policy, folder: Path, *, reference: str, batch_sizes: list[int] | None,
                  seed: int, npy: str | None = None, images: str | None = None, data: str | None = None,
                  layerwise: bool = False) -> ReferenceRun:
    """The reference's outputs: the PyTorch model rebuilt from the manifest on the given (or default)
    inputs, or the golden outputs stored at export on their own inputs (``reference`` torch or golden)."""
    if reference == "golden":
        if any(x is not None for x in (npy, images, data)) or batch_sizes or layerwise:
            raise DeployError("--reference golden checks the golden file's own inputs: it takes none of --inputs, "
                              "--images, --data, --batch-sizes and --layerwise, which need PyTorch")
        results = read_golden(manifest, folder)
        given = VerifyInputs(results.sets, {"kind": sets_summary(results.sets, policy.judges_in(results.sets)),
                                            "golden": manifest.golden["file"]})
        return ReferenceRun(given, results, next(iter(results.outputs)), GOLDEN,
                            f"golden outputs of PyTorch float32 ({manifest.golden['file']})")
    from ..backends.pytorch import TorchRunner, reference_model

    given = gather_inputs(manifest, policy, batch_sizes=batch_sizes, seed=seed, npy=npy, images=images, data=data)
    model = reference_model(manifest)
    runner = TorchRunner(model, [o.name for o in manifest.outputs], input_spec=manifest.input)
    return ReferenceRun(given, run([runner], given.sets), runner.name, REFERENCE, f"{runner.name} float32", model)


def verify(artifact: str | os.PathLike[str], *, batch_sizes: list[int] | None = None, seed: int = 0,
           inputs: str | None = None, images: str | None = None, data: str | None = None,
           tolerance_overrides: dict[str, float] | None = None, layerwise: bool = False, reference: str = "auto",
           strict: bool = False) -> Report:
    """Run every backend that can run ``artifact`` here, then judge each against the reference.

    The artifact is compared whatever its bytes: a file changed since export (by the user's own graph
    pass, or corrupted) is reported in ``file_changed``, and with ``strict`` that alone fails.

    Args:
        artifact: an artifact file of an export (its manifest beside it).
        batch_sizes: random-input batch sizes within the profile (default MIN and OPT).
        seed: seed of the random inputs.
        inputs: a preprocessed NCHW float32 .npy batch to compare on instead.
        images: a folder of images, preprocessed as the manifest says, instead.
        data: a folder of class folders instead: adds top-1/top-5 accuracy per backend.
        tolerance_overrides: fields of the precision's default :class:`~.tolerances.Tolerance` replaced.
        layerwise: also compare every block and name the first where outputs part (ONNX artifacts).
        reference: ``torch`` rebuilds the float32 PyTorch model from the manifest; ``golden`` reads
            ``STEM.golden.npz`` (its own inputs; no PyTorch needed); ``auto``: torch where installed.
        strict: a file changed since export fails by itself.

    Returns:
        The judged :class:`Report`; a parity failure is ``passed == False``.

    Raises:
        DeployError: bad options, or nothing that can run the artifact here.
    """
    artifact = Path(artifact)
    within("--seed", seed, 0, MAX_SEED)
    reference = resolve_reference(reference)
    manifest, file_precision, changed = open_artifact(_verifiable(artifact))
    precision = _judged_as(manifest, file_precision, layerwise)
    policy = Policy.make(precision, random_init=manifest.random_init, overrides=tolerance_overrides)
    ran = reference_run(manifest, policy, artifact.parent, reference=reference, batch_sizes=batch_sizes, seed=seed,
                        npy=inputs, images=images, data=data, layerwise=layerwise)
    report = Report(
        artifact=str(artifact), precision=precision, arch=manifest.arch, reference=ran.described,
        inputs=ran.given.description, tolerance=policy.tolerance.to_dict(),
        notes=[n for n in (*policy.notes, ran.given.note) if n], file_changed=changed, strict=strict,
    )
    usable, report.skipped = _usable(artifact, file_precision, with_torch=reference == "torch")
    checked = _checked(artifact, manifest, file_precision, policy, usable, ran, changed)
    report.rows, report.runners = checked.rows, checked.results.runners
    report.notes += checked.notes
    if ran.given.labels is not None and manifest.outputs[0].name == LOGITS:  # --data: each runner's accuracy
        report.accuracy = {name: accuracy(checked.results.joined(name, LOGITS), ran.given.labels)
                           for name in checked.results.outputs}
    if layerwise:
        from .layerwise import localize

        report.layerwise = localize(onnx.load(str(artifact)), ran.model, ran.given.batches[0], precision=precision)
    return report


def _checked(artifact: Path, manifest: Manifest, file_precision: str, policy: Policy,
             usable: list[tuple[Backend, Variant]], ran: Any, changed: str | None) -> Any:
    """The one verification sequence on every usable variant; a changed file that does not load says so."""
    try:
        plan = plan_checks(artifact, manifest, file_precision, policy, usable)
    except DeployError as exc:
        if changed is None:
            raise
        raise ArtifactError(f"{changed}, and it does not load: {exc}") from None
    return check(artifact, manifest, file_precision, policy, usable, ran.results, ran.name,
                 reference_label=ran.label, plan=plan)


def _verifiable(artifact: Path) -> Path:
    """``artifact``, or a one-line error for an engine where TensorRT cannot run it (verify its ONNX instead)."""
    trt = runs_here(ENGINE) if artifact.name.endswith(ENGINE_SUFFIX) else None
    if trt is not None and not trt.available:
        stem = artifact.name[: -len(ENGINE_SUFFIX)]
        raise DeployError(f"cannot verify {artifact.name}: {trt.reason}; verify the ONNX it was built from instead, "
                          f"e.g. {artifact.parent / artifact_filename(stem, FP32)}")
    return artifact


def _judged_as(manifest: Manifest, file_precision: str, layerwise: bool) -> str:
    """The precision an artifact is judged as: its own; an engine's, the ONNX file it was built from (which
    ``--layerwise`` must be given: it compares ONNX graphs)."""
    if file_precision != ENGINE:
        return file_precision
    record = manifest.precision_options[ENGINE]
    if layerwise:
        raise DeployError(f"--layerwise compares ONNX graphs: verify {record['built_from']} with it")
    return split_artifact_name(record["built_from"])[1]
