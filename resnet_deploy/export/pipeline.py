"""The export pipeline: model -> ONNX -> simplified, checked ONNX -> parity gate -> manifest.

Nothing reaches its final name before every check has passed: files are
written under temporary names in the output folder and committed together,
manifest last, by :func:`resnet_deploy.artifacts.commit_artifacts`. What the steps share, the frozen
:class:`~.job.ExportPlan` and what each step hands on, is in :mod:`.job`.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import onnx
import torch

from ..artifacts import (
    GOLDEN_SUFFIX,
    MAX_SIDE,
    BatchProfile,
    Manifest,
    ParityRecord,
    PreprocessRecord,
    TensorSpec,
    artifact_filename,
    check_stem,
    commit_artifacts,
)
from ..backends.onnxrt import OnnxRuntimeRunner
from ..backends.pytorch import TorchRunner, reference_model
from ..backends.registry import precision_variant, runs_here
from ..data import ImagePreprocess, calibration_data
from ..environment import cpu_description, package_version, tool_versions
from ..errors import MAX_SEED, ArgumentError, DeployError, DeployWarning, ExportError, ParityError, within
from ..fileio import Staging, clear_derived, sha256_file, sweep_temporaries
from ..models import EmbeddedPreprocess, create_model, get_spec
from ..models import pretrained
from ..models.archs import declare_preprocess
from ..parity.checks import check
from ..parity.compare import REFERENCE
from ..parity.golden import write_golden
from ..parity.inputs import InputSet, default_sets, random_batches, sets_summary
from ..parity.metrics import compare_arrays
from ..parity.results import RunResults, run
from ..parity.tolerances import Policy
from ..precisions import (
    ENGINE,
    ENGINE_SUFFIX,
    FP32,
    PRECISIONS,
    Fp16Options,
    Int8Options,
    engine_refusal,
    engine_source,
    file_precisions,
)
from ..progress import StepLog
from . import engine as trt_engine
from .. import onnxgraph
from . import mixed, quantize
from .job import Built, ExportPlan, Int8Made, Job, Step
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
        entry = self.manifest.artifact(FP32)
        return {
            "arch": self.manifest.arch,
            "onnx": str(self.onnx_path),
            "manifest": str(self.manifest_path),
            "bytes": entry.bytes if entry else None,
            "sha256": entry.sha256 if entry else None,
            "artifacts": [vars(a) | {"path": str(self.manifest_path.parent / a.file)} for a in self.manifest.artifacts],
            "seconds": round(self.seconds, 3),
            "timings": self.timings,
            "parity": [row.to_dict() for row in self.manifest.parity],
        }

    def to_text(self) -> str:
        """export's summary: each file with its size and how its gate's runner matched PyTorch; each precision
        without a file (bf16) with where it was verified or why not; the manifest and the time taken."""
        manifest = self.manifest
        lines = [line for entry in manifest.artifacts
                 for line in _gate_lines(manifest, entry.precision,
                                         f"{self.paths[entry.precision]} ({entry.bytes / 1e6:.1f} MB)")]
        for name in manifest.precision_options:  # precisions without a file: where their gate ran, if it did
            row = PRECISIONS.get(name)
            if row is not None and row.runs_file:
                computed = f"{self.paths[row.runs_file]} computed in {name}"
                options = manifest.options(name)
                lines += (_gate_lines(manifest, name, computed) if options.verified
                          else [f"{name}: {computed}: not verified here: {options.reason}"])
        lines.append(f"manifest {self.manifest_path}; done in {self.seconds:.1f} s")
        return "\n".join(lines)


def _gate_lines(manifest: Manifest, precision: str, what: str) -> list[str]:
    """How the ``precision`` gate's runner matched PyTorch, and its kernels' line where they were compared."""
    rows = [p for p in manifest.parity if p.artifact == precision and p.judged and p.reference == REFERENCE]
    lines = [f"{precision}: {what}, matches PyTorch on {rows[0].backend}: max |error| "
             f"{max(p.figures.rel_to_scale for p in rows):.1e} of output scale, "
             f"cosine {min(p.figures.cosine for p in rows):.6f}"]
    kernels = [p for p in manifest.parity if p.artifact == precision and p.reference != REFERENCE]
    if kernels:
        lines.append(f"      {kernels[0].backend} kernels vs {kernels[0].reference}: cosine "
                     f"{min(p.figures.cosine for p in kernels):.6f} ({'judged' if kernels[0].judged else 'reported'})")
    return lines


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


def _prepare_folder(out: str | os.PathLike[str], say: Callable[[str], None]) -> Path:
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
        say(f"removed {len(swept)} temporaries of exports that were killed: {', '.join(sorted(swept)[:3])}"
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


def _gate_runs(file_precision: str, judged_as: str) -> str:
    """The precision a gate runs: the file's own (on its format's first backend variant, ONNX Runtime on the CPU
    or TensorRT, so a gate means the same on every machine), or, where ``judged_as`` has no file of its own
    (bf16), that precision, on the variant that computes the file in it."""
    row = PRECISIONS.get(judged_as)
    return judged_as if row is not None and row.runs_file else file_precision


def _parity_gate(job: Job, path: Path, file_precision: str, manifest: Manifest,
                 judged_as: str | None = None) -> tuple[list[ParityRecord], list[str]]:
    """The artifact ``path`` against PyTorch on the gates' inputs: run, then judged by the policy of
    ``judged_as`` (default: ``file_precision``; an engine is judged as its source; the fp32 file as bf16
    where OpenVINO computes it in bf16).

    Returns the manifest's parity rows and notes; raises ParityError on the first judged row beyond the
    tolerance. INT8 ONNX is judged on the graph run as written, its CPU kernels against that (see
    :mod:`resnet_deploy.parity.int8`).
    """
    judged_as = judged_as or file_precision
    policy = Policy.make(judged_as, random_init=job.plan.random_init)
    reference = _reference(job)
    runs = _gate_runs(file_precision, judged_as)
    backend, variant = precision_variant(runs)
    checked = check(path, manifest, file_precision, policy, [(backend, variant)], reference, next(iter(reference.outputs)))
    failed = checked.first_failure
    if failed is not None:
        raise ParityError(
            f"{runs} artifact: {backend.title} disagrees with "
            f"{'PyTorch' if failed.reference == REFERENCE else failed.reference} ({failed.backend}) on "
            f"{failed.output!r} at batch {failed.batch} of {failed.inputs} images: " + "; ".join(failed.failures)
        )
    records = [ParityRecord(runs, row.backend, row.reference, row.inputs, row.judged, row.batch, row.output,
                            row.figures) for row in checked.rows]
    return records, policy.notes + checked.notes


def export_options(options: ExportOptions | None, keywords: dict[str, Any]) -> ExportOptions:
    """``options`` with ``keywords`` in place of its fields; ``fp16=True``-style precision flags join
    ``precisions``.

    Raises:
        ArgumentError: a keyword that is neither a field nor a precision flag.
    """
    keywords = dict(keywords)
    flagged = {name for name, row in PRECISIONS.items() if row.flag_help and keywords.pop(name, False)}
    unknown = sorted(set(keywords) - {f.name for f in fields(ExportOptions)})
    if unknown:
        raise ArgumentError(f"unknown export option(s) {unknown}")
    options = replace(options or ExportOptions(), **keywords)
    return replace(options, precisions=tuple(sorted(flagged | set(options.precisions))))


def _preprocess(arch: str, o: ExportOptions, height: int, width: int,
                published: pretrained.PublishedWeights | None) -> PreprocessRecord:
    """The manifest's preprocessing: the arch's, under a published tag's (scaled to the crop), under the
    user's; embedded where the graph normalises the pixels itself."""
    declared = {k: v for k, v in (o.preprocess or {}).items() if v is not None}
    if published is not None:  # the weights' own preprocessing, under the user's
        scale = published.preprocess["resize"] / 224  # published for a 224 crop
        declared = {**published.preprocess, "resize": int(round(min(height, width) * scale)), **declared}
    record = PreprocessRecord.from_dict(declare_preprocess(get_spec(arch).preprocess, height, width, **declared))
    if o.embed_preprocess:  # the input is the resized pixels; scale, mean/std and the transpose are in the graph
        record = replace(record, embedded=True, layout="NHWC")
    within("--resize", record.resize, 1, MAX_SIDE, "pixels of the shorter side before the crop")
    return record


