"""Artifacts on disk: naming, the manifest that describes them, and committing them.

An export folder holds ``STEM.onnx`` (and ``STEM.fp16.onnx``, ``STEM.int8.onnx``,
``STEM.engine``) beside ``STEM.json``, the manifest. Every later step (verify,
build, bench, serving) reads the manifest instead of asking the user again.
The manifest is written last and removed first, so it never describes a file
that is missing or different.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import ArtifactError
from .fileio import Record, Staging, atomic_open, from_record, sha256_file, special_file
from .precisions import ENGINE, ENGINE_SUFFIX, PRECISIONS

SCHEMA = "resnet-deploy/manifest"
SCHEMA_VERSION = 1
STEM_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
# artifact kind (a precision's ONNX, or the engine) -> file suffix after the stem
ARTIFACT_SUFFIXES = {name: p.suffix for name, p in PRECISIONS.items() if p.suffix} | {ENGINE: ENGINE_SUFFIX}
MAX_BATCH = 4096  # the largest batch a profile may name
MAX_SIDE = 4096  # input pixels per side (the crop and the resize before it)
# PyTorch's outputs on the export's check inputs, for verifying where PyTorch is not installed
GOLDEN_SUFFIX = ".golden.npz"


def check_stem(stem: str) -> str:
    if not STEM_PATTERN.match(stem):
        raise ArtifactError(
            f"invalid artifact name {stem!r}: use letters, digits, '_' and '-' (no dots, they separate the precision)"
        )
    return stem


def artifact_filename(stem: str, precision: str) -> str:
    """``resnet50`` + ``fp16`` -> ``resnet50.fp16.onnx``."""
    return check_stem(stem) + ARTIFACT_SUFFIXES[precision]


def split_artifact_name(path: str | os.PathLike[str]) -> tuple[str, str]:
    """``artifacts/resnet50.fp16.onnx`` -> (``resnet50``, ``fp16``)."""
    name = Path(path).name
    for precision, suffix in sorted(ARTIFACT_SUFFIXES.items(), key=lambda item: -len(item[1])):
        if name.endswith(suffix) and STEM_PATTERN.match(name[: -len(suffix)]):
            return name[: -len(suffix)], precision
    raise ArtifactError(f"{name} is not an artifact name this toolkit writes (STEM.onnx, STEM.fp16.onnx, ...)")


def manifest_path(folder: str | os.PathLike[str], stem: str) -> Path:
    return Path(folder) / f"{stem}.json"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class TensorSpec:
    name: str
    shape: list[int | str]  # symbolic dims by name ("batch", "height", "width")
    dtype: str = "float32"


@dataclass
class BatchProfile:
    """TensorRT-style min/opt/max batch sizes the artifact is built and checked for."""

    min: int = 1
    opt: int = 8
    max: int = 32

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """``"1:8:32"`` -> BatchProfile(1, 8, 32); ``"4"`` -> fixed 4:4:4."""
        parts = text.split(":")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) == 1:
            values = values * 3
        if len(values) != 3:
            raise ArtifactError(f"invalid batch profile {text!r}: expected MIN:OPT:MAX, e.g. 1:8:32")
        profile = cls(*values)
        if not profile.valid():
            raise ArtifactError(f"invalid batch profile {text!r}: need 1 <= MIN <= OPT <= MAX <= {MAX_BATCH}")
        return profile

    def valid(self) -> bool:
        """Whole numbers with 1 <= MIN <= OPT <= MAX <= MAX_BATCH: what every later step relies on."""
        sizes = (self.min, self.opt, self.max)
        return all(_is_int(v) for v in sizes) and 1 <= self.min <= self.opt <= self.max <= MAX_BATCH

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


DEFAULT_PROFILE = BatchProfile()  # 1:8:32: what export builds and checks unless told
LARGEST_RUN_BATCH = DEFAULT_PROFILE.max  # the largest batch predict and serve form where a profile allows more
LOGITS, FEATURES = "logits", "features"  # the output of a classifier; of a backbone (num_classes=0)


@dataclass
class ArtifactEntry:
    file: str  # name inside the manifest's folder
    precision: str
    bytes: int
    sha256: str

    @classmethod
    def of_file(cls, path: Path, precision: str) -> ArtifactEntry:
        return cls(file=path.name, precision=precision, bytes=path.stat().st_size, sha256=sha256_file(path))


@dataclass(frozen=True, eq=False)
class PreprocessRecord(Record):
    """The manifest's ``preprocess``: how an image becomes the input, what calibration, the gates, verify,
    predict and serve all apply (:class:`~resnet_deploy.imageprep.ImagePreprocess` runs it). ``embedded``: the
    graph scales and normalises uint8 NHWC pixels itself; written only where true."""

    resize: int  # the shorter side, before the centre crop
    crop: tuple[int, int]  # H, W
    interpolation: str
    scale: float  # of the uint8 pixels, before mean/std
    mean: tuple[float, ...]
    std: tuple[float, ...]
    layout: str  # NCHW, or NHWC where embedded
    color: str
    embedded: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if not self.embedded:
            del data["embedded"]
        return data


@dataclass(frozen=True, eq=False)
class ErrorFigures(Record):
    """How a candidate output differs from a reference (:func:`resnet_deploy.parity.metrics.compare_arrays`)."""

    max_abs: float
    mean_abs: float
    median_abs: float
    p99_abs: float
    max_rel: float  # max |a - b| / (|b| + eps) elementwise
    scale: float  # max |reference|
    rel_to_scale: float  # max_abs / scale
    cosine: float
    top1_agreement: float | None  # for (N, classes) outputs
    top5_overlap: float | None
    finite: bool


@dataclass(frozen=True, eq=False)
class ParityRecord(Record):
    """A row of the manifest's ``parity``: how ``backend``, running the file of ``artifact``, matched
    ``reference`` (PyTorch, or another runner) on one output at one batch of one input set. Written flat,
    the figures after the labels, as a reader of the JSON wants it."""

    artifact: str  # the precision the row judges (bf16: the fp32 file computed in bf16)
    backend: str
    reference: str
    inputs: str  # which input set (see parity.inputs)
    judged: bool  # False: reported only
    batch: int
    output: str
    figures: ErrorFigures

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParityRecord:
        """The row from its flat JSON object.

        Args:
            data: the JSON object as read.

        Returns:
            The record, its figures typed.
        """
        return from_record(cls, {**data, "figures": from_record(ErrorFigures, data)})

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        figures = data.pop("figures")
        return {**data, **figures}


@dataclass
class Manifest:
    """Everything needed to rebuild the reference and to run an artifact."""

    stem: str
    arch: str
    num_classes: int
    model_options: dict[str, Any]  # in_chans, last_stride, features_only
    weights: dict[str, Any]  # {"file", "sha256"} or {"init": "random", "seed": N}
    input: TensorSpec
    preprocess: PreprocessRecord
    outputs: list[TensorSpec]
    batch: BatchProfile
    dynamic_hw: bool
    opset: int
    exporter: str
    simplified: bool
    artifacts: list[ArtifactEntry] = field(default_factory=list)
    parity: list[ParityRecord] = field(default_factory=list)
    precision_options: dict[str, Any] = field(default_factory=dict)  # per precision: how it was made
    golden: dict[str, Any] = field(default_factory=dict)  # {"file", "bytes", "sha256"}: PyTorch's outputs
    tools: dict[str, str] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema: str = SCHEMA
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written as ``STEM.json``: the records as the objects they are written as."""
        return asdict(self) | {"preprocess": self.preprocess.to_dict(), "parity": [r.to_dict() for r in self.parity]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "manifest") -> Manifest:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ArtifactError(f"{source} is not a resnet-deploy manifest")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ArtifactError(
                f"{source} has manifest schema version {data.get('schema_version')}; "
                f"this resnet-deploy reads version {SCHEMA_VERSION}: re-export the model"
            )
        try:
            fields = dict(data)
            fields["input"] = TensorSpec(**data["input"])
            fields["outputs"] = [TensorSpec(**o) for o in data["outputs"]]
            fields["batch"] = BatchProfile(**data["batch"])
            fields["preprocess"] = PreprocessRecord.from_dict(data["preprocess"])
            fields["parity"] = [ParityRecord.from_dict(row) for row in data.get("parity", [])]
            fields["artifacts"] = [ArtifactEntry(**a) for a in data.get("artifacts", [])]
            manifest = cls(**fields)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ArtifactError(f"{source} is malformed: {exc}") from None
        problems = manifest.problems()
        if problems:
            raise ArtifactError(f"{source} is malformed: {'; '.join(problems)}")
        return manifest

    def problems(self) -> list[str]:
        """What is wrong with the fields later steps compute with (a hand-edited or damaged manifest), so
        that it is refused in one line when read rather than met as a traceback or a huge allocation."""
        found = []
        if not self.batch.valid():
            batch = [self.batch.min, self.batch.opt, self.batch.max]
            found.append(f"batch {batch} is not 1 <= MIN <= OPT <= MAX <= {MAX_BATCH}")
        if not _is_int(self.num_classes) or self.num_classes < 0:
            found.append(f"num_classes {self.num_classes!r} is not a count")
        preprocess = self.preprocess.to_dict()  # as read: a damaged value is named as it was written
        crop, resize = preprocess.get("crop"), preprocess.get("resize")
        crop_ok = isinstance(crop, list) and len(crop) == 2 and all(_is_int(v) and 1 <= v <= MAX_SIDE for v in crop)
        if not crop_ok:
            found.append(f"preprocess crop {crop!r} is not [H, W] of 1 to {MAX_SIDE} pixels")
        if not _is_int(resize) or not (min(crop) if crop_ok else 1) <= resize <= MAX_SIDE:
            found.append(f"preprocess resize {resize!r} is not a side from the crop's to {MAX_SIDE} pixels")
        for key in ("mean", "std"):
            values = preprocess.get(key)
            if not isinstance(values, list) or not values or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values) \
                    or (key == "std" and min(values) <= 0):
                found.append(f"preprocess {key} {values!r} is not a list of finite numbers" +
                             (" above 0" if key == "std" else ""))
        return found

    @property
    def random_init(self) -> bool:
        """Exported from seeded random weights, not a checkpoint."""
        return "file" not in self.weights

    @property
    def embedded_preprocess(self) -> bool:
        """The graph scales, normalises and transposes itself: its input is uint8 NHWC pixels."""
        return bool(self.preprocess.embedded)

    @property
    def example_shape(self) -> tuple[int, int, int]:
        """One input image's shape in the input's layout, (C, H, W), or (H, W, C) where the preprocessing is
        embedded: the input's channels and the export's crop (H and W may be symbolic in the graph with
        --dynamic-hw; the crop is the size the export checked)."""
        height, width = self.preprocess.crop
        if self.embedded_preprocess:
            return height, width, int(self.input.shape[3])
        return int(self.input.shape[1]), height, width

    def options(self, precision: str) -> Any:
        """How the artifact of ``precision`` was made, typed (:mod:`resnet_deploy.precisions`); None where
        its precision has no options."""
        return PRECISIONS[precision].read_options(self.precision_options)

    @property
    def calibration(self) -> dict[str, Any]:
        """The calibration the export's reduced precisions were made with (data, images, hold-out); {} if none."""
        made = (self.options(name) for name in PRECISIONS if name in self.precision_options)
        return next((o.calibration for o in made if getattr(o, "calibration", None)), {})

    def artifact(self, precision: str) -> ArtifactEntry | None:
        return next((a for a in self.artifacts if a.precision == precision), None)


