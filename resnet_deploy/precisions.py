"""The precisions an export makes: one row each, the table that artifact naming, the export's
options and CLI flags, the parity tolerances and judging rules, layer-wise localisation and the
engine build read.

A precision is how an ONNX graph computes: most have a file of their own
(a float16 graph, a Q/DQ graph); bf16 is the fp32 file computed in bf16 by a
runtime that offers it (OpenVINO on CPUs with native bf16), so its row names
the file it runs instead of a suffix. A TensorRT engine is another artifact
format, built from one of these graphs and judged as its source. Adding a
precision with a file (FP8, INT4 weight-only) is a row here and its converter
step in :data:`resnet_deploy.export.pipeline.CONVERTERS`; one without a file
is a row and the registry variant that computes it
(:func:`resnet_deploy.backends.registry.precision_variant`). Its flag, gate,
manifest record, tolerances and verify follow from the row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .environment import int8_kernel_problem
from .fileio import from_record


@dataclass(frozen=True)
class Fp16Options:
    """How a float16 artifact was converted: the manifest's ``precision_options["fp16"]``."""

    keep_fp32_ops: tuple[str, ...] = ()  # op types left in float32 (range or accuracy: InstanceNorm, Softmax)

    def to_record(self) -> dict[str, Any]:
        return {"keep_fp32_ops": list(self.keep_fp32_ops)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Fp16Options:
        return cls(tuple(record.get("keep_fp32_ops", ())))


@dataclass(frozen=True)
class Int8Options:
    """How an INT8 artifact was quantized: the manifest's ``precision_options["int8"]``, written and
    read here alone."""

    target: str = "trt"  # trt: symmetric signed activations (TensorRT); cpu: unsigned (ONNX Runtime's x86 kernels)
    method: str = "minmax"  # calibration method
    reduce_range: bool = False  # 7-bit weights
    weights: str = "per-channel"
    calibration: dict[str, Any] = field(default_factory=dict)  # data.Calibration.to_record(): source, images, holdout
    range_cache: str | None = None  # the activation-range cache file beside the artifacts
    mixed: dict[str, Any] | None = None  # units kept in float by --max-drop (export.mixed)

    @property
    def cpu_isa(self) -> str:
        """The x86 ISA on which ONNX Runtime's and OpenVINO's optimised kernels compute the graph without
        int16 saturation: VNNI for 8-bit weights, any (AVX2 too) for 7-bit ones."""
        return "avx2" if self.reduce_range else "vnni"

    @property
    def holdout_source(self) -> str | None:
        """The calibration data a hold-out was kept from, when one was."""
        return self.calibration.get("source") if self.calibration.get("holdout") else None

    def to_record(self) -> dict[str, Any]:
        record = {key: value for key, value in asdict(self).items() if key != "mixed" or value is not None}
        return {**record, "cpu_isa": self.cpu_isa}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Int8Options:
        """Manifests from before ``reduce_range`` was recorded had 8-bit weights."""
        return from_record(cls, record)


@dataclass(frozen=True)
class Bf16Options:
    """Where a bf16 gate ran: the manifest's ``precision_options["bf16"]``. bf16 has no file: the fp32 file
    computed in bf16 passed (or was not checked, and why) on the CPU this names."""

    verified: bool = False
    reason: str | None = None  # why it was not verified at export (no native bf16 there)
    cpu: dict[str, Any] = field(default_factory=dict)  # environment.cpu_description() of the machine that judged it

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Bf16Options:
        return from_record(cls, record)


@dataclass(frozen=True)
class Precision:
    name: str
    suffix: str | None  # the artifact's file name after the stem; None: it runs ``runs_file``'s file
    tolerance: dict[str, float]  # parity.tolerances.Tolerance fields: the artifact against float32 PyTorch
    layer_tolerance: float  # largest error of a block's output, as a fraction of its scale (--layerwise)
    engine_rank: int | None  # as an engine's source: lower is preferred; None: TensorRT does not take it
    options: type | None = None  # its typed record in the manifest (precision_options[name]); None: it has none
    flag_help: str | None = None  # the export's --NAME flag; None: always made (fp32)
    # why an artifact of this precision cannot be an engine's source, given its options; None: it can
    engine_refusal: Callable[[Any], str | None] = field(default=lambda _options: None)
    # top-1 agreement is judged on random-init weights too (their near-tied logits flip under int8's error)
    top1_on_random_weights: bool = True
    # judged on random images even where a calibration hold-out is: only what computes the same function
    # on any input (reduced precisions are judged on the data their ranges and margins are for)
    judged_on_random_images: bool = False
    # the graph means what it says only run as written (graph optimisations off): Q/DQ pairs
    runs_as_written: bool = False
    calibrated: bool = False  # made with calibration data (activation ranges), held out in part to judge it
    # why this CPU's optimised kernels do not compute an artifact of it exactly (given its options), if ever
    cpu_kernel_problem: Callable[[Any], str | None] | None = None
    runs_file: str | None = None  # without a file of its own: the precision whose file a runtime computes in it
    summary: str = ""

    @property
    def file_precision(self) -> str:
        """The precision whose file an artifact of this one is: its own, or ``runs_file``'s."""
        return self.runs_file or self.name

    def read_options(self, precision_options: dict[str, Any]) -> Any:
        """Its typed options from a manifest's ``precision_options`` (None where it has none)."""
        return self.options.from_record(precision_options.get(self.name, {})) if self.options else None


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", ".onnx", {"max_rel_to_scale": 1e-4, "min_top1": 1.0}, 1e-4, engine_rank=2,
              judged_on_random_images=True, summary="float32: the same function up to float32 reordering"),
    Precision("fp16", ".fp16.onnx", {"min_cosine": 0.9999, "min_top1": 0.99}, 5e-3, engine_rank=1,
              options=Fp16Options, flag_help="Also write STEM.fp16.onnx (float16 graph, float32 I/O).",
              summary="float16 graph, float32 I/O; InstanceNorm and Softmax kept in float32"),
    # measured: OpenVINO bf16 against PyTorch, cosine >= 0.99995 on random-init resnet50 and the trained digits
    # model (one class changed in 448 test images); its error, ~4e-3 of the output scale, is near random
    # weights' logit margins, so top-1 is judged on trained weights only
    Precision("bf16", None, {"min_cosine": 0.999, "min_top1": 0.95}, 2e-2, engine_rank=None,
              options=Bf16Options, flag_help="Also verify the fp32 file computed in bf16 (OpenVINO, on CPUs with "
                                             "native bf16: AVX512_BF16, AMX) and record the result.",
              top1_on_random_weights=False, runs_file="fp32",
              summary="the fp32 file computed in bf16 (OpenVINO's inference precision) on CPUs with native bf16"),
    Precision("int8", ".int8.onnx", {"min_cosine": 0.99, "min_top1": 0.95}, 1e-1, engine_rank=0,
              options=Int8Options, flag_help="Also write STEM.int8.onnx (QDQ, per-channel weights).",
              engine_refusal=lambda options: None if options.target == "trt" else (
                  f"it was quantized for the {options.target} target (unsigned activations), which TensorRT's explicit "
                  "quantization does not take: re-export with --int8-target trt"),
              top1_on_random_weights=False,
              runs_as_written=True, calibrated=True, cpu_kernel_problem=lambda options: int8_kernel_problem(options.cpu_isa),
              summary="Q/DQ INT8, per-channel weights, calibrated activations"),
)}

FP32 = "fp32"  # the precision every export makes, and the one the others are converted from
ENGINE = "engine"  # the artifact kind of a TensorRT engine (built from a precision's ONNX)
ENGINE_SUFFIX = ".engine"


def file_precisions() -> list[str]:
    """The precisions with a file of their own, in the table's order (fp32 first)."""
    return [name for name, row in PRECISIONS.items() if row.suffix is not None]


def engine_source(precision_options: dict[str, dict[str, Any]], available: set[str]) -> str:
    """Which of the ``available`` precisions an engine is built from: the most reduced one TensorRT takes."""
    eligible = [p for p in PRECISIONS.values() if p.name in available and engine_refusal(p.name, precision_options) is None]
    return min(eligible, key=lambda p: p.engine_rank).name


def engine_refusal(precision: str, precision_options: dict[str, dict[str, Any]]) -> str | None:
    """Why TensorRT cannot build an engine from an artifact of ``precision``, or None where it can."""
    row = PRECISIONS[precision]
    if row.engine_rank is None:
        return f"TensorRT takes no {precision} graph"
    return row.engine_refusal(row.read_options(precision_options))
