"""Passes over an ONNX graph: simplification, BatchNorm folding, validity checks."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ArtifactError, ExportError, first_line
from .fileio import regular_file


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxsim's constant folding and dead-node removal; symbolic axes are kept."""
    import onnxsim

    try:
        simplified, ok = onnxsim.simplify(model, check_n=0)
    except Exception as exc:  # onnxsim raises RuntimeError and friends from C++
        raise ExportError(f"onnxsim failed: {first_line(exc)}") from exc
    if not ok:
        raise ExportError("onnxsim could not validate the simplified model")
    return simplified


def fold_batchnorm(model: onnx.ModelProto) -> int:
    """Fold every BatchNormalization that directly follows a Conv into the Conv's weights.

    The exporters fold most of them already; this catches the rest so no
    arch pays for a separate normalisation at inference. A BatchNormalization
    that does not follow a Conv (IBN's BN half follows a Split) stays: the
    arch needs it by design. Returns the number folded.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers = Counter(name for node in graph.node for name in node.input)
    consumers.update(o.name for o in graph.output)
    folded = []
    for bn in graph.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = producers.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or consumers[conv.output[0]] != 1:
            continue
        if not all(name in inits for name in list(bn.input[1:5]) + list(conv.input[1:])):
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
        weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        bias = (
            numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
            if len(conv.input) > 2 and conv.input[2]
            else np.zeros(weight.shape[0])
        )
        factor = gamma / np.sqrt(var + eps)
        new_w = (weight * factor.reshape(-1, 1, 1, 1)).astype(np.float32)
        new_b = ((bias - mean) * factor + beta).astype(np.float32)
        w_name, b_name = f"{conv.name or conv.output[0]}.folded_weight", f"{conv.name or conv.output[0]}.folded_bias"
        graph.initializer.extend([numpy_helper.from_array(new_w, w_name), numpy_helper.from_array(new_b, b_name)])
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        conv.output[0] = bn.output[0]
        folded.append(bn)
    for bn in folded:
        graph.node.remove(bn)
    _drop_unused_initializers(model)
    return len(folded)


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def check_file(path: str | os.PathLike[str], *, keep_inferred: bool = True) -> None:
    """onnx.checker's full check (with strict shape inference) of the ONNX file at ``path``; with
    ``keep_inferred`` the file is rewritten with the inferred shapes.

    By path, onnx's C++ side reads the file itself: no protobuf round trip through Python, which
    took 5 s of a resnext101's 27 s export (1.8 s this way).
    """
    try:
        onnx.checker.check_model(str(path), full_check=True)
        if keep_inferred:
            onnx.shape_inference.infer_shapes_path(str(path), str(path), check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the ONNX model is invalid: {first_line(exc)}") from exc


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    return dict(Counter(node.op_type for node in model.graph.node).most_common())


class Inspection(dict):
    """What `resnet-deploy inspect` reports on an ONNX file, by key (``inputs``, ``opset``, ``ops``...)."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self)

    def to_text(self) -> str:
        def io_line(v: dict[str, Any]) -> str:
            return f"  {v['name']}: {v['dtype']} [{', '.join(map(str, v['shape']))}]"

        return "\n".join([
            f"file:       {self['file']} ({self['bytes'] / 1e6:.1f} MB)",
            f"producer:   {self['producer']} (IR {self['ir_version']})",
            f"opset:      {', '.join(f'{d} {v}' for d, v in self['opset'].items())}",
            "inputs:", *map(io_line, self["inputs"]),
            "outputs:", *map(io_line, self["outputs"]),
            f"parameters: {self['parameters']:,}",
            f"precision:  {'FP16 tensors' if self['fp16_tensors'] else 'no FP16 tensors'}, {self['qdq_nodes']} Q/DQ nodes",
            f"nodes:      {self['nodes']} ({', '.join(f'{op} {n}' for op, n in self['ops'].items())})",
        ])


