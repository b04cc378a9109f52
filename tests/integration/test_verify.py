"""`resnet-deploy verify`: parity figures, failures named by block, reports and bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from PIL import Image

from resnet_deploy import export
from resnet_deploy.artifacts import ArtifactEntry, read_manifest, write_manifest
from resnet_deploy.backends import detect, registry
from resnet_deploy.backends.detect import openvino as openvino_available
from resnet_deploy.backends.detect import openvino_bf16
from resnet_deploy.backends import pytorch as pytorch_backend
from resnet_deploy.models import create_model, save_checkpoint
from resnet_deploy.onnxgraph import find_points
from resnet_deploy.backends.pytorch import reference_model
from resnet_deploy.parity.verify import verify
from tests.conftest import assert_one_line_error, cli_without


@pytest.fixture
def exported(small_export):
    return small_export


def _reregister(path):
    """Record the artifact's new bytes in its manifest, as a (broken) conversion tool would."""
    manifest = read_manifest(path.with_suffix(".json"))
    manifest.artifacts = [ArtifactEntry.of_file(path, "fp32")]
    write_manifest(manifest, path.parent)


def _corrupt_block_conv(source, target, block):
    """Offset the first conv weight of residual block ``block`` (e.g. "layer3.0") by half its range."""
    model = onnx.load(str(source))
    names = [name for name, _module in create_model("resnet18").block_points()]
    points = find_points(model)
    producer_of = {out: i for i, node in enumerate(model.graph.node) for out in node.output}
    start = producer_of[points[names.index(block) - 1]]  # the output of the point before the block
    conv = next(n for n in model.graph.node[start + 1:] if n.op_type == "Conv")
    weight = next(t for t in model.graph.initializer if t.name == conv.input[1])
    array = onnx.numpy_helper.to_array(weight).copy()
    array[0] += 0.5 * np.abs(array).max()
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    onnx.save(model, str(target))


def test_untouched_artifact_passes(cli, exported, tmp_path):
    report_path = tmp_path / "report.json"
    result = cli("verify", str(exported.onnx_path), "--layerwise", "--report", str(report_path))
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "overall: PASS" in result.stdout and "every block within tolerance" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["passed"] is True and report["precision"] == "fp32"
    assert [r["batch"] for r in report["rows"] if r["backend"] == "onnxruntime-cpu"] == [1, 4]
    for key in ("max_abs", "mean_abs", "median_abs", "p99_abs", "max_rel", "cosine", "top1_agreement", "top5_overlap", "finite"):
        assert key in report["rows"][0]["figures"]
    assert [p["name"] for p in report["layerwise"]["points"]][:3] == ["stem", "layer1.0", "layer1.1"]
    assert len(report["layerwise"]["points"]) == 1 + 8


def test_backends_that_cannot_run_are_skipped_with_a_reason(exported):
    report = verify(exported.onnx_path)
    skipped = {s["backend"]: s["reason"] for s in report.skipped}
    ran = {r.backend for r in report.rows}
    assert "onnxruntime-cpu" in ran
    if not detect.tensorrt().available:
        assert "tensorrt" in skipped and "tensorrt" not in ran and skipped["tensorrt"]
    if not detect.torch_cuda().available:
        assert skipped["torch-cuda"] and "torch-cuda" not in ran
    assert not set(skipped) & ran
    # every backend of the registry is either run or said why not; the reference is not compared with itself
    assert ran | set(skipped) == {variant.name for _, variant in registry.variants()} - {"torch-cpu"}


def test_changed_conv_weight_fails_and_is_located(cli, exported, tmp_path):
    target = tmp_path / "resnet18.onnx"
    (tmp_path / "resnet18.json").write_text(exported.manifest_path.read_text())
    _corrupt_block_conv(exported.onnx_path, target, "layer3.0")
    _reregister(target)
    result = cli("verify", str(target), "--layerwise")
    assert result.exit_code == 1, result.stdout + result.stderr
    assert "overall: FAIL" in result.stdout
    assert "outputs part at layer3.0" in result.stdout
    report = verify(target, layerwise=True)
    assert not report.passed and report.layerwise.first_over_tolerance == "layer3.0"
    errors = {p.name: p.rel_to_scale for p in report.layerwise.points}
    assert errors["layer2.1"] < 1e-4 < errors["layer3.0"]


