"""FP16 artifacts: float16 graph, float32 I/O, fragile ops in float32, verified at fp16 tolerance."""

from __future__ import annotations

import onnx
import pytest

from resnet_deploy import export, verify
from resnet_deploy.export.precision import FP16_KEEP_FP32_OPS
from resnet_deploy.parity.tolerances import DEFAULT_TOLERANCES

FP16 = onnx.TensorProto.FLOAT16
FLOAT = onnx.TensorProto.FLOAT
MUST_SHOW = ["resnet18", "resnet50", "resnext50_32x4d", "seresnet50", "res2net50_26w_4s", "resnest50d", "resnet50_ibn_a"]


def _value_types(model):
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in values}


@pytest.mark.parametrize("name", MUST_SHOW)
def test_fp16_artifact_passes_verify(tmp_path, name):
    result = export(name, input_size=64, fp16=True, out=tmp_path, quiet=True)
    path = result.paths["fp16"]
    assert path.name == f"{name}.fp16.onnx" and result.paths["fp32"].name == f"{name}.onnx"
    assert {p["artifact"] for p in result.manifest.parity} == {"fp32", "fp16"}

    model = onnx.load(str(path))
    types = _value_types(model)
    assert model.graph.input[0].type.tensor_type.elem_type == FLOAT
    assert all(o.type.tensor_type.elem_type == FLOAT for o in model.graph.output)
    conv_weights = [n.input[1] for n in model.graph.node if n.op_type == "Conv"]
    initializers = {t.name: t.data_type for t in model.graph.initializer}
    assert all(initializers[w] == FP16 for w in conv_weights)
    for node in model.graph.node:
        if node.op_type in FP16_KEEP_FP32_OPS:
            assert types[node.output[0]] == FLOAT, (node.op_type, node.name)

    report = verify(path, layerwise=True)
    assert report.precision == "fp16" and report.tolerance == DEFAULT_TOLERANCES["fp16"].to_dict()
    assert report.passed, [r.failures for r in report.rows]
    assert report.layerwise.first_over_tolerance is None
    # float16 rounding is real: the fp32 criterion would be too tight for it
    assert max(r.figures["rel_to_scale"] for r in report.rows) > 1e-5


def test_cli_fp16_and_rerun_without_it_removes_the_stale_file(cli, tmp_path):
    result = cli("export", "--arch", "resnet18", "--input-size", "64", "--fp16", "--out", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    assert "fp16: " in result.stderr and "[7/7] write manifest" in result.stderr
    assert (tmp_path / "resnet18.fp16.onnx").exists()
    info = cli("inspect", str(tmp_path / "resnet18.fp16.onnx")).stdout
    assert "FP16 tensors" in info and "no FP16" not in info
    assert cli("export", "--arch", "resnet18", "--input-size", "64", "--out", str(tmp_path), "-q").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet18.json", "resnet18.onnx"]
