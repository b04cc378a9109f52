"""The export pipeline: model -> ONNX -> simplified, checked ONNX -> parity gate -> manifest.

Nothing reaches its final name before every check has passed: files are
written under temporary names in the output folder and committed together,
manifest last, by :func:`resnet_deploy.artifacts.commit_artifacts`.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ..artifacts import (
    GOLDEN_SUFFIX,
    MAX_SIDE,
    BatchProfile,
    Manifest,
    TensorSpec,
    artifact_filename,
    check_stem,
    commit_artifacts,
)
from ..backends import detect
from ..backends.onnxrt import OnnxRuntimeRunner
from ..backends.pytorch import TorchRunner, reference_model
from ..backends.tensorrt import TensorRTRunner
from ..data import ImagePreprocess, calibration_data, random_images
from ..environment import package_version, tool_versions
from ..errors import MAX_SEED, ArgumentError, DeployError, DeployWarning, ExportError, ParityError, within
from ..fileio import Staging, sha256_file, sweep_temporaries
from ..models import create_model, get_spec
from ..models import pretrained
from ..models.registry import declare_preprocess
from ..parity.compare import REFERENCE, Check, Memoized, run_checks
from ..parity.golden import write_golden
from ..parity.metrics import compare_arrays
from ..parity.inputs import InputSet, default_sets, describe_sets
from ..parity.int8 import int8_checks
from ..parity.layerwise import torch_points
from ..parity.tolerances import tolerance_for
from ..precisions import ENGINE, ENGINE_SUFFIX, PRECISIONS, engine_source
from ..progress import StepLog
from . import engine as trt_engine
from . import graph, mixed, precision
from .options import ExportOptions
from .torch2onnx import export_onnx, output_names

# simplified vs exported graph, both on ONNX Runtime (after a failed gate): only reordering may differ
SIMPLIFY_TOLERANCE = 1e-5
MAX_CALIBRATION_IMAGES = 1_000_000


@dataclass
class ExportResult:
    onnx_path: Path
    manifest_path: Path
    manifest: Manifest
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def paths(self) -> dict[str, Path]:
        """precision -> artifact path, for every artifact this export wrote."""
        return {a.precision: self.manifest_path.parent / a.file for a in self.manifest.artifacts}

    def to_dict(self) -> dict[str, Any]:
        entry = self.manifest.artifact("fp32")
        return {
            "arch": self.manifest.arch,
            "onnx": str(self.onnx_path),
            "manifest": str(self.manifest_path),
            "bytes": entry.bytes if entry else None,
            "sha256": entry.sha256 if entry else None,
            "artifacts": [vars(a) | {"path": str(self.manifest_path.parent / a.file)} for a in self.manifest.artifacts],
            "seconds": round(self.seconds, 3),
            "timings": self.timings,
            "parity": self.manifest.parity,
        }


def parse_input_size(value: int | str | tuple[int, int] | None, default: int) -> tuple[int, int]:
    """``224`` or ``"224"`` -> (224, 224); ``"256x192"`` -> (256, 192)."""
    if value is None:
        return default, default
    if isinstance(value, tuple):
        height, width = value
    elif isinstance(value, int):
        height = width = value
    else:
        match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", value)
        if not match:
            raise ExportError(f"invalid input size {value!r}: expected N or HxW, e.g. 224 or 256x192")
        height = int(match.group(1))
        width = int(match.group(2) or height)
    for side in (height, width):
        within("--input-size", side, 8, MAX_SIDE, "pixels per side")
    return height, width


def _prepare_folder(out: str | os.PathLike[str], log: StepLog) -> Path:
    """The output folder, made where missing, checked writable, and cleared of what killed exports left."""
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with Staging(folder) as probe:  # a file made and removed: the folder takes writes
            probe.file()
    except OSError as exc:
        raise ExportError(f"cannot write to output folder {folder}: {exc.strerror or exc}") from None
    swept = sweep_temporaries(folder)
    if swept:
        log.say(f"removed {len(swept)} temporaries of exports that were killed: {', '.join(sorted(swept)[:3])}"
                + (" ..." if len(swept) > 3 else ""))
    return folder


def _tensor_specs(values: Any) -> list[TensorSpec]:
    specs = []
    for value in values:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
        specs.append(TensorSpec(name=value.name, shape=dims, dtype=dtype))
    return specs


def _gate_batches(profile: BatchProfile) -> list[int]:
    """Batch 1 and one more inside the profile (the opt size, else the max)."""
    second = profile.opt if profile.opt > 1 else profile.max
    return sorted({1, second})


@dataclass
class GateInputs:
    """What the export gate runs: seeded random images at batch 1 and OPT, and, with real calibration
    data, its hold-out (see :mod:`resnet_deploy.parity.inputs`)."""

    random: list[np.ndarray]
    holdout: np.ndarray | None
    profile: BatchProfile

    @classmethod
    def make(cls, profile: BatchProfile, shape: tuple[int, int, int], preprocess: ImagePreprocess, seed: int,
             holdout: np.ndarray | None = None) -> GateInputs:
        return cls([random_images(size, shape, preprocess.mean, preprocess.std, seed=seed)
                    for size in _gate_batches(profile)], holdout, profile)

    def sets(self, precision: str) -> list[InputSet]:
        return default_sets(precision, self.random, self.holdout, self.profile)

    def describe(self, precision: str) -> str:
        return describe_sets(self.sets(precision))


def _parity_gate(
    reference: Memoized,
    kind: str,
    candidate: Path | TensorRTRunner,
    inputs: GateInputs,
    *,
    random_init: bool,
    int8_options: dict[str, Any] | None = None,
    precision: str | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """An artifact of ``kind`` (an ONNX path, or an engine's runner) against PyTorch on the gate's inputs.

    Raises ParityError on the first judged row beyond the tolerance of
    ``precision`` (default: ``kind``; an engine is judged by its source's).
    INT8 ONNX is judged on the graph run as written, its CPU kernels against
    that (see :mod:`resnet_deploy.parity.int8`). Returns the rows and notes.
    """
    precision = precision or kind
    tolerance, note = tolerance_for(precision, random_init=random_init)
    notes = [note] if note else []
    if isinstance(candidate, Path) and kind == "int8":
        checks, int8_notes = int8_checks(candidate, int8_options or {}, tolerance,
                                         [(OnnxRuntimeRunner(candidate), True)])
        notes += int8_notes
    else:
        checks = [Check(OnnxRuntimeRunner(candidate) if isinstance(candidate, Path) else candidate, tolerance)]
    runtime = "TensorRT" if kind == ENGINE else "ONNX Runtime"
    try:
        results, _outputs = run_checks(reference, checks, inputs.sets(precision))
    finally:  # the sessions made here; a runner passed in is its caller's to close
        for made in {id(check.runner): check.runner for check in checks if check.runner is not candidate}.values():
            made.close()
    rows = [{"artifact": kind, "backend": row.backend, "reference": row.reference, "inputs": row.inputs,
             "judged": row.judged, "batch": row.batch, "output": row.output, **row.figures} for row in results]
    failed = next((row for row in results if row.judged and not row.passed), None)
    if failed is not None:
        raise ParityError(
            f"{kind} artifact: {runtime} disagrees with "
            f"{'PyTorch' if failed.reference == REFERENCE else failed.reference} ({failed.backend}) on "
            f"{failed.output!r} at batch {failed.batch} of {failed.inputs} images: " + "; ".join(failed.failures)
        )
    return rows, notes


@dataclass
class Job:
    """One export in progress: its checked request, then what each step adds for the later ones."""

    arch: str
    options: ExportOptions
    stem: str
    profile: BatchProfile
    shape: tuple[int, int, int]  # C, H, W of the example and check images
    preprocess_record: dict[str, Any]
    image_preprocess: ImagePreprocess
    precisions: list[str]  # the ONNX artifacts to make, in the registry's order
    calibration: Any = None  # data.CalibrationData with int8
    published: Any = None  # models.pretrained.PublishedWeights for a tag
    weights_sha256: str | None = None
    trt: Any = None  # detect.Availability of TensorRT here
    folder: Path = Path()
    staging: Staging | None = None
    resources: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    model: Any = None
    outputs: list[str] = field(default_factory=list)
    raw: onnx.ModelProto | None = None  # the graph as exported, until the fp32 gate passed
    final: onnx.ModelProto | None = None  # the checked fp32 graph
    artifacts: dict[str, Path] = field(default_factory=dict)  # artifact kind -> staged file
    precision_options: dict[str, Any] = field(default_factory=dict)
    holdout: np.ndarray | None = None
    prepared: Path | None = None  # the fp32 graph prepared for quantization
    quantize: Any = None  # (out path, units kept in float) -> ranges read from cache?
    range_cache: tuple[Path, Path] | None = None  # (staged, final) activation ranges measured by this export
    reference: Memoized | None = None
    gate_inputs: GateInputs | None = None
    parity: list[dict[str, Any]] = field(default_factory=list)
    manifest: Manifest | None = None
    manifest_file: Path | None = None

    @property
    def build_engine(self) -> bool:
        return bool(self.trt.available) and self.options.engine is not False

    @property
    def random_init(self) -> bool:
        return self.options.weights is None


@dataclass(frozen=True)
class Step:
    """One step of the export: its title on the progress line, its work, and when it runs."""

    title: Callable[[Job], str]
    run: Callable[[Job, StepLog], None]
    runs_for: Callable[[Job], bool] = lambda job: True


def _plan(arch: str, o: ExportOptions) -> Job:
    """Every check that needs no work: bad input fails here, before a file is written."""
    profile = o.batch if isinstance(o.batch, BatchProfile) else BatchProfile.parse(o.batch)
    stem = check_stem(o.name or arch)
    spec = get_spec(arch)
    height, width = parse_input_size(o.input_size, spec.preprocess.input_size)
    within("--opset", o.opset, 13, onnx.defs.onnx_opset_version(),
           f"13 for per-channel quantization; onnx {onnx.__version__} knows up to {onnx.defs.onnx_opset_version()}")
    within("--seed", o.seed, 0, MAX_SEED)
    within("--calib-size", o.calib_size, 1, MAX_CALIBRATION_IMAGES)
    declared = {k: v for k, v in (o.preprocess or {}).items() if v is not None}
    published = (pretrained.resolve(arch, str(o.weights))
                 if o.weights is not None and pretrained.is_tag(o.weights) else None)
    if published is not None:  # the weights' own preprocessing, under the user's
        scale = published.preprocess["resize"] / 224  # published for a 224 crop
        declared = {**published.preprocess, "resize": int(round(min(height, width) * scale)), **declared}
    record = declare_preprocess(spec.preprocess, height, width, **declared)
    within("--resize", record["resize"], 1, MAX_SIDE, "pixels of the shorter side before the crop")
    job = Job(arch, o, stem, profile, (3, height, width), record, ImagePreprocess.from_manifest(record),
              [name for name in PRECISIONS if name == "fp32" or getattr(o, name, False)], published=published)
    if o.int8:  # checked before the slow steps: a missing data set should fail at once
        job.calibration = calibration_data(o.calib_data, preprocess=job.image_preprocess, shape=job.shape,
                                           size=o.calib_size, seed=o.seed)
        o.reduce_range = precision.resolve_reduce_range(o.int8_target, o.reduce_range)
    elif o.reduce_range is not None or o.max_drop is not None:
        raise ExportError("--reduce-range, --no-reduce-range and --max-drop go with --int8")
    if o.max_drop is not None and not 0 <= o.max_drop <= 100:
        raise ExportError(f"--max-drop {o.max_drop} is not a number of top-1 points between 0 and 100")
    if o.max_drop is not None and (o.features_only or o.num_classes == 0):
        raise ExportError("--max-drop measures top-1: it needs the classifier (not --features-only or --num-classes 0)")
    if o.eval_data is not None and (o.max_drop is None or not Path(o.eval_data).is_dir()):
        raise ExportError("--eval-data takes a folder of class folders, and goes with --max-drop")
    job.trt = detect.tensorrt()
    if o.engine and not job.trt.available:
        raise DeployError(f"--engine: cannot build a TensorRT engine here: {job.trt.reason}")
    if job.build_engine and o.build_options is not None:
        o.build_options.check(package_version("tensorrt"))  # an option this TensorRT lacks: said before the export
    return job


def _build_model(job: Job, log: StepLog) -> None:
    o = job.options
    with torch.random.fork_rng():
        torch.manual_seed(o.seed)
        job.model = create_model(job.arch, num_classes=o.num_classes, weights=o.weights,
                                 features_only=o.features_only, last_stride=o.last_stride)
    classes = 0 if o.features_only else job.model.num_classes
    job.outputs = output_names(num_classes=classes, features_only=o.features_only)


def _to_onnx(job: Job, log: StepLog) -> None:
    o = job.options
    job.raw = export_onnx(job.model, input_hw=job.shape[1:], in_chans=job.shape[0], outputs=job.outputs,
                          opset=o.opset, exporter=o.exporter, dynamic_hw=o.dynamic_hw)


def _simplify_and_check(job: Job, log: StepLog) -> None:
    """onnxsim, BatchNorm folding and onnx's full check of the file written. The exported graph is kept
    in memory until the fp32 gate passed: were it to fail, it says whether these passes are to blame."""
    final_path = job.artifacts["fp32"] = job.staging.file(".onnx")
    if job.options.simplify:
        final = graph.simplify(job.raw)
    else:
        final = onnx.ModelProto()
        final.CopyFrom(job.raw)
    folded = graph.fold_batchnorm(final)
    onnx.save(final, str(final_path))
    graph.check_file(final_path)  # the file gains the inferred shapes; the graph in memory is the same
    job.final = final
    log.note(f"{len(job.final.graph.node)} nodes, BatchNorm folded here: {folded}, "
             f"left: {graph.op_histogram(job.final).get('BatchNormalization', 0)}")


def _fp16(job: Job, log: StepLog) -> None:
    path = job.artifacts["fp16"] = job.staging.file(PRECISIONS["fp16"].suffix)
    onnx.save(precision.to_fp16(job.final), str(path))
    graph.check_file(path)
    job.precision_options["fp16"] = {"keep_fp32_ops": list(precision.FP16_KEEP_FP32_OPS)}


def _int8_title(job: Job) -> str:
    o, calibration = job.options, job.calibration
    held = f", {calibration.holdout_images} held out" if calibration.holdout_images else ""
    return (f"INT8 QDQ for {o.int8_target}{' with 7-bit weights' if o.reduce_range else ''}, "
            f"{o.calib_method} calibration on {calibration.images} images{held}")


def _int8(job: Job, log: StepLog) -> None:
    o, calibration = job.options, job.calibration
    path = job.artifacts["int8"] = job.staging.file(PRECISIONS["int8"].suffix)
    fp32 = job.artifacts["fp32"]
    cache = job.folder / precision.calibration_cache_name(job.stem, sha256_file(fp32), calibration, o.calib_method)
    job.prepared = job.resources.enter_context(precision.prepared_for_quantization(fp32))
    problem = precision.range_cache_problem(cache) if cache.exists() else "missing"
    if problem not in (None, "missing"):
        warnings.warn(f"the range cache {cache.name} is not used: {problem}; calibrating again", DeployWarning,
                      stacklevel=2)
    # new ranges go to a staged file, put in place with the artifacts: a failed export leaves none
    ranges = cache if problem is None else job.staging.name(".json")

    def quantize(out: Path, keep_float: list[str]) -> bool:
        return precision.to_int8(
            job.prepared, out, calibration, target=o.int8_target, method=o.calib_method, cache_path=ranges,
            reduce_range=o.reduce_range, keep_float=keep_float,
            on_progress=lambda done, total: log.progress(done, total, "images"),
        )

    job.quantize = quantize
    # images the ranges never see: decoded once, for the mixed-precision measure and the gates
    job.holdout = calibration.holdout() if calibration.holdout else None
    from_cache = quantize(path, [])
    if ranges != cache and ranges.exists():
        bad = precision.range_cache_problem(ranges)
        if bad is not None:
            raise ExportError(f"calibration gave unusable activation ranges ({bad}): the calibration data holds "
                              "NaN or infinite values")
        job.range_cache = (ranges, cache)
    log.note(f"activation ranges {'read from' if from_cache else 'cached in'} {cache.name}")
    job.precision_options["int8"] = {
        **precision.int8_record(o.int8_target, o.calib_method, o.reduce_range),
        "calibration": calibration.describe(),
        "range_cache": cache.name if from_cache or job.range_cache else None,
    }


def _mixed(job: Job, log: StepLog) -> None:
    o = job.options
    measure = mixed.DropMeasure.make(job.artifacts["fp32"], o.eval_data, job.holdout, job.image_preprocess)
    chosen = mixed.quantize_within(
        job.prepared, job.artifacts["int8"], block_names=[name for name, _ in torch_points(job.model)][1:],
        max_drop=o.max_drop, measure=measure, quantize=job.quantize, on_progress=log.status,
    )
    log.note(mixed.describe(chosen))
    job.precision_options["int8"]["mixed"] = chosen.to_dict()


def _gate_inputs(job: Job) -> GateInputs:
    """The gates' inputs, and the PyTorch reference they are compared with: made at the first gate
    (after the conversions, so with the calibration hold-out where there is one)."""
    if job.gate_inputs is None:
        job.reference = Memoized(TorchRunner(job.model, job.outputs))
        job.gate_inputs = GateInputs.make(job.profile, job.shape, job.image_preprocess, job.options.seed, job.holdout)
    return job.gate_inputs


def _blame_graph_passes(job: Job) -> str:
    """After a failed fp32 gate: whether simplification and BatchNorm folding changed what the exported
    graph computes (both run on ONNX Runtime), or the export itself already disagreed with PyTorch."""
    probe = random_images(2, job.shape, job.image_preprocess.mean, job.image_preprocess.std, seed=job.options.seed)
    before = OnnxRuntimeRunner(job.raw.SerializeToString())(probe)
    after = OnnxRuntimeRunner(job.artifacts["fp32"])(probe)
    for out_name in job.outputs:
        figures = compare_arrays(before[out_name], after[out_name])
        if not figures.finite or figures.rel_to_scale > SIMPLIFY_TOLERANCE:
            return (f"; simplification and BatchNorm folding changed the exported graph's {out_name!r} (max |error| "
                    f"{figures.rel_to_scale:.2e} of output scale): retry with --no-simplify")
    return "; the graph as exported already disagrees (simplification and BatchNorm folding changed nothing)"


def _gate_step(name: str) -> Step:
    """The parity gate of the ``name`` precision's ONNX: ONNX Runtime against PyTorch."""
    def run(job: Job, log: StepLog) -> None:
        try:
            rows, notes = _parity_gate(job.reference, name, job.artifacts[name], _gate_inputs(job),
                                       random_init=job.random_init, int8_options=job.precision_options.get("int8"))
        except ParityError as exc:
            if name == "fp32":
                raise ParityError(f"{exc}{_blame_graph_passes(job)}") from None
            raise
        if name == "fp32":
            job.raw = None  # the exported graph is no longer needed
        job.parity += rows
        for note in notes:
            log.note(note)

    return Step(lambda job: f"parity gate {name}: ONNX Runtime vs PyTorch on {_gate_inputs(job).describe(name)}", run,
                lambda job: name in job.precisions)


def _manifest(job: Job) -> Manifest:
    o = job.options
    return Manifest(
        stem=job.stem,
        arch=job.arch,
        num_classes=0 if o.features_only else job.model.num_classes,
        model_options={"features_only": o.features_only, "last_stride": o.last_stride},
        weights=(
            {"file": str(Path(o.weights).resolve()), "sha256": job.weights_sha256 or sha256_file(o.weights),
             **({"published": job.published.tag, "url": job.published.url} if job.published else {})}
            if o.weights is not None
            else {"init": "random", "seed": o.seed}
        ),
        input=_tensor_specs(job.final.graph.input)[0],
        preprocess=job.preprocess_record,
        outputs=_tensor_specs(job.final.graph.output),
        batch=job.profile,
        dynamic_hw=o.dynamic_hw,
        opset=o.opset,
        exporter=o.exporter,
        simplified=o.simplify,
        parity=job.parity,
        precision_options=job.precision_options,
        tools=tool_versions(),
    )


def _engine_source(job: Job) -> str:
    return engine_source(job.precision_options, set(job.precisions))


def _engine(job: Job, log: StepLog) -> None:
    job.manifest = _manifest(job)
    source = _engine_source(job)
    path = job.staging.file(ENGINE_SUFFIX)
    job.manifest.precision_options[ENGINE] = trt_engine.build_engine(
        job.artifacts[source], path, trt_engine.profile_shapes(job.manifest),
        job.options.build_options or trt_engine.BuildOptions(), built_from=artifact_filename(job.stem, source),
    )
    job.artifacts[ENGINE] = path


def _engine_gate(job: Job, log: StepLog) -> None:
    inputs = _gate_inputs(job)
    with TensorRTRunner.for_record(job.artifacts[ENGINE], job.manifest.precision_options[ENGINE]) as runner:
        job.manifest.parity += _parity_gate(job.reference, ENGINE, runner, inputs, random_init=job.random_init,
                                            precision=_engine_source(job))[0]


def _commit(job: Job, log: StepLog) -> None:
    if job.options.engine is None and not job.build_engine:
        log.note(f"TensorRT engine not built: {job.trt.reason}")
    job.manifest = job.manifest or _manifest(job)
    golden = job.staging.file(GOLDEN_SUFFIX)
    write_golden(golden, _gate_inputs(job).sets("fp32"), job.reference)
    if job.range_cache is not None:
        job.staging.commit(*job.range_cache)
    job.manifest_file = commit_artifacts(job.staging, job.artifacts, job.manifest, golden=golden)


# The export, in order. A step is named, timed and counted by the one loop in export(); a new precision
# is a registry row (resnet_deploy.precisions) with its conversion step here; its gate follows by itself.
STEPS: list[Step] = [
    Step(lambda job: f"build {job.arch}", _build_model),
    Step(lambda job: f"export to ONNX ({job.options.exporter}, opset {job.options.opset})", _to_onnx),
    Step(lambda job: "simplify and check" if job.options.simplify else "check", _simplify_and_check),
    Step(lambda job: "convert to FP16 (float32 I/O; InstanceNorm and Softmax kept in float32)", _fp16,
         lambda job: "fp16" in job.precisions),
    Step(_int8_title, _int8, lambda job: "int8" in job.precisions),
    Step(lambda job: f"mixed precision: INT8 within {job.options.max_drop} top-1 points", _mixed,
         lambda job: job.options.max_drop is not None),
    *[_gate_step(name) for name in PRECISIONS],
    Step(lambda job: f"build TensorRT engine from the {_engine_source(job)} ONNX", _engine,
         lambda job: job.build_engine),
    Step(lambda job: f"parity gate engine: TensorRT vs PyTorch on {_gate_inputs(job).describe(_engine_source(job))}",
         _engine_gate, lambda job: job.build_engine),
    Step(lambda job: "write golden outputs and manifest", _commit),
]


def export(arch: str, **options: Any) -> ExportResult:
    """Export ``arch`` to ``out/STEM.onnx`` (``STEM.fp16.onnx`` with ``fp16``, ``STEM.int8.onnx``
    with ``int8``) and its manifest ``out/STEM.json``; ``options`` are the fields of
    :class:`ExportOptions`.

    INT8 calibrates on ``calib_data`` (a folder of images, a preprocessed .npy
    batch, or ``"random"`` on purpose) with ``calib_method``; ``int8_target``
    "trt" makes symmetric signed activations for TensorRT, "cpu" unsigned ones
    for ONNX Runtime's x86 kernels (with 7-bit weights, ``reduce_range``, on
    CPUs without VNNI unless told otherwise). The activation ranges are cached
    beside the artifacts. With real calibration data a seeded fifth of it is
    held out of the ranges, and reduced precisions are judged on it.

    ``max_drop``: leave the most sensitive units (stem, blocks, head) in float
    until INT8 loses at most this many top-1 points, measured on labelled
    ``eval_data`` or else on the calibration hold-out (see :mod:`.mixed`).

    ``preprocess``: the normalisation the weights were trained with, as
    keyword arguments of :func:`~resnet_deploy.models.registry.declare_preprocess`
    (``preset``, ``mean``, ``std``, ``resize``, ``interpolation``); default the arch's.

    ``engine``: True demands a TensorRT engine (an error where TensorRT or a
    GPU is missing, before any work), False skips it, None builds one where
    possible and otherwise says why not.

    Raises :class:`ExportError` (or another :class:`DeployError`) on bad input
    and :class:`ParityError` when ONNX Runtime disagrees with PyTorch; in every
    failure case no new file is left in ``out``.
    """
    start = time.perf_counter()
    unknown = sorted(set(options) - set(ExportOptions.__dataclass_fields__))
    if unknown:
        raise ArgumentError(f"unknown export option(s) {unknown}")
    job = _plan(arch, ExportOptions(**options))
    steps = [step for step in STEPS if step.runs_for(job)]
    log = StepLog(len(steps), quiet=job.options.quiet)
    o = job.options
    if o.weights is None:
        log.say(f"weights: RANDOM (seeded init, seed {o.seed}): the artifacts compute nothing useful; pass --weights "
                "FILE or a published tag (`resnet-deploy list --weights`) to export trained weights")
    elif job.published is not None:  # before the output folder exists: a failed download leaves nothing
        log.say(f"weights: {job.published.tag} ({job.published.url})")
        o.weights, job.weights_sha256 = pretrained.fetch(
            job.published, progress=None if o.quiet else pretrained.stderr_progress)
    job.folder = _prepare_folder(o.out, log)
    with Staging(job.folder) as job.staging, job.resources:
        for step in steps:
            with log.step(step.title(job)):
                step.run(job, log)
    return ExportResult(
        onnx_path=job.folder / job.manifest.artifact("fp32").file,
        manifest_path=job.manifest_file,
        manifest=job.manifest,
        timings=log.timings,
        seconds=time.perf_counter() - start,
    )


def build(
    onnx_path: str | os.PathLike[str],
    *,
    options: trt_engine.BuildOptions | None = None,
    seed: int = 0,
    quiet: bool = False,
) -> Path:
    """Build ``STEM.engine`` from an exported ONNX artifact, gate it against PyTorch, add it to the manifest."""
    from ..artifacts import manifest_for

    trt = detect.tensorrt()
    if not trt.available:
        raise DeployError(f"cannot build a TensorRT engine here: {trt.reason}")
    onnx_path = Path(onnx_path)
    manifest, source = manifest_for(onnx_path)
    if source == ENGINE:
        raise DeployError(f"{onnx_path.name} is an engine already; give the ONNX it should be built from")
    if not PRECISIONS[source].engine_takes(manifest.precision_options.get(source, {})):
        raise DeployError(f"{onnx_path.name} was quantized for the cpu target (unsigned activations), which "
                          "TensorRT's explicit quantization does not take: re-export with --int8-target trt")
    folder, log = onnx_path.parent, StepLog(3, quiet=quiet)
    sweep_temporaries(folder)
    with Staging(folder) as staging:
        engine_path = staging.file(ENGINE_SUFFIX)
        with log.step(f"build TensorRT engine from {onnx_path.name}"):
            manifest.precision_options[ENGINE] = trt_engine.build_engine(
                onnx_path, engine_path, trt_engine.profile_shapes(manifest), options or trt_engine.BuildOptions(),
                built_from=onnx_path.name,
            )
        shape = (3, *manifest.preprocess["crop"])
        reference = Memoized(TorchRunner(reference_model(manifest), [o.name for o in manifest.outputs]))
        inputs = GateInputs.make(manifest.batch, shape, ImagePreprocess.from_manifest(manifest.preprocess), seed)
        with log.step(f"parity gate engine: TensorRT vs PyTorch on {inputs.describe(source)}"), \
                TensorRTRunner.for_record(engine_path, manifest.precision_options[ENGINE]) as runner:
            manifest.parity = [p for p in manifest.parity if p["artifact"] != ENGINE] + _parity_gate(
                reference, ENGINE, runner, inputs, random_init=manifest.random_init, precision=source,
            )[0]
        with log.step("write manifest"):
            commit_artifacts(staging, {ENGINE: engine_path}, manifest, keep_others=True)
    return folder / artifact_filename(manifest.stem, ENGINE)