def write_manifest(manifest: Manifest, folder: str | os.PathLike[str]) -> Path:
    path = manifest_path(folder, manifest.stem)
    with atomic_open(path, "w") as handle:
        json.dump(manifest.to_dict(), handle, indent=2)
        handle.write("\n")
    return path


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    path = Path(path)
    kind = special_file(path)
    if kind is not None:
        raise ArtifactError(f"manifest {path} is {kind}, not a regular file: export the model again")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"manifest {path} not found: export the model with `resnet-deploy export`") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read manifest {path}: {exc}") from None
    return Manifest.from_dict(data, source=str(path))


def open_artifact(artifact: str | os.PathLike[str]) -> tuple[Manifest, str, str | None]:
    """The manifest beside an artifact file, the artifact's precision, and why its bytes are not
    the ones the manifest recorded (None when they are)."""
    artifact = Path(artifact)
    if not artifact.is_file():
        kind = special_file(artifact)
        raise ArtifactError(f"artifact {artifact} " + (f"is {kind}, not a regular file" if kind else "does not exist"))
    stem, precision = split_artifact_name(artifact)
    manifest = read_manifest(manifest_path(artifact.parent, stem))
    entry = manifest.artifact(precision)
    if entry is None or entry.file != artifact.name:
        raise ArtifactError(f"{artifact.name} is not listed in {stem}.json: re-export it")
    digest = sha256_file(artifact)
    changed = None if digest == entry.sha256 else (
        f"{artifact.name} differs from what {stem}.json recorded at export (sha256 {digest[:12]}, "
        f"recorded {entry.sha256[:12]})")
    return manifest, precision, changed


