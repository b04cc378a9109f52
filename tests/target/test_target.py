"""The target side: what a box without PyTorch runs (load, predict, verify against golden outputs,
serve, doctor), on artifacts exported elsewhere.

In the main run these export their own small artifacts; .ci/run also runs them in venvs of Python 3.10
and 3.13 that have no PyTorch (`pip install -e '.[serve]'`), on artifacts the main venv exported,
named by RESNET_DEPLOY_TARGET_ARTIFACTS: there they also check that torch cannot be imported.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from resnet_deploy.target import runtime
from resnet_deploy.cli import main
from resnet_deploy.parity.results import RunResults
from tests.conftest import free_port, wait_until_ready

GIVEN = os.environ.get("RESNET_DEPLOY_TARGET_ARTIFACTS")


def export_target_artifacts(out: Path, int8_target: str = "cpu") -> Path:
    """The artifacts the target tests run: resnet18 at 64 px, fp32, fp16 and INT8 (for ``int8_target``),
    golden outputs (.ci/run's emulated ARM64 step verifies the ``trt`` target's too)."""
    from resnet_deploy import export

    export("resnet18", input_size=64, batch="1:2:4", fp16=True, int8=True, int8_target=int8_target,
           calib_data="random", calib_size=8, out=out, quiet=True)
    return out


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    if GIVEN:
        return Path(GIVEN)
    if importlib.util.find_spec("torch") is None:
        pytest.skip("no PyTorch to export with, and RESNET_DEPLOY_TARGET_ARTIFACTS names no exported folder")
    return export_target_artifacts(tmp_path_factory.mktemp("target"))


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.skipif(not GIVEN, reason="the main run has PyTorch; the target venvs of .ci/run have none")
def test_the_target_venv_has_no_torch():
    assert importlib.util.find_spec("torch") is None


def test_runtime_load_runs_like_the_golden_outputs(artifacts):
    golden = RunResults.load(artifacts / "resnet18.golden.npz")  # PyTorch's outputs, stored at export
    (reference,) = golden.outputs
    assert golden.batches
    with runtime.load(artifacts / "resnet18.onnx") as runner:
        for (_, batch), want in zip(golden.batches, golden.outputs[reference]):
            logits = runner(batch)["logits"]
            assert np.abs(logits - want["logits"]).max() <= 1e-3 * np.abs(want["logits"]).max()
    assert "torch" not in sys.modules or not GIVEN


@pytest.mark.parametrize("name", ["resnet18.onnx", "resnet18.int8.onnx"])
def test_verify_against_golden_outputs(artifacts, name):
    result = _cli("verify", str(artifacts / name), "--reference", "golden", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and report["rows"]


def test_predict_an_image(artifacts, tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(80, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    result = _cli("predict", str(artifacts / "resnet18.onnx"), str(tmp_path / "photo.png"), "--json")
    assert result.exit_code == 0, result.stderr
    top = json.loads(result.stdout)["predictions"][0]["top"]
    assert len(top) == 5 and abs(sum(t["probability"] for t in top)) <= 1.0 + 1e-6


def test_doctor(artifacts):
    result = _cli("doctor", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["backends"]["onnxruntime-cpu"]["usable"]



def test_serve_answers_an_inference_request(artifacts):
    """One lone request, then two at once: on Python 3.10 the lone one hung the server (its batcher died
    on asyncio's own TimeoutError)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "resnet_deploy.cli", "serve", str(artifacts / "resnet18.onnx"),
                               "--port", str(port), "--max-batch", "4"], stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/v2"
    try:
        wait_until_ready(f"{base}/health/ready", server, 60, lambda: server.stderr.read())
        batch = np.random.default_rng(1).normal(size=(1, 3, 64, 64)).astype(np.float32)
        body = json.dumps({"inputs": [{"name": "input", "shape": list(batch.shape), "datatype": "FP32",
                                       "data": batch.ravel().tolist()}]}).encode()
        request = urllib.request.Request(f"{base}/models/resnet18/infer", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=20) as answer:
            outputs = json.loads(answer.read())["outputs"]
        logits = np.asarray(outputs[0]["data"], np.float32).reshape(outputs[0]["shape"])
        with runtime.load(artifacts / "resnet18.onnx") as runner:
            want = runner.run_padded(batch)["logits"]
        np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)
    finally:
        server.terminate()
        server.wait(timeout=30)