def test_changed_batchnorm_eps_in_pytorch_fails_and_is_located(cli, exported, monkeypatch):
    def altered_reference(manifest):
        model = reference_model(manifest)
        model.layer2[1].bn2.eps = 1.0  # running_var is 1: the block's output shrinks by 1/sqrt(2)
        return model

    monkeypatch.setattr(pytorch_backend, "reference_model", altered_reference)
    result = cli("verify", str(exported.onnx_path), "--layerwise")
    assert result.exit_code == 1, result.stdout
    assert "outputs part at layer2.1" in result.stdout


def test_tolerance_flags_override_defaults(cli, exported):
    strict = cli("verify", str(exported.onnx_path), "--max-error", "1e-12")
    assert strict.exit_code == 1 and "of output scale > 1e-12" in strict.stdout
    assert cli("verify", str(exported.onnx_path), "--min-cosine", "0.5").exit_code == 0


def test_npy_inputs_and_json(cli, exported, tmp_path):
    batch = np.random.default_rng(0).normal(size=(5, 3, 64, 64)).astype(np.float32)
    np.save(tmp_path / "batch.npy", batch)
    result = cli("verify", str(exported.onnx_path), "--inputs", str(tmp_path / "batch.npy"), "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["inputs"]["kind"] == "npy" and {r["batch"] for r in report["rows"]} == {5}
    np.save(tmp_path / "wrong.npy", batch[:, :, :32])
    assert_one_line_error(cli("verify", str(exported.onnx_path), "--inputs", str(tmp_path / "wrong.npy")), 2, "expected [N, 3, 64, 64]")


def test_bad_input(cli, exported, tmp_path):
    assert_one_line_error(cli("verify", str(exported.onnx_path), "--batch-sizes", "1,64"), 2, "outside the artifact's profile 1:4:8")
    assert_one_line_error(cli("verify", str(exported.onnx_path), "--batch-sizes", "one"), 2, "invalid --batch-sizes")
    assert_one_line_error(cli("verify", str(tmp_path / "missing.onnx")), 2, "does not exist")
    assert_one_line_error(cli("verify", str(exported.onnx_path), "--seed", "-1"), 2, "--seed -1 is out of range")
    assert_one_line_error(cli("verify", str(exported.onnx_path), "--report", str(tmp_path / "nodir" / "r.json")), 2,
                          "--report")
    for option in ("--max-error", "--min-cosine", "--min-top1"):  # NaN compares false with every bound
        assert_one_line_error(cli("verify", str(exported.onnx_path), option, "nan"), 2, f"{option} nan is not a finite")
    stray = tmp_path / "model.onnx"
    stray.write_bytes(exported.onnx_path.read_bytes())
    assert_one_line_error(cli("verify", str(stray)), 2, "manifest")


@pytest.mark.skipif(detect.tensorrt().available, reason="TensorRT is installed here: the engine would be verified")
def test_engine_without_tensorrt_names_the_onnx(cli, exported):
    engine = exported.onnx_path.with_suffix(".engine")
    engine.write_bytes(b"not really an engine")
    try:
        result = cli("verify", str(engine))
    finally:
        engine.unlink()
    assert_one_line_error(result, 2, str(exported.onnx_path))


def test_a_damaged_artifact_is_one_line_naming_the_change(cli, exported, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("resnet18.json", "resnet18.onnx", "resnet18.golden.npz"):
        shutil.copy(exported.onnx_path.parent / name, folder / name)
    model = folder / "resnet18.onnx"
    whole = model.read_bytes()
    for damaged in (whole[: len(whole) // 3], np.random.default_rng(0).bytes(4096)):  # truncated, random bytes
        model.write_bytes(damaged)
        result = cli("verify", str(model))
        assert_one_line_error(result, 2, "resnet18.onnx differs from what resnet18.json recorded at export")
        assert "and it does not load: ONNX Runtime cannot load resnet18.onnx" in result.stderr


def test_changed_weights_file_is_refused(tmp_path, cli):
    weights = save_checkpoint(create_model("resnet18"), tmp_path / "w.safetensors")
    result = export("resnet18", weights=weights, input_size=32, out=tmp_path / "out", quiet=True)
    save_checkpoint(create_model("resnet18", num_classes=1000), weights)  # same name, new init
    assert_one_line_error(cli("verify", str(result.onnx_path)), 2, "changed since export")


def _image_folder(root, classes=("a", "b", "c"), per_class=4):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(48 + i, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_verify_on_images_and_labelled_data(cli, exported, tmp_path):
    data = _image_folder(tmp_path / "data")
    result = cli("verify", str(exported.onnx_path), "--data", str(data), "--json")
    assert result.exit_code == 0, result.stdout
    report = json.loads(result.stdout)
    assert report["inputs"] == {"kind": "labelled images", "folder": str(data), "images": 12, "classes": 3}
    accuracy = report["accuracy"]
    openvino = {"openvino-cpu"} if openvino_available().available else set()
    openvino |= {"openvino-cpu-bf16"} if openvino_bf16().available else set()  # the fp32 file computed in bf16
    assert set(accuracy) == {"torch-cpu", "onnxruntime-cpu"} | openvino
    # an fp32 artifact that passed parity classifies exactly like its reference
    assert all(figures == accuracy["torch-cpu"] for figures in accuracy.values())
    assert 0 <= accuracy["torch-cpu"]["top1"] <= accuracy["torch-cpu"]["top5"] <= 1
    text = cli("verify", str(exported.onnx_path), "--images", str(data / "a")).stdout
    assert "kind=images" in text and "overall: PASS" in text and "accuracy" not in text
    assert_one_line_error(cli("verify", str(exported.onnx_path), "--images", str(data), "--data", str(data)), 2, "at most one")


def test_accuracy_figures():
    from resnet_deploy.parity.metrics import accuracy

    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    assert accuracy(logits, np.array([1, 1, 0])) == {"top1": 1 / 3, "top5": 1.0}


def _scale_block_conv(source, target, block, factor=3.0):
    """Scale the first conv weight of ``block`` after export, leaving the manifest as it was."""
    model = onnx.load(str(source))
    names = [name for name, _module in create_model("resnet18").block_points()]
    producer_of = {out: i for i, node in enumerate(model.graph.node) for out in node.output}
    start = producer_of[find_points(model)[names.index(block) - 1]]
    conv = next(n for n in model.graph.node[start + 1:] if n.op_type == "Conv")
    weight = next(t for t in model.graph.initializer if t.name == conv.input[1])
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * factor, weight.name))
    onnx.save(model, str(target))


@pytest.fixture
def copied(exported, tmp_path):
    """A copy of the export folder: its manifest, golden file and fp32 artifact."""
    for name in ("resnet18.json", "resnet18.golden.npz", "resnet18.onnx"):
        (tmp_path / name).write_bytes((exported.manifest_path.parent / name).read_bytes())
    return tmp_path / "resnet18.onnx"


def test_a_file_changed_after_export_is_compared_and_reported(cli, copied):
    _scale_block_conv(copied, copied, "layer2.1")
    result = cli("verify", str(copied), "--layerwise")
    assert result.exit_code == 1, result.stdout + result.stderr
    assert "FILE CHANGED SINCE EXPORT: resnet18.onnx differs from what resnet18.json recorded" in result.stdout
    assert "outputs part at layer2.1" in result.stdout
    report = json.loads(cli("verify", str(copied), "--json").stdout)
    assert report["file_changed"] and not report["passed"]


def test_strict_fails_on_the_changed_bytes_alone(cli, copied):
    model = onnx.load(str(copied))
    model.doc_string = "touched by a graph pass that changed nothing numeric"
    onnx.save(model, str(copied))
    relaxed = cli("verify", str(copied))
    assert relaxed.exit_code == 0 and "FILE CHANGED SINCE EXPORT" in relaxed.stdout, relaxed.stdout
    strict = cli("verify", str(copied), "--strict")
    assert strict.exit_code == 1 and "--strict: that alone fails" in strict.stdout
    assert "overall: FAIL" in strict.stdout


def _without_torch(*args):
    return cli_without("torch", *args)


def test_golden_reference_without_torch(exported, copied, tmp_path):
    manifest = read_manifest(exported.manifest_path)
    assert manifest.golden["file"] == "resnet18.golden.npz"
    passed = _without_torch("verify", str(copied), "--reference", "golden", "--json")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    report = json.loads(passed.stdout)
    assert report["reference"].startswith("golden outputs") and {r["reference"] for r in report["rows"]} == {"golden"}
    assert _without_torch("verify", str(copied)).returncode == 0  # auto: golden where torch is missing

    _scale_block_conv(copied, copied, "layer2.1")
    failed = _without_torch("verify", str(copied), "--reference", "golden")
    assert failed.returncode == 1 and "FILE CHANGED SINCE EXPORT" in failed.stdout, failed.stdout + failed.stderr
    assert "overall: FAIL" in failed.stdout
    needs_torch = _without_torch("verify", str(copied), "--reference", "golden", "--layerwise")
    assert needs_torch.returncode == 2 and needs_torch.stderr.startswith("error: --reference golden")


def test_target_path_runs_without_torch(exported, tmp_path):
    Image.fromarray(np.zeros((70, 70, 3), np.uint8)).save(tmp_path / "black.png")
    predicted = _without_torch("predict", str(exported.onnx_path), str(tmp_path / "black.png"), "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert len(json.loads(predicted.stdout)["predictions"][0]["top"]) == 5
    bench = _without_torch("bench", str(exported.onnx_path), "--batch-sizes", "1", "--iters", "3", "--json", "-q")
    assert bench.returncode == 0, bench.stderr
    doctor = _without_torch("doctor", "--json")
    assert doctor.returncode == 0, doctor.stderr
    assert json.loads(doctor.stdout)["backends"]["torch-cuda"]["reason"] == "torch is not installed"
    torch_backend = _without_torch("bench", str(exported.onnx_path), "--backend", "torch", "--iters", "1", "-q")
    assert torch_backend.returncode == 2 and torch_backend.stderr.startswith("error: the torch backend needs torch")


@pytest.mark.parametrize("command", [["export", "--arch", "resnet18"], ["list"]])
def test_export_side_commands_without_torch_name_the_extra(command, tmp_path):
    done = _without_torch(*command, "--out" if command[0] == "export" else "--weights", *(
        [str(tmp_path / "out")] if command[0] == "export" else []))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == (f"error: `resnet-deploy {command[0]}` needs torch, which is not installed here "
                                   "(a target install has no PyTorch): pip install 'resnet-deploy[export]'")
    assert not (tmp_path / "out").exists()


def test_golden_outputs_that_are_not_the_exports_are_refused(cli, copied):
    """The golden reference is checked against the manifest's record like the artifact: changed bytes, a file
    gone, or a FIFO in its place are one line each, never a comparison against other numbers."""
    import os

    golden = copied.with_name("resnet18.golden.npz")
    golden.write_bytes(golden.read_bytes() + b"\0")
    changed = cli("verify", str(copied), "--reference", "golden")
    assert_one_line_error(changed, 2, f"the golden outputs {golden} changed since export")
    golden.unlink()
    assert_one_line_error(cli("verify", str(copied), "--reference", "golden"), 2, f"{golden} is gone")
    os.mkfifo(golden)
    assert_one_line_error(cli("verify", str(copied), "--reference", "golden"), 2, "is a FIFO, not a regular file")
