"""Graph passes and layer-wise point finding on small synthetic ONNX graphs: no export, milliseconds each."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from resnet_deploy.errors import ArtifactError, ExportError
from resnet_deploy import onnxgraph
from resnet_deploy.onnxgraph import find_points

RNG = np.random.default_rng(0)


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array.astype(np.float32), name)


def _model(nodes, inits, inputs=("x",), output="y", shape=(1, 4, 6, 6), out_shape=None) -> onnx.ModelProto:
    graph_ = helper.make_graph(
        nodes, "synthetic", [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)) for name in inputs],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)], inits)
    return helper.make_model(graph_, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _conv_bn(conv_output_users: int = 1, out_shape=None) -> onnx.ModelProto:
    channels = 4
    inits = [_init("w", RNG.normal(size=(channels, channels, 3, 3))), _init("b", RNG.normal(size=channels)),
             _init("gamma", RNG.uniform(0.5, 2, channels)), _init("beta", RNG.normal(size=channels)),
             _init("mean", RNG.normal(size=channels)), _init("var", RNG.uniform(0.5, 2, channels))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"], epsilon=1e-3)]
    if conv_output_users == 2:  # the conv's output also feeds something else: folding would change that
        nodes[1].output[0] = "n"
        nodes.append(helper.make_node("Add", ["n", "c"], ["y"]))
    return _model(nodes, inits, out_shape=out_shape)


def test_fold_batchnorm_keeps_the_function_and_drops_the_node():
    model = _conv_bn()
    x = RNG.normal(size=(1, 4, 6, 6)).astype(np.float32)
    before = _run(model, x)
    assert onnxgraph.fold_batchnorm(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Conv"]
    assert {t.name for t in model.graph.initializer} == {"conv.folded_weight", "conv.folded_bias"}
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_leaves_a_conv_output_used_twice():
    model = _conv_bn(conv_output_users=2)
    assert onnxgraph.fold_batchnorm(model) == 0
    assert [n.op_type for n in model.graph.node] == ["Conv", "BatchNormalization", "Add"]


def test_topological_sort_orders_appended_nodes_and_names_dangling_inputs():
    model = _model([helper.make_node("Relu", ["a"], ["y"]), helper.make_node("Neg", ["x"], ["a"])], [])
    onnxgraph.topological_sort(model)
    assert [n.op_type for n in model.graph.node] == ["Neg", "Relu"]
    broken = _model([helper.make_node("Relu", ["nowhere"], ["y"])], [])
    with pytest.raises(ExportError, match="dangling inputs \\(nowhere\\)"):
        onnxgraph.topological_sort(broken)


def test_check_file_keeps_inferred_shapes_and_refuses_an_invalid_graph(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_conv_bn(out_shape=[1, 4, 6, 6]), str(path))
    onnxgraph.check_file(path)
    inferred = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in onnx.load(str(path)).graph.value_info}
    assert inferred == {"c": [1, 4, 6, 6]}  # the conv's output, written back into the file
    bad = _model([helper.make_node("Conv", ["x", "missing_weight"], ["y"])], [], out_shape=[1, 4, 6, 6])
    onnx.save(bad, str(tmp_path / "bad.onnx"))
    with pytest.raises(ExportError, match="the ONNX model is invalid"):
        onnxgraph.check_file(tmp_path / "bad.onnx")


def _residual_net(blocks: int) -> onnx.ModelProto:
    """stem (Conv, Relu, MaxPool), then ``blocks`` blocks x -> Relu(Conv(x) + x), then ReduceMean."""
    inits, nodes, tensor = [], [], "x"
    inits.append(_init("stem_w", RNG.normal(size=(4, 4, 1, 1))))
    nodes += [helper.make_node("Conv", ["x", "stem_w"], ["s0"]), helper.make_node("Relu", ["s0"], ["s1"]),
              helper.make_node("MaxPool", ["s1"], ["stem"], kernel_shape=[1, 1])]
    tensor = "stem"
    for index in range(blocks):
        inits.append(_init(f"w{index}", RNG.normal(size=(4, 4, 1, 1))))
        nodes += [helper.make_node("Conv", [tensor, f"w{index}"], [f"c{index}"]),
                  helper.make_node("Add", [f"c{index}", tensor], [f"a{index}"]),
                  helper.make_node("Relu", [f"a{index}"], [f"block{index}"])]
        tensor = f"block{index}"
    nodes.append(helper.make_node("ReduceMean", [tensor], ["y"], keepdims=0))
    return _model(nodes, inits)


def test_find_points_names_the_stem_and_every_block_end():
    assert find_points(_residual_net(3)) == ["stem", "block0", "block1", "block2"]


def test_find_points_refuses_a_graph_without_residual_blocks():
    with pytest.raises(ArtifactError, match="cannot find the stem and residual blocks"):
        find_points(_model([helper.make_node("Relu", ["x"], ["y"])], []))