def _int8_request(o: ExportOptions, calibrated: bool) -> ExportOptions:
    """``o`` with INT8's ``reduce_range`` decided for this CPU; the checks of the INT8-only options."""
    if calibrated:
        o = replace(o, reduce_range=quantize.resolve_reduce_range(o.int8_target, o.reduce_range))
    elif o.reduce_range is not None or o.max_drop is not None:
        raise ExportError("--reduce-range, --no-reduce-range and --max-drop go with --int8")
    if o.max_drop is not None and not 0 <= o.max_drop <= 100:
        raise ExportError(f"--max-drop {o.max_drop} is not a number of top-1 points between 0 and 100")
    if o.max_drop is not None and (o.features_only or o.num_classes == 0):
        raise ExportError("--max-drop measures top-1: it needs the classifier (not --features-only or --num-classes 0)")
    if o.eval_data is not None and (o.max_drop is None or not Path(o.eval_data).is_dir()):
        raise ExportError("--eval-data takes a folder of class folders, and goes with --max-drop")
    return o


def _fetch_weights(o: ExportOptions, published: pretrained.PublishedWeights | None,
                   say: Callable[[str], None]) -> tuple[ExportOptions, str | None]:
    """``o`` with a published tag's file (fetched, before the output folder exists: a failed download leaves
    nothing), and its sha256; says which weights the export has."""
    if o.weights is None:
        say(f"weights: RANDOM (seeded init, seed {o.seed}): the artifacts compute nothing useful; pass --weights "
            "FILE or a published tag (`resnet-deploy list --weights`) to export trained weights")
    if published is None:
        return o, None
    say(f"weights: {published.tag} ({published.url})")
    fetched, sha256 = pretrained.fetch(published, progress=None if o.quiet else pretrained.stderr_progress)
    return replace(o, weights=fetched), sha256