def inspect_file(path: str | os.PathLike[str]) -> Inspection:
    """What `resnet-deploy inspect` prints: I/O with symbolic dims, opset, ops, size, precision.

    Raises:
        ArtifactError: not a regular file, or not a readable ONNX model.
    """
    path = regular_file(path, "ONNX file", ArtifactError)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors
        raise ArtifactError(f"{path} is not a readable ONNX model: {type(exc).__name__}") from None
    if not model.graph.node:
        raise ArtifactError(f"{path} is not a readable ONNX model: it has no graph")

    def io(values: Any) -> list[dict[str, Any]]:
        init_names = {t.name for t in model.graph.initializer}
        return [
            {
                "name": v.name,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                "shape": [d.dim_param or d.dim_value or "?" for d in v.type.tensor_type.shape.dim],
            }
            for v in values
            if v.name not in init_names
        ]

    ops = op_histogram(model)
    fp16 = onnx.TensorProto.FLOAT16
    return Inspection({
        "file": str(path),
        "bytes": path.stat().st_size,
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "inputs": io(model.graph.input),
        "outputs": io(model.graph.output),
        "nodes": len(model.graph.node),
        "ops": ops,
        "parameters": int(sum(np.prod(t.dims, dtype=np.int64) for t in model.graph.initializer)),
        "fp16_tensors": any(t.data_type == fp16 for t in model.graph.initializer)
        or any(a.name == "to" and a.i == fp16 for n in model.graph.node if n.op_type == "Cast" for a in n.attribute),
        "qdq_nodes": ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0),
    })


def topological_sort(model: onnx.ModelProto) -> None:
    """Reorder nodes so each comes after the producers of its inputs (ONNX requires it;
    converters that append nodes, like ORT's float16 pass, break it)."""
    graph = model.graph
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            missing = sorted({name for n in pending for name in n.input if name not in available})[:3]
            raise ExportError(f"the ONNX graph has a cycle or dangling inputs ({', '.join(missing)})")
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        for node in ready:
            ordered.append(node)
            available.update(node.output)
    del graph.node[:]
    graph.node.extend(ordered)


# ops a block's output passes through unchanged in value before the next block reads it
PASS_THROUGH = {"Cast", "QuantizeLinear", "DequantizeLinear", "Identity"}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    table: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            table.setdefault(name, []).append(node)
    return table


def _chain_end(name: str, consumers: dict[str, list[onnx.NodeProto]]) -> tuple[str, list[onnx.NodeProto]]:
    """Follow ``name`` through single-consumer Relu/Cast/Q/DQ nodes; return the last
    float tensor of that chain (a QuantizeLinear output is integer) and its consumers."""
    chosen = current = name
    while True:
        users = consumers.get(current, [])
        if len(users) != 1 or users[0].op_type not in PASS_THROUGH | {"Relu"}:
            return chosen, users
        current = users[0].output[0]
        if users[0].op_type != "QuantizeLinear":
            chosen = current


def find_points(model: onnx.ModelProto) -> list[str]:
    """ONNX tensor names of the stem output and of every residual block output, in order.

    A block ends in an Add whose result (after its Relu, and any Cast or Q/DQ
    pair) feeds the next block twice (its convs and its shortcut) or reaches
    the pooling or a graph output. Res2Net's inner Adds feed one conv, so they
    do not count. The Relu itself may be gone: ONNX Runtime's quantizer folds
    it into unsigned activations.
    """
    graph = model.graph
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    stem_node = next((n for n in graph.node if n.op_type == "MaxPool"), None)
    if stem_node is None:  # CIFAR stem: conv, bn, relu
        stem_node = next((n for n in graph.node if n.op_type == "Relu"), None)
    blocks = []
    for node in graph.node:
        if node.op_type != "Add":
            continue
        tensor, users = _chain_end(node.output[0], consumers)
        if len(users) >= 2 or tensor in outputs or any(u.op_type in ("GlobalAveragePool", "ReduceMean") for u in users):
            blocks.append(tensor)
    if stem_node is None or not blocks:
        raise ArtifactError("cannot find the stem and residual blocks in this ONNX graph")
    return [_chain_end(stem_node.output[0], consumers)[0], *blocks]
