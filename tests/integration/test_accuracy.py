"""Accuracy on real data: a CIFAR-style ResNet trained on scikit-learn's bundled digits by
tools/train_cifar.py with its own normalisation, (x - 0.5) / 0.5, exported with that normalisation
declared, in fp32, fp16 and int8 (both targets). Top-1 on the held-out quarter is measured by a plain
ONNX Runtime loop, independent of this package. Goals: fp16 within 0.1 point of fp32, int8 within 1 point.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from resnet_deploy.artifacts import read_manifest
from resnet_deploy.environment import bf16_problem
from tests.conftest import train_digits

GOALS = {"fp16": 0.001, "int8": 0.01}  # largest top-1 drop against fp32, as a fraction
DECLARED = ["--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5"]


def held_out(folder, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The test split by hand: Pillow resize, [0, 1], (x - 0.5) / 0.5, NCHW."""
    images, labels = [], []
    for label, class_folder in enumerate(sorted(p for p in folder.iterdir() if p.is_dir())):
        for path in sorted(class_folder.glob("*.png")):
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), np.float32)
            images.append(((pixels / 255 - 0.5) / 0.5).transpose(2, 0, 1))
            labels.append(label)
    return np.stack(images), np.asarray(labels)


def plain_onnxruntime_top1(path, images: np.ndarray, labels: np.ndarray, *, optimize: bool = True) -> float:
    options = ort.SessionOptions()
    if not optimize:  # a Q/DQ graph as written: what TensorRT computes with int32 accumulation
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    predicted = np.concatenate([session.run(None, {name: images[i: i + 32]})[0].argmax(1)
                                for i in range(0, len(images), 32)])
    return float((predicted == labels).mean())


@pytest.mark.slow
def test_trained_model_is_accurate_and_cached(digits):
    out, record = digits
    assert record["test_images"] == 450 and record["train_images"] == 1347
    assert record["settings"]["mean"] == 0.5 and record["settings"]["std"] == 0.5
    assert record["test_top1_torch"] >= 0.95, record
    again = train_digits(out)  # same settings and data: found, not retrained
    assert again["cached"] is True and again["checkpoint_sha256"] == record["checkpoint_sha256"]


@pytest.mark.slow
def test_fp16_and_int8_keep_fp32_accuracy_on_held_out_digits(cli, digits, tmp_path):
    out, record = digits
    size = record["settings"]["size"]
    common = ["--arch", "resnet18_cifar", "--weights", str(out / record["checkpoint"]), "--input-size", str(size),
              *DECLARED, "--calib-data", str(out / "data" / "train"), "-q"]
    for target in ("trt", "cpu"):
        extra = ["--fp16", "--bf16"] if target == "trt" else []
        result = cli("export", *common, *extra, "--int8", "--int8-target", target, "--out", str(tmp_path / target))
        assert result.exit_code == 0, result.stderr
        assert "does not look normalised" not in result.stderr
        manifest = read_manifest(tmp_path / target / "resnet18_cifar.json")
        assert manifest.preprocess["mean"] == [0.5] * 3 and manifest.preprocess["std"] == [0.5] * 3
        # the gate judged every reduced precision on calibration images the ranges never saw
        assert manifest.precision_options["int8"]["calibration"]["holdout"] == 64
        assert {p["inputs"] for p in manifest.parity if p["judged"] and p["artifact"] != "fp32"} == {"holdout"}
        if target == "trt" and bf16_problem() is None:  # the fp32 file computed in bf16 passed its gate, top-1 too
            bf16 = [p for p in manifest.parity if p["artifact"] == "bf16" and p["judged"]]
            assert bf16 and all(p["cosine"] >= 0.999 and p["top1_agreement"] >= 0.95 for p in bf16), bf16
            assert manifest.precision_options["bf16"]["verified"] is True

    images, labels = held_out(out / "data" / "test", size)
    folder = tmp_path
    accuracy = {
        "fp32": plain_onnxruntime_top1(folder / "trt/resnet18_cifar.onnx", images, labels),
        "fp16": plain_onnxruntime_top1(folder / "trt/resnet18_cifar.fp16.onnx", images, labels),
        "int8-trt": plain_onnxruntime_top1(folder / "trt/resnet18_cifar.int8.onnx", images, labels, optimize=False),
        "int8-cpu": plain_onnxruntime_top1(folder / "cpu/resnet18_cifar.int8.onnx", images, labels),
    }
    fp32 = accuracy["fp32"]
    assert fp32 == pytest.approx(record["test_top1_torch"], abs=1 / 450), accuracy
    assert fp32 - accuracy["fp16"] <= GOALS["fp16"], accuracy
    assert fp32 - accuracy["int8-trt"] <= GOALS["int8"], accuracy
    assert fp32 - accuracy["int8-cpu"] <= GOALS["int8"], accuracy

    # verify --data reads the declared normalisation from the manifest and agrees with the plain loop
    result = cli("verify", str(folder / "cpu/resnet18_cifar.int8.onnx"), "--data", str(out / "data" / "test"), "--json")
    assert result.exit_code == 0, result.stdout
    report = json.loads(result.stdout)
    assert not any("random-init" in note for note in report["notes"])  # real weights: top-1 agreement judged
    assert report["accuracy"]["onnxruntime-cpu"]["top1"] == pytest.approx(accuracy["int8-cpu"])
    assert report["accuracy"]["torch-cpu"]["top1"] == pytest.approx(record["test_top1_torch"])


@pytest.mark.slow
def test_calibration_npy_made_with_other_statistics_is_warned_about(cli, digits, tmp_path):
    out, record = digits
    size = record["settings"]["size"]
    images, _ = held_out(out / "data" / "train", size)
    np.save(tmp_path / "calib.npy", images[:64])
    common = ["--arch", "resnet18_cifar", "--weights", str(out / record["checkpoint"]), "--input-size", str(size),
              "--int8", "--int8-target", "cpu", "--calib-data", str(tmp_path / "calib.npy"), "-q"]
    undeclared = cli("export", *common, "--out", str(tmp_path / "a"))  # the arch's CIFAR mean/std assumed
    assert undeclared.exit_code == 0, undeclared.stderr
    assert "warning: calib.npy does not look normalised with mean [0.4914" in undeclared.stderr
    declared = cli("export", *common, *DECLARED, "--out", str(tmp_path / "b"))
    assert declared.exit_code == 0 and "warning" not in declared.stderr, declared.stderr