def _plan(arch: str, o: ExportOptions, say: Callable[[str], None]) -> ExportPlan:
    """Every check that needs no work, so bad input fails before a file is written; then what the steps
    start from: the published weights fetched, the output folder made."""
    profile = o.batch if isinstance(o.batch, BatchProfile) else BatchProfile.parse(o.batch)
    stem = check_stem(o.name or arch)
    height, width = parse_input_size(o.input_size, get_spec(arch).preprocess.input_size)
    within("--opset", o.opset, 13, onnx.defs.onnx_opset_version(),
           f"13 for per-channel quantization; onnx {onnx.__version__} knows up to {onnx.defs.onnx_opset_version()}")
    within("--seed", o.seed, 0, MAX_SEED)
    within("--calib-size", o.calib_size, 1, MAX_CALIBRATION_IMAGES)
    published = (pretrained.resolve(arch, str(o.weights))
                 if o.weights is not None and pretrained.is_tag(o.weights) else None)
    preprocess = _preprocess(arch, o, height, width, published)
    unknown = sorted(set(o.precisions) - set(PRECISIONS))
    if unknown:
        raise ArgumentError(f"unknown precision(s) {unknown}: choose from {', '.join(PRECISIONS)}")
    precisions = tuple(name for name in PRECISIONS if name == FP32 or name in o.precisions)
    calibrated = any(PRECISIONS[name].calibrated for name in precisions)
    calibration = None
    if calibrated:  # before the slow steps: a missing data set fails at once
        calibration = calibration_data(o.calib_data, preprocess=ImagePreprocess.from_manifest(preprocess),
                                       shape=(3, height, width), size=o.calib_size, seed=o.seed)
    o = _int8_request(o, calibrated)
    trt = runs_here(ENGINE)
    if o.engine and not trt.available:
        raise DeployError(f"--engine: cannot build a TensorRT engine here: {trt.reason}")
    if trt.available and o.engine is not False and o.build_options is not None:
        o.build_options.check(package_version("tensorrt"))  # an option this TensorRT lacks: said before the export
    random_init = o.weights is None
    o, weights_sha256 = _fetch_weights(o, published, say)
    return ExportPlan(arch=arch, options=o, stem=stem, profile=profile, shape=(3, height, width),
                      preprocess=preprocess, precisions=precisions, trt=trt, folder=_prepare_folder(o.out, say),
                      random_init=random_init, calibration=calibration, published=published,
                      weights_sha256=weights_sha256)


