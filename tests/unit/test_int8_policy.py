"""INT8 decisions that depend on the CPU, tested on both kinds whatever this machine is:
reduce_range by ISA, the kernel-exactness check, calibration hold-out and normalisation checks,
declared preprocessing, and the unit map of mixed precision on a small synthetic graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from resnet_deploy import environment
from resnet_deploy.data import (
    HOLDOUT_MAX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImagePreprocess,
    calibration_data,
    check_normalisation,
    random_images,
)
from resnet_deploy.errors import DeployError, ExportError
from resnet_deploy.export import quantize
from resnet_deploy.export.mixed import DropMeasure, unit_nodes
from resnet_deploy.models import get_spec
from resnet_deploy.models.archs import declare_preprocess
from resnet_deploy.precisions import PRECISIONS, Int8Options

IMAGENET = ImagePreprocess(resize=32, crop=(32, 32), interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD)


@pytest.fixture(params=["vnni", "avx2"])
def isa(request, monkeypatch):
    """Pretend to be each kind of x86 CPU: the policy must hold on both."""
    monkeypatch.setattr(environment, "int8_isa", lambda: request.param)
    monkeypatch.setattr(quantize, "int8_isa", lambda: request.param)
    return request.param


def test_reduce_range_follows_the_isa_unless_told(isa):
    assert quantize.resolve_reduce_range("cpu", None) is (isa == "avx2")
    assert quantize.resolve_reduce_range("cpu", True) is True
    assert quantize.resolve_reduce_range("cpu", False) is False
    assert quantize.resolve_reduce_range("trt", None) is False
    with pytest.raises(ExportError, match="TensorRT accumulates in int32"):
        quantize.resolve_reduce_range("trt", True)


def test_kernel_problem_only_for_8_bit_weights_without_vnni(isa):
    row = PRECISIONS["int8"]
    eight_bit = Int8Options(target="cpu", reduce_range=False)
    seven_bit = Int8Options(target="cpu", reduce_range=True)
    assert eight_bit.to_record()["cpu_isa"] == "vnni" and seven_bit.to_record()["cpu_isa"] == "avx2"
    assert row.cpu_kernel_problem(seven_bit) is None
    problem = row.cpu_kernel_problem(eight_bit)
    assert (problem is None) is (isa == "vnni")
    if problem:
        assert "no VNNI" in problem and "--reduce-range" in problem
    # manifests from before reduce_range was recorded: 8-bit weights, VNNI needed
    old = row.read_options({"int8": {"target": "trt"}})
    assert (row.cpu_kernel_problem(old) is None) is (isa == "vnni")


def test_the_int8_record_round_trips_through_the_manifest():
    options = Int8Options(target="cpu", method="entropy", reduce_range=True, calibration={"source": "x", "holdout": 4},
                          range_cache="s.calib.json", mixed={"kept_float": ["stem"]})
    assert Int8Options.from_record(options.to_record()) == options
    assert options.holdout_source == "x" and "mixed" not in Int8Options().to_record()


def test_isa_read_from_cpu_flags(monkeypatch):
    monkeypatch.setattr(environment.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(environment, "cpu_flags", lambda: {"avx2", "fma"})
    assert environment.int8_isa() == "avx2"
    for flag in environment.VNNI_FLAGS:
        monkeypatch.setattr(environment, "cpu_flags", lambda flag=flag: {"avx2", flag})
        assert environment.int8_isa() == "vnni"
    monkeypatch.setattr(environment.platform, "machine", lambda: "aarch64")  # ARM's from its Features
    for flags, isa in (({"asimd"}, "neon"), ({"asimd", "asimddp"}, "dotprod"), ({"asimd", "asimddp", "i8mm"}, "i8mm")):
        monkeypatch.setattr(environment, "cpu_flags", lambda flags=flags: flags)
        assert environment.int8_isa() == isa
    monkeypatch.setattr(environment.platform, "machine", lambda: "riscv64")
    assert environment.int8_isa() == "other"


def test_calibration_holdout_is_seeded_disjoint_and_bounded(tmp_path):
    array = random_images(40, (3, 8, 8), IMAGENET_MEAN, IMAGENET_STD, seed=3)
    np.save(tmp_path / "calib.npy", array)
    first = calibration_data(tmp_path / "calib.npy", preprocess=IMAGENET, shape=(3, 8, 8), size=100, seed=0)
    again = calibration_data(tmp_path / "calib.npy", preprocess=IMAGENET, shape=(3, 8, 8), size=100, seed=0)
    assert first.to_record() == {"source": str(tmp_path / "calib.npy"), "images": 32, "holdout": 8, "seed": 0}
    held, used = first.holdout(), np.concatenate(list(first.batches()))
    np.testing.assert_array_equal(held, again.holdout())
    # every image is in exactly one part
    rows = {arr.tobytes() for arr in array}
    assert {a.tobytes() for a in held} | {a.tobytes() for a in used} == rows
    assert not {a.tobytes() for a in held} & {a.tobytes() for a in used}
    other = calibration_data(tmp_path / "calib.npy", preprocess=IMAGENET, shape=(3, 8, 8), size=10, seed=1)
    assert other.images == 10 and not np.array_equal(other.holdout(), held)
    few = tmp_path / "few.npy"
    np.save(few, array[:4])
    assert calibration_data(few, preprocess=IMAGENET, shape=(3, 8, 8), size=10, seed=0).holdout is None
    big = tmp_path / "big.npy"
    np.save(big, np.concatenate([array] * 10))
    assert calibration_data(big, preprocess=IMAGENET, shape=(3, 8, 8), size=512, seed=0).holdout_images == HOLDOUT_MAX
    random = calibration_data("random", preprocess=IMAGENET, shape=(3, 8, 8), size=8, seed=0)
    assert random.holdout is None and random.holdout_images == 0


def test_normalisation_check_catches_other_statistics():
    pixels = np.random.default_rng(0).random((16, 3, 8, 8), dtype=np.float32)
    inception = (pixels - 0.5) / 0.5
    imagenet = (pixels - np.reshape(IMAGENET_MEAN, (1, 3, 1, 1))) / np.reshape(IMAGENET_STD, (1, 3, 1, 1))
    assert check_normalisation(imagenet.astype(np.float32), IMAGENET, "a.npy") is None
    problem = check_normalisation(inception.astype(np.float32), IMAGENET, "b.npy")
    assert problem and problem.startswith("b.npy does not look normalised") and "--mean/--std" in problem
    declared = ImagePreprocess(32, (32, 32), "bilinear", (0.5,) * 3, (0.5,) * 3)
    assert check_normalisation(inception.astype(np.float32), declared, "b.npy") is None
    assert check_normalisation(pixels * 255, IMAGENET, "raw.npy")  # unnormalised 0..255


def test_calibration_npy_warns_once_about_normalisation(tmp_path):
    np.save(tmp_path / "c.npy", np.full((6, 3, 8, 8), 0.5, np.float32))
    with pytest.warns(UserWarning, match="c.npy does not look normalised"):
        calibration_data(tmp_path / "c.npy", preprocess=IMAGENET, shape=(3, 8, 8), size=8, seed=0)


def test_declared_preprocess_layers_arch_preset_and_values():
    base = get_spec("resnet50").preprocess
    default = declare_preprocess(base, 224, 224)
    assert default["mean"] == list(IMAGENET_MEAN) and default["resize"] == 256
    inception = declare_preprocess(base, 224, 224, preset="inception", std=(0.25, 0.25, 0.25), resize=232,
                                   interpolation="bicubic")
    assert inception["mean"] == [0.5] * 3 and inception["std"] == [0.25] * 3
    assert inception["resize"] == 232 and inception["interpolation"] == "bicubic" and inception["crop"] == [224, 224]
    for kwargs, message in [({"preset": "nope"}, "unknown --preprocess"), ({"std": (1.0, 0.0, 1.0)}, "positive"),
                            ({"mean": (0.5, 0.5)}, "three numbers"), ({"resize": 100}, "smaller than the crop"),
                            ({"interpolation": "nearest"}, "unknown --interpolation")]:
        with pytest.raises(ExportError, match=message):
            declare_preprocess(base, 224, 224, **kwargs)


def _synthetic_resnet(blocks: int = 2) -> onnx.ModelProto:
    """stem (Conv, Relu, MaxPool) -> ``blocks`` residual blocks (Conv, Relu, Conv, Add, Relu) -> head."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def conv(name, x):
        inits.append(numpy_helper.from_array(rng.normal(size=(4, 4, 3, 3)).astype(np.float32) * 0.1, f"{name}.w"))
        nodes.append(helper.make_node("Conv", [x, f"{name}.w"], [name], name=name, pads=[1, 1, 1, 1]))
        return name

    def relu(name, x):
        nodes.append(helper.make_node("Relu", [x], [name], name=name))
        return name

    x = relu("stem.relu", conv("stem.conv", "input"))
    nodes.append(helper.make_node("MaxPool", [x], ["stem.pool"], name="stem.pool", kernel_shape=[2, 2], strides=[2, 2]))
    x = "stem.pool"
    for b in range(blocks):
        y = conv(f"b{b}.conv2", relu(f"b{b}.relu1", conv(f"b{b}.conv1", x)))
        nodes.append(helper.make_node("Add", [y, x], [f"b{b}.add"], name=f"b{b}.add"))
        x = relu(f"b{b}.out", f"b{b}.add")
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="head.pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="head.flatten"))
    inits.append(numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "fc.w"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w"], ["logits"], name="head.fc", transB=1))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_unit_nodes_cut_the_graph_at_block_outputs():
    units = unit_nodes(_synthetic_resnet(), ["layer1.0", "layer1.1"])
    assert units == {
        "stem": ["stem.conv", "stem.relu", "stem.pool"],
        "layer1.0": ["b0.conv1", "b0.relu1", "b0.conv2", "b0.add", "b0.out"],
        "layer1.1": ["b1.conv1", "b1.relu1", "b1.conv2", "b1.add", "b1.out"],
        "head": ["head.pool", "head.flatten", "head.fc"],
    }
    with pytest.raises(ExportError, match="2 residual blocks found, 3 expected"):
        unit_nodes(_synthetic_resnet(), ["a", "b", "c"])


def test_drop_measure_with_and_without_labels(tmp_path):
    model = _synthetic_resnet()
    onnx.save(model, tmp_path / "tiny.onnx")
    images = np.random.default_rng(1).normal(size=(10, 4, 8, 8)).astype(np.float32)
    unlabelled = DropMeasure.make(tmp_path / "tiny.onnx", None, images, IMAGENET)
    assert unlabelled.drop(unlabelled.reference) == 0 and unlabelled.error(unlabelled.reference) == 0
    flipped = unlabelled.reference.copy()
    flipped[:3] = -flipped[:3]  # three of ten classes change
    changed = float(np.mean(flipped.argmax(1) != unlabelled.reference.argmax(1)))
    assert unlabelled.drop(flipped) == pytest.approx(100 * changed) and unlabelled.error(flipped) > 0
    labelled = DropMeasure(images, unlabelled.reference.argmax(1), unlabelled.reference, "test")
    assert labelled.drop(labelled.reference) == 0
    assert labelled.drop(flipped) == pytest.approx(100 * changed)
    with pytest.raises(DeployError, match="--max-drop needs labelled --eval-data"):
        DropMeasure.make(tmp_path / "tiny.onnx", None, None, IMAGENET)
