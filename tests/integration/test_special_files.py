"""Every path a command reads or writes, given something that is not a regular file: a FIFO (a read blocks
forever), a device (/dev/zero never ends; renaming over /dev/null as root replaces it), a folder. Inputs and
outputs the user names are refused in one line; derived files the toolkit keeps (caches, records, locks) are
made again. Each command runs in its own process under a timeout, so a regression fails instead of hanging."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resnet_deploy.backends.onnxrt import GRAPH_CACHE_DIR


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resnet_deploy.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def _one_line_error(done: subprocess.CompletedProcess, contains: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and contains in lines[-1], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


@pytest.fixture
def copy(small_export, tmp_path) -> Path:
    """The export's fp32 file and manifest in a folder of this test's own."""
    folder = tmp_path / "export"
    folder.mkdir()
    for name in ("resnet18.onnx", "resnet18.json"):
        shutil.copy(small_export.onnx_path.parent / name, folder / name)
    return folder


@pytest.fixture
def image(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(path)
    return path


def test_inputs_the_user_names_are_refused_when_not_regular_files(copy, image, tmp_path):
    fifo = tmp_path / "inputs.npy"
    os.mkfifo(fifo)
    _one_line_error(_run("verify", str(copy / "resnet18.onnx"), "--inputs", str(fifo)), "is a FIFO, not a regular file")
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    _one_line_error(_run("verify", str(copy / "resnet18.onnx"), "--inputs", str(empty)), "as a .npy array")
    zero = tmp_path / "labels.txt"
    zero.symlink_to("/dev/zero")
    _one_line_error(_run("predict", str(copy / "resnet18.onnx"), str(image), "--labels", str(zero)),
                    "labels file")
    _one_line_error(_run("predict", str(copy / "resnet18.onnx"), str(image), "--labels", str(fifo)),
                    "is a FIFO, not a regular file")


def test_outputs_are_never_renamed_over_a_device_or_a_fifo(copy, tmp_path):
    """--plot /dev/null as root replaced the system's /dev/null with a PNG: an output that is not a regular
    file is refused before the run, and nothing is renamed over it."""
    fifo = tmp_path / "plot.png"
    os.mkfifo(fifo)
    done = _run("bench", str(copy / "resnet18.onnx"), "--backend", "ort", "--iters", "2", "--batch-sizes", "1",
                "--plot", str(fifo))
    _one_line_error(done, "is a FIFO, not a regular file")
    assert fifo.is_fifo()
    report = tmp_path / "report.json"
    os.mkfifo(report)
    _one_line_error(_run("verify", str(copy / "resnet18.onnx"), "--report", str(report)), "is a FIFO")
    assert report.is_fifo()


def test_a_manifest_plan_or_record_that_is_not_a_file_is_one_line(copy, image, tmp_path):
    plan = copy / "resnet18.deploy.json"
    os.mkfifo(plan)
    _one_line_error(_run("predict", str(copy / "resnet18.onnx"), str(image)), "resnet18.deploy.json is a FIFO")
    plan.unlink()
    manifest = copy / "resnet18.json"
    saved = manifest.read_bytes()
    manifest.unlink()
    os.mkfifo(manifest)
    _one_line_error(_run("predict", str(copy / "resnet18.onnx"), str(image)), "is a FIFO, not a regular file")
    manifest.unlink()
    manifest.write_bytes(saved)
    repo = tmp_path / "repo"
    (repo / "resnet18_preprocess").mkdir(parents=True)
    os.mkfifo(repo / "resnet18_preprocess" / "resnet_deploy.json")
    _one_line_error(_run("triton", str(copy / "resnet18.onnx"), "--repo", str(repo), "--ensemble"), "is a FIFO")
    other = tmp_path / "repo2"
    other.mkdir()
    os.mkfifo(other / ".resnet18.resnet_deploy.lock")
    _one_line_error(_run("triton", str(copy / "resnet18.onnx"), "--repo", str(other)), "lock file")


def test_damaged_derived_files_are_made_again(copy, image):
    """ONNX Runtime's cache record as a FIFO, a link to /dev/zero or bytes that are not text: the answer is
    the same as with a good cache, with a warning, and the cache is good again afterwards."""
    baseline = _run("predict", str(copy / "resnet18.onnx"), str(image), "--backend", "ort", "--json")
    assert baseline.returncode == 0, baseline.stderr
    want = json.loads(baseline.stdout)["predictions"]
    record, = (copy / GRAPH_CACHE_DIR).glob("*.sha256")

    def fifo():
        record.unlink()
        os.mkfifo(record)

    def zero():
        record.unlink()
        record.symlink_to("/dev/zero")

    for spoil in (fifo, zero, lambda: record.write_bytes(os.urandom(64))):
        spoil()
        done = _run("predict", str(copy / "resnet18.onnx"), str(image), "--backend", "ort", "--json")
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout)["predictions"] == want
        assert "optimising again" in done.stderr or "not used" in done.stderr
        assert record.is_file() and not record.is_symlink()