def _build_model(job: Job, log: StepLog) -> None:
    plan, o = job.plan, job.plan.options
    with torch.random.fork_rng():
        torch.manual_seed(o.seed)
        model = create_model(plan.arch, num_classes=o.num_classes, weights=o.weights,
                             features_only=o.features_only, last_stride=o.last_stride)
    pre = plan.preprocess
    exported = EmbeddedPreprocess(model, pre.mean, pre.std) if pre.embedded else model
    job.built = Built(model, exported, output_names(model))


def _to_onnx(job: Job, log: StepLog) -> None:
    plan, o = job.plan, job.plan.options
    job.raw = export_onnx(job.built.exported, input_hw=plan.shape[1:], in_chans=plan.shape[0],
                          outputs=job.built.outputs, opset=o.opset, exporter=o.exporter, dynamic_hw=o.dynamic_hw,
                          pixels=plan.preprocess.embedded)


def _simplify_and_check(job: Job, log: StepLog) -> None:
    """onnxsim, BatchNorm folding and onnx's full check of the file written. The exported graph is kept
    in memory until the fp32 gate passed: were it to fail, it says whether these passes are to blame."""
    final_path = job.staged[FP32] = job.staging.file(PRECISIONS[FP32].suffix)
    if job.plan.options.simplify:
        final = onnxgraph.simplify(job.raw)
    else:
        final = onnx.ModelProto()
        final.CopyFrom(job.raw)
    folded = onnxgraph.fold_batchnorm(final)
    onnx.save(final, str(final_path))
    onnxgraph.check_file(final_path)  # the file gains the inferred shapes; the graph in memory is the same
    job.final = final
    log.note(f"{len(job.final.graph.node)} nodes, BatchNorm folded here: {folded}, "
             f"left: {onnxgraph.op_histogram(job.final).get('BatchNormalization', 0)}")


def _fp16(job: Job, log: StepLog) -> None:
    path = job.staged["fp16"] = job.staging.file(PRECISIONS["fp16"].suffix)
    onnx.save(quantize.to_fp16(job.final), str(path))
    onnxgraph.check_file(path)
    job.precision_options["fp16"] = Fp16Options(tuple(quantize.FP16_KEEP_FP32_OPS)).to_record()


def _int8_title(job: Job) -> str:
    o, calibration = job.plan.options, job.plan.calibration
    held = f", {calibration.holdout_images} held out" if calibration.holdout_images else ""
    return (f"INT8 QDQ for {o.int8_target}{' with 7-bit weights' if o.reduce_range else ''}, "
            f"{o.calib_method} calibration on {calibration.images} images{held}")


def _range_cache(job: Job, fp32: Path) -> tuple[Path, Path]:
    """(the cache of this graph's activation ranges in the output folder, where the INT8 writer reads or
    measures them): the cache itself where it is usable, else a staged file that the commit puts in its place,
    so a failed export leaves none."""
    plan = job.plan
    cache = plan.folder / quantize.calibration_cache_name(plan.stem, sha256_file(fp32), plan.calibration,
                                                          plan.options.calib_method)
    cleared = clear_derived(cache)  # a FIFO or a device in the cache's place: calibrate again
    problem = (f"it was {cleared}" if cleared else quantize.range_cache_problem(cache) if cache.exists()
               else "missing")
    if problem not in (None, "missing"):
        warnings.warn(f"the range cache {cache.name} is not used: {problem}; calibrating again", DeployWarning,
                      stacklevel=3)
    return cache, cache if problem is None else job.staging.name(".json")


