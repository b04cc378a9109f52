"""The OpenVINO backend, added as one module and a registry row: runtime.load, verify, bench and doctor
take it like any other backend."""

from __future__ import annotations

import os

import json

import numpy as np
import pytest

from resnet_deploy import export
from resnet_deploy.target import runtime
from resnet_deploy.backends import detect
from resnet_deploy.backends.openvino import CACHE_DIR
from resnet_deploy.data import random_images
from resnet_deploy.errors import DeployError
from resnet_deploy.parity.verify import verify
from tests.conftest import assert_one_line_error, cli_without

OPENVINO = detect.openvino()
pytestmark = [pytest.mark.openvino,
              pytest.mark.skipif(not OPENVINO.available, reason=f"OpenVINO backend: {OPENVINO.reason}")]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_openvino_runs_the_artifacts_like_onnx_runtime(small_export):
    for precision, limit in (("fp32", 1e-4), ("fp16", 1e-2)):
        path = small_export.paths[precision]
        with runtime.load(path, backend="openvino") as runner, runtime.load(path) as ort_runner:
            assert runner.name == "openvino-cpu" and runner.backend == "openvino"
            assert runner.precision == precision and runner.batch_range == (1, 8)
            assert runner.output_names == ["logits"] and runner.inputs[0].shape[1:] == [3, 64, 64]
            assert runner.describe()["openvino"] and runner.describe()["threads"] >= 1
            for size in (1, 3):
                batch = random_images(size, (3, 64, 64), MEAN, STD, seed=size)
                got, want = runner(batch)["logits"], ort_runner(batch)["logits"]
                assert got.shape == (size, 1000) and got.dtype == np.float32
                assert np.abs(got - want).max() <= limit * np.abs(want).max()
            first = runner(batch)["logits"].copy()
            runner(random_images(3, (3, 64, 64), MEAN, STD, seed=9))
            np.testing.assert_array_equal(first, got)  # outputs are copies, not views the next call overwrites
            with pytest.raises(DeployError, match="outside the artifact's profile"):
                runner(random_images(9, (3, 64, 64), MEAN, STD))
        assert runner.compiled is None
    assert any((small_export.onnx_path.parent / CACHE_DIR).iterdir())  # the compiled blob, kept for next time


