"""TensorRT engines: built and run where TensorRT and a GPU exist; elsewhere a clear refusal."""

from __future__ import annotations

import pytest

from resnet_deploy import export, verify
from resnet_deploy.backends import detect
from resnet_deploy.export import build
from tests.conftest import assert_one_line_error

TRT = detect.tensorrt()
needs_trt = pytest.mark.skipif(not TRT.available, reason=f"TensorRT engine tests need TensorRT and a GPU: {TRT.reason}")


@pytest.mark.skipif(TRT.available, reason="TensorRT is available here: the engine is built, not refused")
def test_without_tensorrt_export_says_why_and_engine_flag_refuses(cli, tmp_path):
    result = cli("export", "--arch", "resnet18", "--input-size", "64", "--out", str(tmp_path / "a"))
    assert result.exit_code == 0
    assert f"TensorRT engine not built: {TRT.reason}" in result.stderr
    assert not list((tmp_path / "a").glob("*.engine"))
    demanded = cli("export", "--arch", "resnet18", "--input-size", "64", "--engine", "--out", str(tmp_path / "b"))
    assert_one_line_error(demanded, 2, "--engine: cannot build a TensorRT engine here")
    assert not (tmp_path / "b").exists()
    assert_one_line_error(cli("build", str(tmp_path / "a" / "resnet18.onnx")), 2, "cannot build a TensorRT engine here")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["resnet18.golden.npz", "resnet18.json", "resnet18.onnx"]


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_built_gated_and_verified(tmp_path, precision):
    result = export("resnet18", input_size=64, fp16=precision == "fp16", int8=precision == "int8", calib_data="random",
                    calib_size=32, engine=True, out=tmp_path, quiet=True)
    record = result.manifest.precision_options["engine"]
    assert record["built_from"] == f"resnet18{'' if precision == 'fp32' else '.' + precision}.onnx"
    assert any(p["artifact"] == "engine" for p in result.manifest.parity)
    report = verify(result.paths["engine"])
    assert report.passed and "tensorrt" in {r.backend for r in report.rows}


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_trt
def test_build_command_adds_an_engine_to_an_export(tmp_path):
    result = export("resnet18", input_size=64, fp16=True, engine=False, out=tmp_path, quiet=True)
    engine = build(result.paths["fp16"], quiet=True)
    assert engine.name == "resnet18.engine" and engine.exists()
    assert (tmp_path / "resnet18.onnx").exists() and (tmp_path / "resnet18.fp16.onnx").exists()


def test_build_runs_the_export_engine_steps_and_a_failed_gate_leaves_nothing(tmp_path, monkeypatch):
    """`build` on the TensorRT stand-in (tests/standins: its engines compute channel sums, not the network):
    the export's engine steps run end to end through the registry (engine built, loaded on the GPU it was
    built for, run on the gate's inputs, judged as its fp16 source) and the gate fails, leaving no engine
    and the manifest as it was. No engine is built or run: the stand-in only records the calls."""
    import sys

    from resnet_deploy.backends import cuda
    from resnet_deploy.backends.detect import Availability
    from resnet_deploy.errors import ParityError
    from tests.standins import cudart as cudart_standin
    from tests.standins import tensorrt as trt_standin

    result = export("resnet18", num_classes=3, input_size=16, batch="1:2:4", fp16=True, engine=False, out=tmp_path,
                    quiet=True)  # three logits: the stand-in engine's three channel sums can be compared with them
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    cudart = cudart_standin.CudaRuntime()
    trt = trt_standin.module("10.16.1.11", cudart)
    monkeypatch.setattr(cuda, "runtime_api", lambda: cudart)
    monkeypatch.setattr(cuda, "bindings_installed", lambda: True)
    monkeypatch.setattr(detect, "tensorrt", lambda: Availability(True))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(ParityError, match=r"^engine artifact: TensorRT disagrees with PyTorch \(tensorrt\) on 'logits'"):
        build(result.paths["fp16"], quiet=True)
    assert ("Runtime", "deserialize_cuda_engine") in {entry[:2] for entry in trt.log.entries}  # the gate ran it
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert not cudart.memory and not cudart.pinned  # the gate's runner was closed