def _int8(job: Job, log: StepLog) -> None:
    o, calibration = job.plan.options, job.plan.calibration
    path = job.staged["int8"] = job.staging.file(PRECISIONS["int8"].suffix)
    fp32 = job.staged[FP32]
    cache, ranges = _range_cache(job, fp32)
    prepared = job.resources.enter_context(quantize.prepared_for_quantization(fp32))
    writer = quantize.Int8Writer(prepared, calibration, o.int8_target, o.calib_method, bool(o.reduce_range), ranges,
                                 lambda done, total: log.progress(done, total, "images"))
    # images the ranges never see: decoded once, for the mixed-precision measure and the gates
    holdout = calibration.holdout() if calibration.holdout else None
    from_cache = writer(path)
    measured = None
    if ranges != cache and ranges.exists():
        bad = quantize.range_cache_problem(ranges)
        if bad is not None:
            raise ExportError(f"calibration gave unusable activation ranges ({bad}): the calibration data holds "
                              "NaN or infinite values")
        measured = (ranges, cache)
    job.int8 = Int8Made(prepared, writer, holdout, measured)
    log.note(f"activation ranges {'read from' if from_cache else 'cached in'} {cache.name}")
    job.precision_options["int8"] = Int8Options(
        target=o.int8_target, method=o.calib_method, reduce_range=o.reduce_range, calibration=calibration.to_record(),
        range_cache=cache.name if from_cache or measured else None,
    ).to_record()


def _mixed(job: Job, log: StepLog) -> None:
    o = job.plan.options
    measure = mixed.DropMeasure.make(job.staged[FP32], o.eval_data, job.int8.holdout, job.plan.image_preprocess)
    chosen = mixed.quantize_within(
        job.int8.prepared, job.staged["int8"], block_names=[name for name, _ in job.built.model.block_points()][1:],
        max_drop=o.max_drop, measure=measure, quantize=job.int8.writer, on_progress=log.status,
    )
    log.note(mixed.summary(chosen))
    int8 = Int8Options.from_record(job.precision_options["int8"])
    job.precision_options["int8"] = replace(int8, mixed=chosen.to_dict()).to_record()


def _gate_sets(job: Job) -> list[InputSet]:
    """The gates' inputs: seeded random images at batch 1 and OPT, and the calibration hold-out where there
    is one (see :mod:`resnet_deploy.parity.inputs`); made at the first gate, after the conversions."""
    if job.gate_sets is None:
        plan = job.plan
        random = random_batches(_gate_batches(plan.profile), plan.image_preprocess, plan.options.seed)
        job.gate_sets = default_sets(random, job.int8.holdout if job.int8 else None, plan.profile)
    return job.gate_sets


def _reference(job: Job) -> RunResults:
    """PyTorch's outputs on the gates' inputs, run once (inside the first gate's step, so timed there)."""
    if job.reference is None:
        sets = _gate_sets(job)
        example = sets[0].batches[0]
        spec = TensorSpec("input", ["batch", *example.shape[1:]], example.dtype.name)
        job.reference = run([TorchRunner(job.built.exported, job.built.outputs, input_spec=spec)], sets)
    return job.reference


def _gate_summary(job: Job, precision: str) -> str:
    sets = _gate_sets(job)
    return sets_summary(sets, Policy.make(precision, random_init=job.plan.random_init).judges_in(sets))


