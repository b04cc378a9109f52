"""Accuracy on real data: a CIFAR-style ResNet trained on scikit-learn's bundled digits by
tools/train_cifar.py, exported in fp32, fp16 and int8 (both targets), each judged with
`verify --data` on the held-out images. Goals: fp16 within 0.1 point of fp32, int8 within 1 point.

The checkpoint is cached in pytest's cache folder, so only the first run trains (~2 min on 2 cores).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="scikit-learn (a test dependency) bundles the digits data set")

TOOL = Path(__file__).resolve().parents[2] / "tools" / "train_cifar.py"
GOALS = {"fp16": 0.001, "int8": 0.01}  # largest top-1 drop against fp32, as a fraction


def _train(out: Path) -> dict:
    done = subprocess.run([sys.executable, str(TOOL), "--out", str(out), "--json"], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout)


@pytest.fixture(scope="session")
def digits(request) -> tuple[Path, dict]:
    out = Path(request.config.cache.mkdir("digits"))
    return out, _train(out)


@pytest.mark.slow
def test_trained_model_is_accurate_and_cached(digits):
    out, record = digits
    assert record["test_images"] == 450 and record["train_images"] == 1347
    assert record["test_top1_torch"] >= 0.95, record
    again = _train(out)  # same settings and data: found, not retrained
    assert again["cached"] is True and again["checkpoint_sha256"] == record["checkpoint_sha256"]


@pytest.mark.slow
def test_fp16_and_int8_keep_fp32_accuracy_on_held_out_digits(cli, digits, tmp_path):
    out, record = digits
    checkpoint = out / record["checkpoint"]
    common = ["--arch", "resnet18_cifar", "--weights", str(checkpoint), "--input-size", str(record["settings"]["size"]),
              "--calib-data", str(out / "data" / "train"), "-q"]
    for target in ("trt", "cpu"):
        extra = ["--fp16"] if target == "trt" else []
        result = cli("export", *common, *extra, "--int8", "--int8-target", target, "--out", str(tmp_path / target))
        assert result.exit_code == 0, result.stderr

    accuracy = {}
    for label, path in {"fp32": "trt/resnet18_cifar.onnx", "fp16": "trt/resnet18_cifar.fp16.onnx",
                        "int8-trt": "trt/resnet18_cifar.int8.onnx", "int8-cpu": "cpu/resnet18_cifar.int8.onnx"}.items():
        result = cli("verify", str(tmp_path / path), "--data", str(out / "data" / "test"), "--json")
        assert result.exit_code == 0, result.stdout
        report = json.loads(result.stdout)
        assert report["notes"] == []  # real weights: top-1 agreement is judged at every precision
        accuracy[label] = report["accuracy"]["onnxruntime-cpu"]["top1"]
        assert report["accuracy"]["torch-cpu"]["top1"] == pytest.approx(record["test_top1_torch"])

    fp32 = accuracy["fp32"]
    assert fp32 == pytest.approx(record["test_top1_torch"], abs=1 / 450)
    assert fp32 - accuracy["fp16"] <= GOALS["fp16"], accuracy
    assert fp32 - accuracy["int8-trt"] <= GOALS["int8"], accuracy
    assert fp32 - accuracy["int8-cpu"] <= GOALS["int8"], accuracy
