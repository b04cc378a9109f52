"""Precision decided in the ONNX graph, where it can be built and checked on any machine.

TensorRT 11 removed the builder's FP16/INT8 flags and its calibrators: an
engine's precision comes from the ONNX it is built from. FP16 here is a float16
graph with float32 inputs and outputs kept and the numerically fragile ops left
in float32; INT8 is a QuantizeLinear/DequantizeLinear graph made by ONNX
Runtime's static quantization with per-channel weights, for one of two targets.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..data import Calibration
from ..environment import int8_isa
from ..errors import ExportError, first_line
from ..fileio import special_file
from .. import onnxgraph

# InstanceNorm (IBN's IN half) over-/underflows in fp16; the split-attention
# softmax of ResNeSt normalises tiny differences. Both stay float32.
FP16_KEEP_FP32_OPS = ("InstanceNormalization", "Softmax")


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of ``model`` with float32 I/O and :data:`FP16_KEEP_FP32_OPS` in float32 (unchecked:
    check the file it is saved to, :func:`~.graph.check_file`)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        converted = convert_float_to_float16(
            model, keep_io_types=True, op_block_list=list(FP16_KEEP_FP32_OPS), disable_shape_infer=False
        )
    onnxgraph.topological_sort(converted)
    return converted


@dataclass(frozen=True)
class Int8Target:
    activation: str  # onnxruntime.quantization.QuantType member
    weight: str
    symmetric: bool  # activations with zero point 0
    description: str


INT8_TARGETS = {
    "trt": Int8Target("QInt8", "QInt8", True, "symmetric signed INT8 (TensorRT's explicit quantization)"),
    "cpu": Int8Target("QUInt8", "QInt8", False, "unsigned activations, signed weights (ONNX Runtime's x86 u8s8 kernels)"),
}


def resolve_reduce_range(target: str, requested: bool | None) -> bool:
    """7-bit weights for the ``cpu`` target on x86 without VNNI, unless the caller decided.

    Without VNNI, ONNX Runtime's u8s8 kernels add pairs of u8 x s8 products in
    int16, which saturates for 8-bit weights; 7-bit weights keep the sum in range.
    TensorRT accumulates in int32, so the ``trt`` target never needs it.
    """
    if target == "trt":
        if requested:
            raise ExportError("--reduce-range is for --int8-target cpu: TensorRT accumulates in int32 and never saturates")
        return False
    return int8_isa() == "avx2" if requested is None else requested


CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
def calibration_cache_name(stem: str, fp32_sha256: str, calibration: Calibration, method: str) -> str:
    """Ranges depend on the fp32 graph, the data and the method (not the target): all three key the cache."""
    key = hashlib.sha256(f"{fp32_sha256}|{calibration.key}|{method}".encode()).hexdigest()[:12]
    return f"{stem}.calib-{method}-{key}.json"


def range_cache_problem(path: Path) -> str | None:
    """Why the activation-range cache at ``path`` cannot be used (unreadable, truncated, NaN or infinite
    ranges from NaN calibration data), or None where it can."""
    bad: list[float] = []

    def walk(value: Any) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            bad.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    if special_file(path) is not None:
        return f"it is {special_file(path)}"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"it cannot be read ({first_line(exc)})"
    if not isinstance(data, dict) or not data:
        return "it holds no ranges"
    walk(data)
    return f"it holds {len(bad)} non-finite range values" if bad else None


@contextlib.contextmanager
def prepared_for_quantization(fp32_path: Path) -> Iterator[Path]:
    """ONNX Runtime's quantization preprocessing (shape inference, basic fusions) of ``fp32_path``,
    in a temporary file beside it: the graph whose node names :func:`to_int8`'s ``keep_float`` refers to."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = fp32_path.with_name(fp32_path.name + ".pre.onnx")
    try:
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_logging():
                warnings.simplefilter("ignore")
                quant_pre_process(str(fp32_path), str(prepared))
        except Exception as exc:  # onnxruntime.quantization raises many types
            raise ExportError(f"INT8 quantization failed: {first_line(exc)}") from exc
        yield prepared
    finally:
        prepared.unlink(missing_ok=True)


def to_int8(
    prepared: Path,
    out_path: Path,
    calibration: Calibration,
    *,
    target: str,
    method: str,
    cache_path: Path,
    reduce_range: bool = False,
    keep_float: Sequence[str] = (),
    on_progress: Callable[[int, int], None] | None = None,
) -> bool:
    """Write a QDQ INT8 model (weights per channel) of ``prepared`` (from :func:`prepared_for_quantization`)
    to ``out_path``.

    ``keep_float``: node names left in float (no Q/DQ around them). Returns True
    when the activation ranges came from ``cache_path`` (no calibration run).
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    if target not in INT8_TARGETS:
        raise ExportError(f"unknown --int8-target {target!r}; choose one of {', '.join(INT8_TARGETS)}")
    if method not in CALIBRATION_METHODS:
        raise ExportError(f"unknown --calib-method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    chosen = INT8_TARGETS[target]
    supports_cache = "calibration_cache_path" in inspect.signature(quantize_static).parameters
    cached = supports_cache and cache_path.is_file()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = calibration.batches()
            self.done = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            self.done += len(batch)
            if on_progress is not None:
                on_progress(self.done, calibration.images)
            return {"input": batch}

    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_logging():
            warnings.simplefilter("ignore")
            quantize_static(
                str(prepared), str(out_path), None if cached else Reader(),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=getattr(QuantType, chosen.activation), weight_type=getattr(QuantType, chosen.weight),
                calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
                reduce_range=reduce_range, nodes_to_exclude=list(keep_float),
                extra_options={"ActivationSymmetric": chosen.symmetric, "WeightSymmetric": True},
                **({"calibration_cache_path": str(cache_path)} if supports_cache else {}),
            )
    except ExportError:
        raise
    except Exception as exc:  # onnxruntime.quantization raises many types
        raise ExportError(f"INT8 quantization failed: {first_line(exc)}") from exc
    onnxgraph.check_file(out_path, keep_inferred=False)
    return cached


@dataclass(frozen=True)
class Int8Writer:
    """How one export writes an INT8 graph of its prepared fp32 graph: calibration, target, method and where the
    activation ranges are cached. Called with (file, nodes kept in float) by the INT8 step and by the
    accuracy-bounded search (:func:`.mixed.quantize_within`); returns whether the ranges came from the cache."""

    prepared: Path
    calibration: Calibration
    target: str
    method: str
    reduce_range: bool
    cache_path: Path
    on_progress: Callable[[int, int], None] | None = None

    def __call__(self, out_path: Path, keep_float: Sequence[str] = ()) -> bool:
        return to_int8(self.prepared, out_path, self.calibration, target=self.target, method=self.method,
                       cache_path=self.cache_path, reduce_range=self.reduce_range, keep_float=keep_float,
                       on_progress=self.on_progress)


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """onnxruntime.quantization logs through the root logger at INFO/WARNING."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