def _blame_graph_passes(job: Job) -> str:
    """After a failed fp32 gate: whether simplification and BatchNorm folding changed what the exported
    graph computes (both run on ONNX Runtime), or the export itself already disagreed with PyTorch."""
    probe = job.plan.image_preprocess.random_inputs(2, seed=job.plan.options.seed)
    # the graphs in memory and in staging, not artifacts of a manifest: ONNX Runtime directly
    before = OnnxRuntimeRunner(job.raw.SerializeToString())(probe)
    after = OnnxRuntimeRunner(job.staged[FP32])(probe)
    for out_name in job.built.outputs:
        figures = compare_arrays(before[out_name], after[out_name])
        if not figures.finite or figures.rel_to_scale > SIMPLIFY_TOLERANCE:
            return (f"; simplification and BatchNorm folding changed the exported graph's {out_name!r} (max |error| "
                    f"{figures.rel_to_scale:.2e} of output scale): retry with --no-simplify")
    return "; the graph as exported already disagrees (simplification and BatchNorm folding changed nothing)"


def _gate_step(name: str) -> Step:
    """The parity gate of the ``name`` precision: its runtime against PyTorch, on its ONNX (or, for a precision
    without a file, on the file a runtime computes in it, where this machine can; the manifest records where)."""
    row = PRECISIONS[name]

    def run_gate(job: Job, log: StepLog) -> None:
        here = runs_here(name)
        if row.runs_file and not here.available:
            log.note(f"{name} not verified here: {here.reason}; verify "
                     f"{artifact_filename(job.plan.stem, row.runs_file)} on a machine that has it")
            job.precision_options[name] = row.options(verified=False, reason=here.reason).to_record()
            return
        try:
            rows, notes = _parity_gate(job, job.staged[row.file_precision], row.file_precision, _manifest(job),
                                       judged_as=name)
        except ParityError as exc:
            if name == FP32:
                raise ParityError(f"{exc}{_blame_graph_passes(job)}") from None
            raise
        if name == FP32:
            job.raw = None  # the exported graph is no longer needed
        if row.runs_file:
            job.precision_options[name] = row.options(verified=True, cpu=cpu_description()).to_record()
        job.parity += rows
        for note in notes:
            log.note(note)

    def title(job: Job) -> str:
        backend, variant = precision_variant(name)
        if row.runs_file and not runs_here(name).available:
            return f"parity gate {name}: not here ({variant.name} cannot run)"
        computed = f" computing {row.runs_file} in {name}" if row.runs_file else ""
        return f"parity gate {name}: {backend.title}{computed} vs PyTorch on {_gate_summary(job, name)}"

    return Step(title, run_gate, lambda plan: name in plan.precisions)


def _weights_record(plan: ExportPlan) -> dict[str, Any]:
    """The manifest's ``weights``: the file and its sha256 (and the published tag it came from), or the seed."""
    o = plan.options
    if o.weights is None:
        return {"init": "random", "seed": o.seed}
    published = {"published": plan.published.tag, "url": plan.published.url} if plan.published else {}
    return {"file": str(Path(o.weights).resolve()), "sha256": plan.weights_sha256 or sha256_file(o.weights),
            **published}


def _manifest(job: Job) -> Manifest:
    plan, o = job.plan, job.plan.options
    return Manifest(
        stem=plan.stem,
        arch=plan.arch,
        num_classes=0 if o.features_only else job.built.model.num_classes,
        model_options={"features_only": o.features_only, "last_stride": o.last_stride},
        weights=_weights_record(plan),
        input=_tensor_specs(job.final.graph.input)[0],
        preprocess=plan.preprocess,
        outputs=_tensor_specs(job.final.graph.output),
        batch=plan.profile,
        dynamic_hw=o.dynamic_hw,
        opset=o.opset,
        exporter=o.exporter,
        simplified=o.simplify,
        parity=job.parity,
        precision_options=job.precision_options,
        tools=tool_versions(),
    )


def _engine_source(job: Job) -> str:
    return engine_source(job.precision_options, set(job.plan.precisions))


def _engine(job: Job, log: StepLog) -> None:
    job.manifest = job.manifest or _manifest(job)
    source = _engine_source(job)
    path = job.staged[ENGINE] = job.staging.file(ENGINE_SUFFIX)
    job.manifest.precision_options[ENGINE] = trt_engine.build_engine(
        job.staged[source], path, trt_engine.profile_shapes(job.manifest),
        job.plan.options.build_options or trt_engine.BuildOptions(),
        built_from=artifact_filename(job.plan.stem, source))


