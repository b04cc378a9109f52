"""The precisions an export makes: one row each, the table that artifact naming, the parity
tolerances, layer-wise localisation and the engine build read.

A precision is how an ONNX graph computes; a TensorRT engine is another artifact
format, built from one of these graphs and judged as its source. Adding a
precision (FP8, INT4 weight-only) is a row here and its converter step in
:mod:`resnet_deploy.export.pipeline`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Precision:
    name: str
    suffix: str  # the artifact's file name after the stem
    tolerance: dict[str, float]  # parity.tolerances.Tolerance fields: the artifact against float32 PyTorch
    layer_tolerance: float  # largest error of a block's output, as a fraction of its scale (--layerwise)
    engine_rank: int | None  # as an engine's source: lower is preferred; None: TensorRT does not take it
    # whether an artifact of this precision can be an engine's source, given its precision_options record
    engine_takes: Callable[[dict[str, Any]], bool] = field(default=lambda _record: True)
    # top-1 agreement is judged on random-init weights too (their near-tied logits flip under int8's error)
    top1_on_random_weights: bool = True
    summary: str = ""


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", ".onnx", {"max_rel_to_scale": 1e-4, "min_top1": 1.0}, 1e-4, engine_rank=2,
              summary="float32: the same function up to float32 reordering"),
    Precision("fp16", ".fp16.onnx", {"min_cosine": 0.9999, "min_top1": 0.99}, 5e-3, engine_rank=1,
              summary="float16 graph, float32 I/O; InstanceNorm and Softmax kept in float32"),
    Precision("int8", ".int8.onnx", {"min_cosine": 0.99, "min_top1": 0.95}, 1e-1, engine_rank=0,
              # TensorRT's explicit quantization takes symmetric signed activations: the trt target's
              engine_takes=lambda record: record.get("target") == "trt", top1_on_random_weights=False,
              summary="Q/DQ INT8, per-channel weights, calibrated activations"),
)}

ENGINE = "engine"  # the artifact kind of a TensorRT engine (built from a precision's ONNX)
ENGINE_SUFFIX = ".engine"


def engine_source(precision_options: dict[str, dict[str, Any]], available: set[str]) -> str:
    """Which of the ``available`` precisions an engine is built from: the most reduced one TensorRT takes."""
    eligible = [p for p in PRECISIONS.values() if p.name in available and p.engine_rank is not None
                and p.engine_takes(precision_options.get(p.name, {}))]
    return min(eligible, key=lambda p: p.engine_rank).name
