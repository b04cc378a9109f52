"""The export pipeline: model -> ONNX -> simplified, checked ONNX -> parity gate -> manifest.

Nothing reaches its final name before every check has passed: files are
written under temporary names in the output folder and committed together,
manifest last, by :func:`resnet_deploy.artifacts.commit_artifacts`.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ..artifacts import (
    GOLDEN_SUFFIX,
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
from ..environment import tool_versions
from ..errors import DeployError, ExportError, ParityError, within
from ..fileio import TEMP_PREFIX, sha256_file
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
from ..progress import StepLog
from . import engine as trt_engine
from . import graph, mixed, precision
from .torch2onnx import export_onnx, output_names

DEFAULT_OPSET = 18
DEFAULT_BATCH = "1:8:32"
# simplified vs unsimplified graph, both on ONNX Runtime: only reordering may differ
SIMPLIFY_TOLERANCE = 1e-5
MAX_SIDE = 4096  # input pixels per side
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


def _prepare_folder(out: str | os.PathLike[str]) -> Path:
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=TEMP_PREFIX, delete=True)
        probe.close()
    except OSError as exc:
        raise ExportError(f"cannot write to output folder {folder}: {exc.strerror or exc}") from None
    return folder


def _staged_file(folder: Path, suffix: str) -> Path:
    fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=folder)
    os.close(fd)
    return Path(name)


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
        checks, int8_notes = int8_checks(candidate, int8_options or {}, tolerance, [OnnxRuntimeRunner(candidate)])
        notes += int8_notes
    else:
        checks = [Check(OnnxRuntimeRunner(candidate) if isinstance(candidate, Path) else candidate, tolerance)]
    runtime = "TensorRT" if kind == "engine" else "ONNX Runtime"
    results, _outputs = run_checks(reference, checks, inputs.sets(precision))
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


def export(
    arch: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    input_size: int | str | tuple[int, int] | None = None,
    batch: str | BatchProfile = DEFAULT_BATCH,
    dynamic_hw: bool = False,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    simplify: bool = True,
    out: str | os.PathLike[str] = "artifacts",
    name: str | None = None,
    seed: int = 0,
    features_only: bool = False,
    last_stride: int = 2,
    fp16: bool = False,
    int8: bool = False,
    calib_data: str | os.PathLike[str] | None = None,
    calib_size: int = 512,
    calib_method: str = "minmax",
    int8_target: str = "trt",
    reduce_range: bool | None = None,
    max_drop: float | None = None,
    eval_data: str | os.PathLike[str] | None = None,
    preprocess: dict[str, Any] | None = None,
    engine: bool | None = None,
    build_options: trt_engine.BuildOptions | None = None,
    quiet: bool = False,
) -> ExportResult:
    """Export ``arch`` to ``out/STEM.onnx`` (``STEM.fp16.onnx`` with ``fp16``, ``STEM.int8.onnx``
    with ``int8``) and its manifest ``out/STEM.json``.

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
    profile = batch if isinstance(batch, BatchProfile) else BatchProfile.parse(batch)
    stem = check_stem(name or arch)
    spec = get_spec(arch)
    height, width = parse_input_size(input_size, spec.preprocess.input_size)
    within("--opset", opset, 13, onnx.defs.onnx_opset_version(),
           f"13 for per-channel quantization; onnx {onnx.__version__} knows up to {onnx.defs.onnx_opset_version()}")
    within("--seed", seed, 0, 2**32 - 1)
    within("--calib-size", calib_size, 1, MAX_CALIBRATION_IMAGES)
    declared = {k: v for k, v in (preprocess or {}).items() if v is not None}
    published = pretrained.resolve(arch, str(weights)) if weights is not None and pretrained.is_tag(weights) else None
    if published is not None:  # the weights' own preprocessing, under the user's
        scale = published.preprocess["resize"] / 224  # published for a 224 crop
        declared = {**published.preprocess, "resize": int(round(min(height, width) * scale)), **declared}
    record = declare_preprocess(spec.preprocess, height, width, **declared)
    image_preprocess = ImagePreprocess.from_manifest(record)
    calibration = None
    if int8:  # checked before the slow steps: a missing data set should fail at once
        calibration = calibration_data(
            calib_data, preprocess=image_preprocess, shape=(3, height, width), size=calib_size, seed=seed,
        )
        reduce_range = precision.resolve_reduce_range(int8_target, reduce_range)
    elif reduce_range is not None or max_drop is not None:
        raise ExportError("--reduce-range, --no-reduce-range and --max-drop go with --int8")
    if max_drop is not None and not 0 <= max_drop <= 100:
        raise ExportError(f"--max-drop {max_drop} is not a number of top-1 points between 0 and 100")
    if max_drop is not None and (features_only or num_classes == 0):
        raise ExportError("--max-drop measures top-1: it needs the classifier (not --features-only or --num-classes 0)")
    if eval_data is not None and (max_drop is None or not Path(eval_data).is_dir()):
        raise ExportError("--eval-data takes a folder of class folders, and goes with --max-drop")
    trt = detect.tensorrt()
    if engine and not trt.available:
        raise DeployError(f"--engine: cannot build a TensorRT engine here: {trt.reason}")
    build_engine_here = trt.available and engine is not False
    log = StepLog(5 + 2 * fp16 + 2 * int8 + (max_drop is not None) + 2 * build_engine_here, quiet=quiet)
    weights_sha256 = None
    if weights is None:
        log.say(f"weights: RANDOM (seeded init, seed {seed}): the artifacts compute nothing useful; pass --weights "
                "FILE or a published tag (`resnet-deploy list --weights`) to export trained weights")
    elif published is not None:  # before the output folder exists: a failed download leaves nothing
        log.say(f"weights: {published.tag} ({published.url})")
        weights, weights_sha256 = pretrained.fetch(published, progress=None if quiet else pretrained.stderr_progress)
    folder = _prepare_folder(out)
    staged: list[Path] = []
    artifacts: dict[str, Path] = {}
    precision_options: dict[str, Any] = {}
    try:
        with log.step(f"build {arch}"):
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = create_model(
                    arch, num_classes=num_classes, weights=weights, features_only=features_only, last_stride=last_stride
                )
        classes = 0 if features_only else model.num_classes
        outputs = output_names(num_classes=classes, features_only=features_only)

        raw_path = _staged_file(folder, ".raw.onnx")
        staged.append(raw_path)
        with log.step(f"export to ONNX ({exporter}, opset {opset})"):
            export_onnx(
                model, raw_path, input_hw=(height, width), in_chans=3, outputs=outputs,
                opset=opset, exporter=exporter, dynamic_hw=dynamic_hw,
            )

        final_path = _staged_file(folder, ".onnx")
        staged.append(final_path)
        artifacts["fp32"] = final_path
        with log.step("simplify and check" if simplify else "check"):
            raw = onnx.load(str(raw_path))
            final = graph.simplify(raw) if simplify else raw
            folded = graph.fold_batchnorm(final)
            final = graph.check(final)
            onnx.save(final, str(final_path))
            probe = random_images(2, (3, height, width), image_preprocess.mean, image_preprocess.std, seed=seed)
            before = OnnxRuntimeRunner(raw_path)(probe)
            after = OnnxRuntimeRunner(final_path)(probe)
            for out_name in outputs:
                figures = compare_arrays(before[out_name], after[out_name])
                if not figures.finite or figures.rel_to_scale > SIMPLIFY_TOLERANCE:
                    raise ExportError(
                        f"the simplified graph differs from the exported one on {out_name!r} "
                        f"(max |error| {figures.rel_to_scale:.2e} of output scale); retry with --no-simplify"
                    )
            raw_path.unlink()
            staged.remove(raw_path)
            log.note(f"{len(final.graph.node)} nodes, BatchNorm folded here: {folded}, "
                     f"left: {graph.op_histogram(final).get('BatchNormalization', 0)}")

        if fp16:
            fp16_path = _staged_file(folder, ".fp16.onnx")
            staged.append(fp16_path)
            artifacts["fp16"] = fp16_path
            with log.step("convert to FP16 (float32 I/O; InstanceNorm and Softmax kept in float32)"):
                onnx.save(precision.to_fp16(final), str(fp16_path))
            precision_options["fp16"] = {"keep_fp32_ops": list(precision.FP16_KEEP_FP32_OPS)}

        # images the ranges never see: decoded once, for the mixed-precision measure and the gate
        holdout = calibration.holdout() if calibration is not None and calibration.holdout else None
        if calibration is not None:
            int8_path = _staged_file(folder, ".int8.onnx")
            staged.append(int8_path)
            artifacts["int8"] = int8_path
            cache = folder / precision.calibration_cache_name(stem, sha256_file(final_path), calibration, calib_method)
            held = f", {calibration.holdout_images} held out" if calibration.holdout_images else ""
            with precision.prepared_for_quantization(final_path) as prepared:
                def quantize(out: Path, keep_float: list[str]) -> bool:
                    return precision.to_int8(
                        prepared, out, calibration, target=int8_target, method=calib_method, cache_path=cache,
                        reduce_range=reduce_range, keep_float=keep_float,
                        on_progress=lambda done, total: log.progress(done, total, "images"),
                    )

                with log.step(f"INT8 QDQ for {int8_target}{' with 7-bit weights' if reduce_range else ''}, "
                              f"{calib_method} calibration on {calibration.images} images{held}"):
                    from_cache = quantize(int8_path, [])
                    log.note(f"activation ranges {'read from' if from_cache else 'cached in'} {cache.name}")
                precision_options["int8"] = {
                    **precision.int8_record(int8_target, calib_method, reduce_range),
                    "calibration": calibration.describe(), "range_cache": cache.name if cache.exists() else None,
                }
                if max_drop is not None:
                    with log.step(f"mixed precision: INT8 within {max_drop} top-1 points"):
                        measure = mixed.DropMeasure.make(final_path, eval_data, holdout, image_preprocess)
                        chosen = mixed.quantize_within(
                            prepared, int8_path, block_names=[name for name, _ in torch_points(model)][1:],
                            max_drop=max_drop, measure=measure, quantize=quantize, on_progress=log.status,
                        )
                        log.note(mixed.describe(chosen))
                    precision_options["int8"]["mixed"] = chosen.to_dict()

        parity = []
        reference = Memoized(TorchRunner(model, outputs))
        gate_inputs = GateInputs.make(profile, (3, height, width), image_preprocess, seed, holdout)
        for kind, path in artifacts.items():
            with log.step(f"parity gate {kind}: ONNX Runtime vs PyTorch on {gate_inputs.describe(kind)}"):
                rows, notes = _parity_gate(reference, kind, path, gate_inputs, random_init=weights is None,
                                           int8_options=precision_options.get("int8"))
                parity += rows
                for note in notes:
                    log.note(note)

        manifest = Manifest(
            stem=stem,
            arch=arch,
            num_classes=classes,
            model_options={"features_only": features_only, "last_stride": last_stride},
            weights=(
                {"file": str(Path(weights).resolve()), "sha256": weights_sha256 or sha256_file(weights),
                 **({"published": published.tag, "url": published.url} if published else {})}
                if weights is not None
                else {"init": "random", "seed": seed}
            ),
            input=_tensor_specs(final.graph.input)[0],
            preprocess=record,
            outputs=_tensor_specs(final.graph.output),
            batch=profile,
            dynamic_hw=dynamic_hw,
            opset=opset,
            exporter=exporter,
            simplified=simplify,
            parity=parity,
            precision_options=precision_options,
            tools=tool_versions(),
        )
        if build_engine_here:
            source = trt_engine.engine_source(set(artifacts), int8_target if int8 else None)
            engine_path = _staged_file(folder, ".engine")
            staged.append(engine_path)
            with log.step(f"build TensorRT engine from the {source} ONNX"):
                manifest.precision_options["engine"] = trt_engine.build_engine(
                    artifacts[source], engine_path, trt_engine.profile_shapes(manifest),
                    build_options or trt_engine.BuildOptions(), built_from=artifact_filename(stem, source),
                )
            artifacts["engine"] = engine_path
            with log.step(f"parity gate engine: TensorRT vs PyTorch on {gate_inputs.describe(source)}"):
                manifest.parity += _parity_gate(reference, "engine", TensorRTRunner(engine_path), gate_inputs,
                                                random_init=weights is None, precision=source)[0]
        elif engine is None:
            log.note(f"TensorRT engine not built: {trt.reason}")

        with log.step("write golden outputs and manifest"):
            golden = _staged_file(folder, GOLDEN_SUFFIX)
            staged.append(golden)
            write_golden(golden, gate_inputs.sets("fp32"), reference)
            manifest_file = commit_artifacts(folder, artifacts, manifest, golden=golden)
            staged.clear()
    finally:
        for path in staged:
            path.unlink(missing_ok=True)
    return ExportResult(
        onnx_path=folder / manifest.artifact("fp32").file,
        manifest_path=manifest_file,
        manifest=manifest,
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
    if source == "engine":
        raise DeployError(f"{onnx_path.name} is an engine already; give the ONNX it should be built from")
    if source == "int8" and manifest.precision_options.get("int8", {}).get("target") != "trt":
        raise DeployError(f"{onnx_path.name} was quantized for the cpu target (unsigned activations), which "
                          "TensorRT's explicit quantization does not take: re-export with --int8-target trt")
    folder, log = onnx_path.parent, StepLog(3, quiet=quiet)
    engine_path = _staged_file(folder, ".engine")
    try:
        with log.step(f"build TensorRT engine from {onnx_path.name}"):
            manifest.precision_options["engine"] = trt_engine.build_engine(
                onnx_path, engine_path, trt_engine.profile_shapes(manifest), options or trt_engine.BuildOptions(),
                built_from=onnx_path.name,
            )
        shape = (3, *manifest.preprocess["crop"])
        reference = Memoized(TorchRunner(reference_model(manifest), [o.name for o in manifest.outputs]))
        inputs = GateInputs.make(manifest.batch, shape, ImagePreprocess.from_manifest(manifest.preprocess), seed)
        with log.step(f"parity gate engine: TensorRT vs PyTorch on {inputs.describe(source)}"):
            manifest.parity = [p for p in manifest.parity if p["artifact"] != "engine"] + _parity_gate(
                reference, "engine", TensorRTRunner(engine_path), inputs,
                random_init="file" not in manifest.weights, precision=source,
            )[0]
        with log.step("write manifest"):
            commit_artifacts(folder, {"engine": engine_path}, manifest, keep_others=True)
    finally:
        engine_path.unlink(missing_ok=True)
    return folder / artifact_filename(manifest.stem, "engine")