def _engine_gate(job: Job, log: StepLog) -> None:
    rows, _ = _parity_gate(job, job.staged[ENGINE], ENGINE, job.manifest, judged_as=_engine_source(job))
    job.manifest.parity = [p for p in job.manifest.parity if p.artifact != ENGINE] + rows


def _commit(job: Job, log: StepLog) -> None:
    if job.plan.options.engine is None and not job.plan.build_engine:
        log.note(f"TensorRT engine not built: {job.plan.trt.reason}")
    job.manifest = job.manifest or _manifest(job)
    golden = job.staging.file(GOLDEN_SUFFIX)
    write_golden(golden, _reference(job))
    if job.int8 is not None and job.int8.range_cache is not None:
        job.staging.commit(*job.int8.range_cache)
    job.manifest_file = commit_artifacts(job.staging, job.staged, job.manifest, golden=golden)


# Each reduced precision's conversion from the checked fp32 graph: (progress title, work). A new precision
# is a row of resnet_deploy.precisions and its converter here; its flag, gate and record follow from the row.
CONVERTERS: dict[str, tuple[Callable[[Job], str], Callable[[Job, StepLog], None]]] = {
    "fp16": (lambda job: "convert to FP16 (float32 I/O; InstanceNorm and Softmax kept in float32)", _fp16),
    "int8": (_int8_title, _int8),
}
assert set(CONVERTERS) == set(file_precisions()) - {FP32}, "every precision with a file but fp32 needs its converter"


def _converter_step(name: str) -> Step:
    title, work = CONVERTERS[name]
    return Step(title, work, lambda plan: name in plan.precisions)


# The engine and its gate: the export's last steps where TensorRT is here, and all of `build`'s.
ENGINE_STEPS: list[Step] = [
    Step(lambda job: f"build TensorRT engine from the {_engine_source(job)} ONNX", _engine,
         lambda plan: plan.build_engine),
    Step(lambda job: f"parity gate engine: TensorRT vs PyTorch on {_gate_summary(job, _engine_source(job))}",
         _engine_gate, lambda plan: plan.build_engine),
]

# The export, in order. A step is named, timed and counted by the one loop in _run_steps().
STEPS: list[Step] = [
    Step(lambda job: f"build {job.plan.arch}", _build_model),
    Step(lambda job: f"export to ONNX ({job.plan.options.exporter}, opset {job.plan.options.opset})", _to_onnx),
    Step(lambda job: "simplify and check" if job.plan.options.simplify else "check", _simplify_and_check),
    *[_converter_step(name) for name in PRECISIONS if name in CONVERTERS],
    Step(lambda job: f"mixed precision: INT8 within {job.plan.options.max_drop} top-1 points", _mixed,
         lambda plan: plan.options.max_drop is not None),
    *[_gate_step(name) for name in PRECISIONS],
    *ENGINE_STEPS,
    Step(lambda job: "write golden outputs and manifest", _commit),
]


def _run_steps(job: Job, steps: list[Step], log: StepLog) -> None:
    """``steps`` in order, each on the progress line, in the staging of the plan's folder."""
    with Staging(job.plan.folder) as job.staging, job.resources:
        for step in steps:
            with log.step(step.title(job)):
                step.run(job, log)


