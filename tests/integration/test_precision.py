"""FP16 and INT8 artifacts: how they are made, and that they pass verify at their precision's tolerance."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from PIL import Image

from resnet_deploy import export, verify
from resnet_deploy.target import runtime
from resnet_deploy import environment
from resnet_deploy.errors import DeployWarning
from resnet_deploy.export.quantize import FP16_KEEP_FP32_OPS
from resnet_deploy.artifacts import read_manifest
from resnet_deploy.data import IMAGENET_MEAN, IMAGENET_STD, random_images
from resnet_deploy.parity.tolerances import DEFAULT_TOLERANCES, tolerance_for
from tests.conftest import PRECISION_ARCHS, assert_one_line_error

FP16 = onnx.TensorProto.FLOAT16
FLOAT = onnx.TensorProto.FLOAT


def _value_types(model):
    inferred = onnx.shape_inference.infer_shapes(model)
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in values}


@pytest.mark.parametrize("name", PRECISION_ARCHS)
def test_fp16_and_int8_artifacts_pass_verify(tmp_path, name, precision_export):
    """fp16 and int8 for TensorRT in one export (shared with test_export), int8 for CPU in a second: each
    passes verify."""
    result = precision_export(name)
    _check_int8(result.paths["int8"], "trt")
    # the cpu target through the TorchScript exporter: both exporters meet INT8 (and this one is 3-5x faster)
    cpu = export(name, input_size=64, int8=True, int8_target="cpu", calib_data="random", calib_size=32,
                 exporter="torchscript", out=tmp_path, name=f"{name}-cpu", quiet=True)
    _check_int8(cpu.paths["int8"], "cpu")
    path = result.paths["fp16"]
    assert path.name == f"{name}.fp16.onnx" and result.paths["fp32"].name == f"{name}.onnx"
    assert {p["artifact"] for p in result.manifest.parity} == {"fp32", "fp16", "int8"}

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
    assert "fp16: " in result.stderr and "[7/7] write golden outputs and manifest" in result.stderr
    assert (tmp_path / "resnet18.fp16.onnx").exists()
    info = cli("inspect", str(tmp_path / "resnet18.fp16.onnx")).stdout
    assert "FP16 tensors" in info and "no FP16" not in info
    assert cli("export", "--arch", "resnet18", "--input-size", "64", "--out", str(tmp_path), "-q").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet18.golden.npz", "resnet18.json", "resnet18.onnx"]


def _check_int8(path, target):
    model = onnx.load(str(path))
    init = {t.name: t for t in model.graph.initializer}
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quantize and any(n.op_type == "DequantizeLinear" for n in model.graph.node)
    zero_points = [onnx.numpy_helper.to_array(init[n.input[2]]) for n in quantize]
    if target == "trt":  # TensorRT explicit quantization: signed, symmetric
        assert all(z.dtype == np.int8 and not z.any() for z in zero_points)
    else:  # x86 VNNI: unsigned activations
        assert all(z.dtype == np.uint8 for z in zero_points)
    # conv weights are per channel: a DequantizeLinear with one scale per output channel feeds each Conv
    producers = {o: n for n in model.graph.node for o in n.output}
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        dequant = producers[conv.input[1]]
        assert dequant.op_type == "DequantizeLinear"
        weight = onnx.numpy_helper.to_array(init[dequant.input[0]])
        assert weight.dtype == np.int8 and init[dequant.input[1]].dims == [weight.shape[0]]

    report = verify(path, layerwise=True)
    assert report.precision == "int8" and report.passed, [r.failures for r in report.rows]
    assert report.tolerance["min_cosine"] == DEFAULT_TOLERANCES["int8"].min_cosine
    assert report.notes and "random-init" in report.notes[0]  # top-1 set aside, and said so
    assert report.layerwise.first_over_tolerance is None
    assert max(r.figures["rel_to_scale"] for r in report.rows) > 1e-3  # int8 error is real


def test_int8_calibration_sources_cache_and_manifest(cli, tmp_path, monkeypatch):
    images = tmp_path / "calib" / "class_a"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    # PNG noise: the same distribution as the gate's random images (JPEG would smooth it, and the gate
    # rightly fails ranges calibrated on one distribution and checked on another)
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, size=(70, 90, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "out"
    args = ["export", "--arch", "resnet18", "--input-size", "64", "--int8", "--calib-data", str(tmp_path / "calib"),
            "--calib-size", "16", "--out", str(out)]
    first = cli(*args)
    assert first.exit_code == 0, first.stderr
    assert "16/16 images" in first.stderr and "activation ranges cached in" in first.stderr
    manifest = read_manifest(out / "resnet18.json")
    options = manifest.precision_options["int8"]
    assert options["target"] == "trt" and options["method"] == "minmax" and options["weights"] == "per-channel"
    # a fifth of the 20 images held out of the ranges, the gate judged on them
    assert options["calibration"] == {"source": str(tmp_path / "calib"), "images": 16, "holdout": 4, "seed": 0}
    int8_rows = [p for p in manifest.parity if p["artifact"] == "int8"]
    simulated = [p for p in int8_rows if p["backend"] == "onnxruntime-cpu-unoptimized"]
    assert {(p["inputs"], p["judged"], p["reference"]) for p in simulated} == {
        ("holdout", True, "torch"), ("random", False, "torch")}
    kernel_rows = [p for p in int8_rows if p["backend"] == "onnxruntime-cpu"]
    assert {p["reference"] for p in kernel_rows} == {"torch", "onnxruntime-cpu-unoptimized"}
    assert not any(p["judged"] for p in kernel_rows)  # trt target: CPU kernels reported only
    assert (out / options["range_cache"]).is_file()
    second = cli(*args)  # same model, data and method: no recalibration
    assert second.exit_code == 0 and "activation ranges read from" in second.stderr and "16/16 images" not in second.stderr
    assert read_manifest(out / "resnet18.json").artifact("int8").sha256 == manifest.artifact("int8").sha256

    # an 8-bit-weight artifact run on ONNX Runtime's CPU kernels: warned about where the CPU lacks VNNI
    monkeypatch.setattr(environment, "int8_isa", lambda: "avx2")
    with pytest.warns(DeployWarning, match="no VNNI"):
        runtime.load(out / "resnet18.int8.onnx").close()
    predicted = cli("predict", str(out / "resnet18.int8.onnx"), str(images / "0.png"), "--topk", "1")
    assert predicted.exit_code == 0 and "warning: resnet18.int8.onnx: this CPU has no VNNI" in predicted.stderr
    monkeypatch.setattr(environment, "int8_isa", lambda: "vnni")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.load(out / "resnet18.int8.onnx").close()

    batch = random_images(6, (3, 64, 64), IMAGENET_MEAN, IMAGENET_STD, seed=1)
    np.save(tmp_path / "calib.npy", batch)
    npy = export("resnet18", input_size=64, int8=True, calib_data=tmp_path / "calib.npy", calib_method="percentile",
                 out=tmp_path / "npy", quiet=True)
    assert npy.manifest.precision_options["int8"]["calibration"] == {"source": str(tmp_path / "calib.npy"),
                                                                      "images": 5, "holdout": 1, "seed": 0}
    assert verify(npy.paths["int8"]).passed


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "needs --calib-data"),
        (["--calib-data", "/nonexistent/folder"], "does not exist"),
        (["--calib-data", "random", "--calib-size", "0"], "--calib-size 0 is out of range: it must be between 1 and"),
    ],
)
def test_int8_bad_calibration_input(cli, tmp_path, args, message):
    out = tmp_path / "out"
    result = cli("export", "--arch", "resnet18", "--input-size", "64", "--int8", *args, "--out", str(out), "-q")
    assert_one_line_error(result, 2, message)
    assert not out.exists()


def test_top1_judged_except_int8_on_random_weights():
    assert tolerance_for("int8", random_init=True)[0].min_top1 is None
    assert tolerance_for("int8", random_init=False) == (DEFAULT_TOLERANCES["int8"], None)
    assert tolerance_for("fp16", random_init=True)[0].min_top1 == 0.99


@pytest.mark.parametrize("isa", ["vnni", "avx2"])
def test_cpu_kernels_of_8_bit_weights_judged_only_where_exact(tmp_path, isa):
    """The cpu target with 8-bit weights: with VNNI its optimised kernels must match the graph run as
    written (judged); without VNNI they saturate, and are reported with the reason instead."""
    from resnet_deploy.environment import int8_isa

    if int8_isa() != isa:
        pytest.skip(f"needs an x86 CPU with INT8 kernels of kind {isa!r}; this one is {int8_isa()!r}")
    result = export("resnet18", input_size=32, int8=True, int8_target="cpu", reduce_range=False,
                    calib_data="random", calib_size=16, out=tmp_path, quiet=True)
    options = result.manifest.precision_options["int8"]
    assert options["reduce_range"] is False and options["cpu_isa"] == "vnni"
    kernel_rows = [p for p in result.manifest.parity if p["artifact"] == "int8" and p["backend"] == "onnxruntime-cpu"]
    assert kernel_rows and all(p["judged"] is (isa == "vnni") for p in kernel_rows)
    report = verify(result.paths["int8"])
    assert report.passed
    assert any("no VNNI" in note for note in report.notes) is (isa == "avx2")
