"""Where two backends part: per-block errors between the ONNX graph and the PyTorch model.

The ONNX side is mapped by structure, not by node names (which exporters and
onnxsim rename freely): the stem ends at the MaxPool (the first Relu for the
CIFAR stem, which has none), and every residual block ends in an Add, in graph
order (see :func:`find_points`). The Casts and Q/DQ pairs of fp16/int8 graphs
are looked through, the count must match the PyTorch blocks one to one, and
the shapes are checked too.
The PyTorch side is captured with forward hooks on the same modules.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from ..backends.onnxrt import OnnxRuntimeRunner
from ..errors import ArtifactError
from ..onnxgraph import find_points
from ..precisions import PRECISIONS
from ..render import table
from .metrics import compare_arrays

# error relative to the point's own scale above which a block is named as where outputs part
LAYER_TOLERANCE = {name: p.layer_tolerance for name, p in PRECISIONS.items()}


def with_extra_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` that also returns the tensors ``names`` (typed from the graph's value_info,
    which export writes; shape inference only where it is missing: 2 s on a 100-layer net)."""
    infos = {v.name: v for v in list(model.graph.value_info) + list(model.graph.output)}
    if not all(name in infos for name in names):
        inferred = onnx.shape_inference.infer_shapes(model)
        infos = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    for name in names:
        if name in existing:
            continue
        info = infos.get(name) or onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        copy.graph.output.append(info)
    return copy


@dataclass
class LayerPoint:
    name: str  # PyTorch module path, "stem" or "layer2.1"
    onnx_tensor: str
    max_abs: float
    rel_to_scale: float
    cosine: float


@dataclass
class LayerwiseReport:
    backend: str
    batch: int
    tolerance: float
    points: list[LayerPoint] = field(default_factory=list)
    first_over_tolerance: str | None = None  # where outputs part: the block to look at
    largest_jump: str | None = None  # the block whose error grew most over the one before

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        """Each block's error against the reference, the first over tolerance marked, and where outputs part."""
        rows = [[p.name, f"{p.max_abs:.2e}", f"{p.rel_to_scale:.2e}", f"{p.cosine:.6f}",
                 "<- first over tolerance" if p.name == self.first_over_tolerance else ""] for p in self.points]
        lines = [f"layer-wise ({self.backend}, batch {self.batch}, tolerance {self.tolerance:.0e} of each point's scale):",
                 table(rows, ["point", "max|err|", "err/scale", "cosine", ""], right={1, 2, 3})]
        if self.first_over_tolerance:
            lines.append(f"outputs part at {self.first_over_tolerance} (largest jump in error: {self.largest_jump})")
        else:
            lines.append("every block within tolerance")
        return "\n".join(lines)


def localize(
    onnx_model: onnx.ModelProto,
    reference: nn.Module,
    batch: np.ndarray,
    *,
    precision: str,
    tolerance: float | None = None,
) -> LayerwiseReport:
    """Run both sides on ``batch`` and compare them block by block.

    INT8 graphs run unoptimised: each Q/DQ executed as written, so the
    localisation is of quantization error, not of one CPU's integer kernels."""
    names = find_points(onnx_model)
    modules = reference.block_points()
    if len(names) != len(modules):
        raise ArtifactError(
            f"layer-wise mapping failed: the ONNX graph has {len(names) - 1} residual blocks, "
            f"the PyTorch model {len(modules) - 1}"
        )
    # an INT8 graph runs as written (every Q/DQ executed): its meaning, not one CPU's kernels
    runner = OnnxRuntimeRunner(with_extra_outputs(onnx_model, names).SerializeToString(), optimize=not PRECISIONS[precision].runs_as_written)
    onnx_values = runner(batch)

    captured: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda _m, _i, out, key=key: captured.__setitem__(key, out.detach()))
        for key, module in modules
    ]
    try:
        with torch.inference_mode():
            reference.eval()(torch.from_numpy(batch))
    finally:
        for handle in handles:
            handle.remove()

    limit = LAYER_TOLERANCE[precision] if tolerance is None else tolerance
    report = LayerwiseReport(backend=runner.name, batch=len(batch), tolerance=limit)
    previous = None
    best_ratio = 0.0
    for (key, _module), tensor_name in zip(modules, names):
        want = captured[key].float().numpy()
        got = onnx_values[tensor_name].astype(np.float32)
        if want.shape != got.shape:
            raise ArtifactError(
                f"layer-wise mapping failed at {key}: ONNX tensor {tensor_name} has shape {list(got.shape)}, "
                f"PyTorch {list(want.shape)}"
            )
        figures = compare_arrays(want, got)
        error = figures.rel_to_scale if figures.finite else float("inf")
        report.points.append(LayerPoint(key, tensor_name, figures.max_abs, error, figures.cosine))
        if report.first_over_tolerance is None and error > limit:
            report.first_over_tolerance = key
        if previous is not None:
            ratio = error / max(previous, limit / 100)
            if ratio > best_ratio:
                best_ratio, report.largest_jump = ratio, key
        previous = error
    return report