def export(arch: str, options: ExportOptions | None = None, **keywords: Any) -> ExportResult:
    """Export ``arch`` to ``out/STEM.onnx``, its reduced precisions and its manifest ``out/STEM.json``,
    each artifact gated on parity with PyTorch before anything is written.

    Args:
        arch: a name from :func:`resnet_deploy.models.list_models`.
        options: the typed request (:class:`ExportOptions`, frozen); keywords replace its fields.
        **keywords: the fields of :class:`ExportOptions`, and a keyword per precision row with a flag
            (``fp16=True`` writes ``STEM.fp16.onnx``, ``int8=True`` ``STEM.int8.onnx``). Among them:
            ``calib_data``, INT8's calibration (a folder of images, a preprocessed .npy batch, or
            ``"random"`` on purpose, with ``calib_method``; with real data a seeded fifth is held out of
            the ranges, and reduced precisions are judged on it); ``int8_target``, "trt" for TensorRT's
            symmetric signed activations or "cpu" for ONNX Runtime's x86 kernels (7-bit weights,
            ``reduce_range``, on CPUs without VNNI unless told otherwise); ``max_drop``, leave the most
            sensitive units in float until INT8 loses at most this many top-1 points on labelled
            ``eval_data`` or the hold-out (:mod:`.mixed`); ``preprocess``, the normalisation the weights
            were trained with (keywords of :func:`~resnet_deploy.models.archs.declare_preprocess`);
            ``engine``, True demands a TensorRT engine (an error before any work where one cannot be
            built), False skips it, None builds one where possible and says why not otherwise.

    Returns:
        The :class:`ExportResult`: paths, the manifest with its parity rows, step timings.

    Raises:
        ExportError (or another DeployError): bad input, before any work where it can be told.
        ParityError: an artifact disagrees with PyTorch. In every failure no new file is left in ``out``.
    """
    start = time.perf_counter()
    request = export_options(options, keywords)
    plan = _plan(arch, request, StepLog(0, quiet=request.quiet).say)  # its lines come before the steps are counted
    steps = [step for step in STEPS if step.runs_for(plan)]
    log = StepLog(len(steps), quiet=plan.options.quiet)
    job = Job(plan)
    _run_steps(job, steps, log)
    return ExportResult(
        onnx_path=plan.folder / job.manifest.artifact(FP32).file,
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
    """Build ``STEM.engine`` from an exported ONNX artifact, gate it against PyTorch, add it to the manifest:
    the export's engine steps, on an export already made.

    Args:
        onnx_path: an ONNX artifact of an export (``STEM.onnx``, ``STEM.fp16.onnx``, ``STEM.int8.onnx``).
        options: TensorRT build options (workspace, timing cache, DLA, compatibility).
        seed: seed of the gate's random inputs.
        quiet: no progress on stderr.

    Returns:
        The engine's path.

    Raises:
        DeployError: TensorRT cannot build here, or the file is not an ONNX artifact TensorRT takes.
        ParityError: the engine disagrees with PyTorch (nothing is written).
    """
    from ..artifacts import manifest_for

    trt = runs_here(ENGINE)
    if not trt.available:
        raise DeployError(f"cannot build a TensorRT engine here: {trt.reason}")
    onnx_path = Path(onnx_path)
    manifest, source = manifest_for(onnx_path)
    if source == ENGINE:
        raise DeployError(f"{onnx_path.name} is an engine already; give the ONNX it should be built from")
    refusal = engine_refusal(source, manifest.precision_options)
    if refusal:
        raise DeployError(f"{onnx_path.name}: {refusal}")
    if options is not None:
        options.check(package_version("tensorrt"))
    reference = reference_model(manifest)
    request = ExportOptions(seed=seed, engine=True, build_options=options, quiet=quiet)
    plan = ExportPlan(arch=manifest.arch, options=request, stem=manifest.stem, profile=manifest.batch, shape=manifest.example_shape,
                      preprocess=manifest.preprocess, precisions=(source,), trt=trt, folder=onnx_path.parent,
                      random_init=manifest.random_init)
    job = Job(plan, built=Built(reference, reference, [o.name for o in manifest.outputs]),
              staged={source: onnx_path}, precision_options=manifest.precision_options, manifest=manifest)
    sweep_temporaries(plan.folder)
    log = StepLog(len(ENGINE_STEPS) + 1, quiet=quiet)
    commit = Step(lambda _job: "write manifest", lambda job, _log: commit_artifacts(
        job.staging, {ENGINE: job.staged[ENGINE]}, job.manifest, keep_others=True))
    _run_steps(job, [*ENGINE_STEPS, commit], log)
    return plan.folder / artifact_filename(manifest.stem, ENGINE)