def manifest_for(artifact: str | os.PathLike[str]) -> tuple[Manifest, str]:
    """The manifest beside an artifact file, and the artifact's precision.

    Refuses an artifact whose bytes differ from what the manifest recorded:
    what runs or ships must be what was checked (``verify`` compares it anyway).
    """
    manifest, precision, changed = open_artifact(artifact)
    if changed:
        raise ArtifactError(f"{changed}: it changed since export; re-export it, or `resnet-deploy verify` it")
    return manifest, precision


def commit_artifacts(staging: Staging, staged: dict[str, Path], manifest: Manifest, *, keep_others: bool = False,
                     golden: Path | None = None) -> Path:
    """Move staged temporary files to their final names and write the manifest.

    ``staged`` maps precision -> temporary file of ``staging``; ``golden`` is the
    staged golden outputs file. The old manifest goes first, then files the old
    export had and this one does not, then the new files, then the new
    manifest: at no moment does a manifest describe a file that is not there.
    With ``keep_others`` (adding an engine to an export) the manifest's other
    artifacts and golden file stay.
    """
    folder = staging.folder
    old = manifest_path(folder, manifest.stem)
    previous: list[str] = []
    if old.exists():
        try:
            data = json.loads(old.read_text())
            previous = [a["file"] for a in data.get("artifacts", [])]
            if data.get("golden"):
                previous.append(data["golden"]["file"])
        except (OSError, ValueError, TypeError, KeyError):
            previous = []
        old.unlink()
    entries = [e for e in manifest.artifacts if e.precision not in staged] if keep_others else []
    for precision, tmp in staged.items():
        final = staging.commit(tmp, folder / artifact_filename(manifest.stem, precision))
        entries.append(ArtifactEntry.of_file(final, precision))
    if golden is not None:
        final = staging.commit(golden, folder / (check_stem(manifest.stem) + GOLDEN_SUFFIX))
        manifest.golden = {"file": final.name, "bytes": final.stat().st_size, "sha256": sha256_file(final)}
    elif not keep_others:
        manifest.golden = {}
    kept = {e.file for e in entries} | ({manifest.golden["file"]} if manifest.golden else set())
    for name in previous:
        if name not in kept and "/" not in name:
            (folder / name).unlink(missing_ok=True)
    manifest.artifacts = entries
    return write_manifest(manifest, folder)
