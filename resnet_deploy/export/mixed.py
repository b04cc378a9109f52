"""Accuracy-bounded INT8: leave the blocks that quantize worst in float until the drop is within a bound.

The network is cut into units the user knows (the stem, each residual block,
the head) on the float graph ONNX Runtime quantizes. Each unit's sensitivity
is measured as the error left when it alone stays in float; the most
sensitive units are then kept in float, one at a time, until the top-1 drop
is within ``max_drop`` points. A float unit has no Q/DQ around it, so a
strongly typed TensorRT build (TensorRT 11) keeps it in float too. Peers:
NNCF's accuracy control, Polygraphy's ``debug precision``.

Every INT8 candidate runs as written (ONNX Runtime without graph
optimisation): the quantization itself, whatever the CPU's kernels.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..backends.onnxrt import OnnxRuntimeRunner
from ..data import ImagePreprocess, batched, labelled_images, load_images
from ..errors import ExportError
from ..fileio import temp_prefix
from ..onnxgraph import find_points
from ..parity.metrics import top1_drop

EVAL_BATCH = 32


def unit_nodes(model: onnx.ModelProto, block_names: list[str]) -> dict[str, list[str]]:
    """Node names of each unit: ``stem``, then ``block_names`` (one per residual block, in order), then ``head``.

    A node belongs to the first unit whose output depends on it; what no unit
    output depends on (pooling, the classifier) is the head.
    """
    points = find_points(model)
    if len(points) != len(block_names) + 1:
        raise ExportError(f"cannot map the graph to its blocks: {len(points) - 1} residual blocks found, "
                          f"{len(block_names)} expected")
    producer = {out: index for index, node in enumerate(model.graph.node) for out in node.output}
    owner: dict[int, str] = {}
    for unit, tensor in zip(["stem", *block_names], points):
        stack = [tensor]
        while stack:
            index = producer.get(stack.pop())
            if index is None or index in owner:
                continue
            owner[index] = unit
            stack.extend(model.graph.node[index].input)
    units: dict[str, list[str]] = {name: [] for name in ["stem", *block_names, "head"]}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            raise ExportError(f"cannot leave units in float: a {node.op_type} node has no name")
        units[owner.get(index, "head")].append(node.name)
    return units


@dataclass
class DropMeasure:
    """How a candidate's top-1 drop is measured: against labels (accuracy points) when the user gave
    labelled evaluation data, else as the share of hold-out images whose class changes (an upper bound)."""

    images: np.ndarray
    labels: np.ndarray | None
    reference: np.ndarray  # float32 logits of the fp32 graph
    source: str

    @classmethod
    def make(cls, fp32_path: Path, eval_data: str | os.PathLike[str] | None, holdout: np.ndarray | None,
             preprocess: ImagePreprocess) -> DropMeasure:
        if eval_data is not None:
            paths, labels, _classes = labelled_images(eval_data)
            images, source = load_images(paths, preprocess), f"top-1 accuracy on {len(paths)} images of {eval_data}"
        elif holdout is not None:
            images, labels = holdout, None
            source = f"top-1 changes against fp32 on {len(holdout)} held-out calibration images"
        else:
            raise ExportError("--max-drop needs labelled --eval-data DIR, or real --calib-data (a folder or .npy of "
                              "at least 5 images) whose hold-out it measures on")
        return cls(images, labels, _logits(OnnxRuntimeRunner(fp32_path), images), source)

    def drop(self, logits: np.ndarray) -> float:
        """Top-1 points lost against fp32."""
        return top1_drop(self.reference, logits, self.labels)

    def error(self, logits: np.ndarray) -> float:
        """Mean squared logit error relative to the fp32 logits' mean square: a ranking finer than top-1."""
        return float(np.mean((logits - self.reference) ** 2) / max(np.mean(self.reference ** 2), 1e-12))


def _logits(runner: OnnxRuntimeRunner, images: np.ndarray) -> np.ndarray:
    return np.concatenate([runner(np.ascontiguousarray(chunk))[runner.output_names[0]]
                           for chunk in batched(images, EVAL_BATCH)])


@dataclass
class MixedResult:
    max_drop: float
    measure: str
    drop_all_int8: float
    drop: float
    float_units: list[str]
    sensitivity: list[dict[str, Any]] = field(default_factory=list)  # most sensitive first

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quantize_within(
    prepared: Path,
    out_path: Path,
    *,
    block_names: list[str],
    max_drop: float,
    measure: DropMeasure,
    quantize: Callable[[Path, list[str]], bool],
    on_progress: Callable[[str], None] = lambda _text: None,
) -> MixedResult:
    """Write to ``out_path`` the INT8 graph of ``prepared`` with the fewest most-sensitive units in float
    whose drop is within ``max_drop`` points. ``quantize(out, keep_float_nodes)`` makes one candidate."""
    units = unit_nodes(onnx.load(str(prepared)), block_names)

    def evaluate(keep: list[str], path: Path) -> tuple[float, float]:
        quantize(path, [node for unit in keep for node in units[unit]])
        logits = _logits(OnnxRuntimeRunner(path, optimize=False), measure.images)
        return measure.drop(logits), measure.error(logits)

    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=temp_prefix() + "mixed-") as scratch:
        candidate = Path(scratch) / "candidate.onnx"
        drop_all, error_all = evaluate([], candidate)
        on_progress(f"all INT8: drop {drop_all:.2f} points")
        result = MixedResult(max_drop, measure.source, drop_all, drop_all, [])
        if drop_all <= max_drop:
            os.replace(candidate, out_path)
            return result
        for index, unit in enumerate(units):
            drop, error = evaluate([unit], candidate)
            result.sensitivity.append({"unit": unit, "drop_if_float": drop, "error_if_float": error,
                                       "error_all_int8": error_all})
            on_progress(f"sensitivity {index + 1}/{len(units)}: {unit} in float: drop {drop:.2f}, error {error:.2e}")
        result.sensitivity.sort(key=lambda row: (row["error_if_float"], row["drop_if_float"]))
        for row in result.sensitivity:  # ends at the latest with every unit in float: drop 0
            result.float_units.append(row["unit"])
            result.drop, _ = evaluate(result.float_units, candidate)
            on_progress(f"{len(result.float_units)} unit(s) in float ({', '.join(result.float_units)}): "
                        f"drop {result.drop:.2f}")
            if result.drop <= max_drop:
                break
        os.replace(candidate, out_path)
    return result


def summary(result: MixedResult, rows: int = 5) -> str:
    """The outcome and the most sensitive units, for the export log."""
    if not result.float_units:
        return f"all INT8: drop {result.drop_all_int8:.2f} points <= {result.max_drop} ({result.measure})"
    lines = [f"all INT8 would drop {result.drop_all_int8:.2f} points > {result.max_drop}; left in float: "
             f"{', '.join(result.float_units)} -> drop {result.drop:.2f} points ({result.measure})",
             "most sensitive units (each alone left in float):"]
    lines += [f"  {row['unit']:<10} drop {row['drop_if_float']:6.2f}  logit error {row['error_if_float']:.2e}"
              for row in result.sensitivity[:rows]]
    return "\n      ".join(lines)