def test_a_bad_compiled_blob_is_not_served(small_export, tmp_path):
    """OpenVINO keys its cache on the model and checks each blob: another model's blob under this model's
    name, or a damaged one, is compiled again rather than served (checked here, so an OpenVINO that
    stopped doing it would fail this test rather than serve wrong answers)."""
    import shutil

    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("resnet18.json", "resnet18.onnx", "resnet18.fp16.onnx"):
        shutil.copy(small_export.onnx_path.parent / name, folder / name)
    batch = random_images(2, (3, 64, 64), MEAN, STD, seed=3)
    with runtime.load(folder / "resnet18.onnx", backend="openvino") as runner:
        want = runner(batch)["logits"]
    blob, = (folder / CACHE_DIR).glob("*.blob")
    with runtime.load(folder / "resnet18.fp16.onnx", backend="openvino"):
        pass
    other, = set((folder / CACHE_DIR).glob("*.blob")) - {blob}
    def flipped():  # bytes changed inside the blob: OpenVINO's own checks pass it, and it computed garbage
        data = bytearray(blob.read_bytes())
        data[len(data) // 2: len(data) // 2 + 4096] = bytes(4096)
        blob.chmod(0o644)
        blob.write_bytes(bytes(data))

    def fifo():  # a read of it would block forever
        blob.unlink()
        os.mkfifo(blob)

    for spoil in (lambda: shutil.copy(other, blob), lambda: blob.write_bytes(blob.read_bytes()[:1000]), flipped,
                  fifo):
        spoil()
        with runtime.load(folder / "resnet18.onnx", backend="openvino") as runner:
            np.testing.assert_array_equal(runner(batch)["logits"], want)


def test_openvino_only_on_the_cpu(small_export):
    with pytest.raises(DeployError, match="openvino backend runs on the CPU"):
        runtime.load(small_export.onnx_path, backend="openvino", device="cuda")


def test_verify_judges_openvino_beside_onnx_runtime(small_export):
    report = verify(small_export.onnx_path)
    rows = [row for row in report.rows if row.backend == "openvino-cpu"]
    assert [row.batch for row in rows] == [1, 4] and all(row.judged and row.passed for row in rows)
    assert report.passed


def test_openvino_int8_kernels_are_checked_against_the_graph_as_written(precision_export):
    """OpenVINO's INT8 kernels are x86 kernels like ONNX Runtime's: compared with PyTorch and with the Q/DQ
    graph run as written, judged where the artifact is made for them (here the trt target: reported)."""
    report = verify(precision_export("resnet18").paths["int8"])
    rows = [row for row in report.rows if row.backend == "openvino-cpu"]
    assert {row.reference for row in rows} == {"torch", "onnxruntime-cpu-unoptimized"}
    assert not any(row.judged for row in rows)
    assert any("openvino-cpu" in note and "not judged" in note for note in report.notes)
    assert report.passed  # judged on the graph as written


def test_openvino_int8_for_the_cpu_target_is_judged_against_pytorch(tmp_path):
    """7-bit weights (exact kernels on any x86): OpenVINO is judged against PyTorch like ONNX Runtime; against
    the Q/DQ graph as written it is reported, since it compiles an INT8 graph of its own."""
    result = export("resnet18", input_size=32, int8=True, int8_target="cpu", reduce_range=True, calib_data="random",
                    calib_size=16, exporter="torchscript", out=tmp_path, quiet=True)
    report = verify(result.paths["int8"])
    rows = {(row.reference, row.judged) for row in report.rows if row.backend == "openvino-cpu"}
    assert rows == {("torch", True), ("onnxruntime-cpu-unoptimized", False)}
    assert report.passed
    assert any(note.startswith("openvino-cpu against the graph as written reported") for note in report.notes)


def test_bench_lists_openvino(cli, small_export):
    result = cli("bench", str(small_export.onnx_path), "--backend", "auto,openvino", "--batch-sizes", "1",
                 "--iters", "3", "--warmup", "1", "--json", "-q")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [row["backend"] for row in report["results"]] == ["onnxruntime-cpu", "openvino-cpu"]
    assert report["runners"][1]["openvino"]


def test_without_openvino_doctor_says_why_and_the_backend_refuses(small_export):
    doctor = cli_without("openvino", "doctor", "--json")
    assert doctor.returncode == 0, doctor.stderr
    state = json.loads(doctor.stdout)["backends"]["openvino-cpu"]
    assert state["usable"] is False and "openvino is not installed" in state["reason"]
    refused = cli_without("openvino", "bench", str(small_export.onnx_path), "--backend", "openvino", "-q")
    assert refused.returncode == 2 and refused.stderr.startswith("error: the openvino backend needs openvino")
    verified = cli_without("openvino", "verify", str(small_export.onnx_path), "--json")
    assert verified.returncode == 0, verified.stderr
    skipped = {s["backend"]: s["reason"] for s in json.loads(verified.stdout)["skipped"]}
    assert "openvino is not installed" in skipped["openvino-cpu"]


def test_bad_backend_for_the_file_is_one_line(cli, small_export):
    result = cli("predict", str(small_export.onnx_path), str(small_export.onnx_path), "--backend", "trt")
    assert_one_line_error(result, 2, "--backend trt runs a TensorRT engine: use --backend ort or openvino or torch")


def test_bf16_inference_where_the_cpu_has_it_natively(small_export, monkeypatch):
    """--openvino-bf16: OpenVINO compiles the fp32 file for bf16 where the CPU has native bf16 (its outputs
    near the f32 run's, within bf16's rounding), and is refused with the reason where it does not."""
    from resnet_deploy import environment
    from resnet_deploy.errors import DeployError
    from resnet_deploy.parity.metrics import compare_arrays

    batch = random_images(2, (3, 64, 64), MEAN, STD, seed=8)
    if environment.bf16_problem() is None:
        with runtime.load(small_export.onnx_path, backend="openvino") as f32, \
                runtime.load(small_export.onnx_path, backend="openvino", bf16=True) as bf16:
            assert f32.describe()["inference_precision"] == "f32" and bf16.describe()["inference_precision"] == "bf16"
            assert bf16.name == "openvino-cpu-bf16"
            figures = compare_arrays(f32(batch)["logits"], bf16(batch)["logits"])
            assert 0 < figures.rel_to_scale < 0.1 and figures.cosine > 0.99  # bf16 rounding: not f32, not garbage
    monkeypatch.setattr(environment, "cpu_flags", lambda: {"avx2", "fma"})
    with pytest.raises(DeployError, match=r"--openvino-bf16: this CPU has no native bf16 \(avx512_bf16, amx_bf16\)"):
        runtime.load(small_export.onnx_path, backend="openvino", bf16=True)
    with pytest.raises(DeployError, match=r"--openvino-bf16 computes the fp32 file in bf16; resnet18.fp16.onnx is "
                                          r"the fp16 file: give resnet18.onnx"):
        runtime.load(small_export.paths["fp16"], backend="openvino", bf16=True)


def test_the_throughput_hint_splits_a_batch_across_streams_and_computes_the_same(small_export):
    """--openvino-throughput: OpenVINO's streams, a batch split across its requests and joined in order;
    every image's outputs are the latency hint's, up to float32 reordering."""
    from resnet_deploy.parity.metrics import compare_arrays

    batch = random_images(5, (3, 64, 64), MEAN, STD, seed=9)  # not a multiple of the streams
    with runtime.load(small_export.onnx_path, backend="openvino") as latency, \
            runtime.load(small_export.onnx_path, backend="openvino", throughput=True) as throughput:
        assert throughput.name == "openvino-cpu-throughput" and throughput.describe()["streams"] >= 1
        for size in (1, 5):
            figures = compare_arrays(latency(batch[:size])["logits"], throughput(batch[:size])["logits"])
            assert figures.rel_to_scale < 1e-4 and figures.top1_agreement == 1.0
        per_image = [throughput(batch[i:i + 1])["logits"] for i in range(5)]
        assert compare_arrays(np.concatenate(per_image), throughput(batch)["logits"]).rel_to_scale < 1e-4  # in order


def test_a_model_openvino_cannot_compile_is_one_error_not_a_cache_warning_first(tmp_path):
    import warnings

    import onnx
    from onnx import TensorProto, helper

    from resnet_deploy.backends.openvino import OpenVINORunner

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["input"], ["logits"], domain="nowhere")], "g", [x], [y])
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("nowhere", 1)]),
              path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning about the cache would raise here, before the real error
        with pytest.raises(DeployError, match="OpenVINO cannot compile odd.onnx") as caught:
            OpenVINORunner(path, cache_dir=tmp_path / CACHE_DIR)
    assert "\n" not in str(caught.value)
