"""The GPU-free parts of the TensorRT path: flags by version, profiles, sources, compatibility."""

from __future__ import annotations

import types

import pytest

from resnet_deploy.artifacts import BatchProfile, Manifest, PreprocessRecord, TensorSpec
from resnet_deploy.backends import detect
from resnet_deploy.backends.tensorrt import check_engine_compatible, current_environment
from resnet_deploy.errors import DeployError, DeployWarning
from resnet_deploy.export.engine import (
    BuildOptions,
    engine_record,
    needs_strongly_typed_flag,
    network_flags,
    profile_shapes,
)
from resnet_deploy.precisions import engine_source


def _fake_trt(version: str):
    """Only what network_flags reads: the version and the STRONGLY_TYPED enum value (1 in TensorRT 10)."""
    flag = types.SimpleNamespace(STRONGLY_TYPED=1)
    return types.SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=flag)


def test_network_flags_by_version():
    assert needs_strongly_typed_flag("10.12.0.36") and not needs_strongly_typed_flag("11.0.0")
    assert network_flags(_fake_trt("10.3.0")) == 1 << 1
    assert network_flags(_fake_trt("11.1.0")) == 0  # always strongly typed; the flag is ignored
    with pytest.raises(DeployError, match="too old"):
        network_flags(_fake_trt("8.6.1"))


_PREPROCESS = PreprocessRecord(resize=256, crop=(224, 192), interpolation="bilinear", scale=1 / 255,
                               mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), layout="NCHW", color="RGB")


def _manifest(dynamic_hw=False, batch=BatchProfile(1, 8, 32)):
    shape = ["batch", 3, "height", "width"] if dynamic_hw else ["batch", 3, 224, 192]
    return Manifest(
        stem="m", arch="resnet50", num_classes=1000, model_options={}, weights={"init": "random", "seed": 0},
        input=TensorSpec("input", shape), preprocess=_PREPROCESS, outputs=[TensorSpec("logits", ["batch", 1000])],
        batch=batch, dynamic_hw=dynamic_hw, opset=18, exporter="dynamo", simplified=True,
    )


def test_profile_shapes_from_the_manifest():
    assert profile_shapes(_manifest()) == {"input": ((1, 3, 224, 192), (8, 3, 224, 192), (32, 3, 224, 192))}
    assert profile_shapes(_manifest(batch=BatchProfile(4, 4, 4)))["input"][0] == (4, 3, 224, 192)
    low, opt, high = profile_shapes(_manifest(dynamic_hw=True))["input"]
    assert low == (1, 3, 112, 96) and opt == (8, 3, 224, 192) and high == (32, 3, 448, 384)


def test_engine_source_prefers_the_most_reduced_precision_tensorrt_takes():
    trt, cpu = {"int8": {"target": "trt"}}, {"int8": {"target": "cpu"}}
    assert engine_source({}, {"fp32"}) == "fp32"
    assert engine_source({}, {"fp32", "fp16"}) == "fp16"
    assert engine_source(trt, {"fp32", "fp16", "int8"}) == "int8"
    assert engine_source(cpu, {"fp32", "fp16", "int8"}) == "fp16"  # unsigned activations: not for TensorRT
    assert engine_source(cpu, {"fp32", "int8"}) == "fp32"


def test_build_options_checked():
    BuildOptions(hardware_compat="ampere+", dla_core=0).check()
    for bad in (BuildOptions(workspace_gib=0), BuildOptions(dla_core=-1), BuildOptions(hardware_compat="turing+")):
        with pytest.raises(DeployError):
            bad.check()


def test_engine_compatibility_names_both_sides():
    record = engine_record("10.12.0", "NVIDIA H200", (9, 0), "m.fp16.onnx", BuildOptions())
    check_engine_compatible(record, "10.12.0", "NVIDIA H200", (9, 0))
    with pytest.raises(DeployError, match="TensorRT 10.12.0, this machine has TensorRT 10.13.0"):
        check_engine_compatible(record, "10.13.0", "NVIDIA H200", (9, 0))
    with pytest.raises(DeployError, match=r"NVIDIA H200 \(compute capability 9.0\).*NVIDIA A100 \(8.0\)"):
        check_engine_compatible(record, "10.12.0", "NVIDIA A100", (8, 0))
    portable = engine_record("10.12.0", "NVIDIA H200", (9, 0), "m.onnx",
                             BuildOptions(version_compatible=True, hardware_compat="ampere+"))
    check_engine_compatible(portable, "10.13.0", "NVIDIA A100", (8, 0))
    with pytest.raises(DeployError, match="compute capability"):
        check_engine_compatible(portable, "10.13.0", "Tesla T4", (7, 5))  # pre-Ampere: not covered


def test_version_compatible_engines_run_forward_only_within_the_major_version():
    record = engine_record("10.12.0.36", "NVIDIA H200", (9, 0), "m.onnx", BuildOptions(version_compatible=True))
    for later in ("10.12.0.36", "10.12.1", "10.16.1.11"):
        check_engine_compatible(record, later, "NVIDIA H200", (9, 0))
    for other in ("10.8.0.43", "10.11.0.33", "11.0.0.114", "9.3.0"):
        with pytest.raises(DeployError, match=r"built version-compatible with TensorRT 10.12.0.36, which runs it on "
                                              r"TensorRT 10.x from 10.12.0.36 on; this machine has TensorRT"):
            check_engine_compatible(record, other, "NVIDIA H200", (9, 0))


def test_hardware_levels_none_warns_on_another_model_same_cc_does_not(recwarn):
    plain = engine_record("10.16.1", "NVIDIA H100 PCIe", (9, 0), "m.onnx", BuildOptions())
    with pytest.warns(DeployWarning, match="built for NVIDIA H100 PCIe, this GPU is NVIDIA H200: TensorRT runs it"):
        check_engine_compatible(plain, "10.16.1", "NVIDIA H200", (9, 0))
    same_cc = engine_record("10.16.1", "NVIDIA H100 PCIe", (9, 0), "m.onnx", BuildOptions(hardware_compat="same-cc"))
    recwarn.clear()
    check_engine_compatible(same_cc, "10.16.1", "NVIDIA H200", (9, 0))
    assert not [w for w in recwarn if issubclass(w.category, DeployWarning)]
    with pytest.raises(DeployError, match=r"this GPU is NVIDIA A100 \(8.0\)"):
        check_engine_compatible(same_cc, "10.16.1", "NVIDIA A100", (8, 0))


def test_same_cc_refused_before_any_work_on_older_tensorrt():
    BuildOptions(hardware_compat="same-cc").check("10.9.0.34")
    BuildOptions(hardware_compat="same-cc").check()  # version unknown: the build checks again
    with pytest.raises(DeployError, match="--hardware-compat same-cc needs TensorRT 10.9 or newer; this machine has "
                                          "TensorRT 10.8.0.43"):
        BuildOptions(hardware_compat="same-cc").check("10.8.0.43")


@pytest.mark.skipif(detect.tensorrt().available, reason="this machine can run TensorRT")
def test_current_environment_says_why_tensorrt_cannot_run():
    with pytest.raises(DeployError, match="cannot run a TensorRT engine here: ") as info:
        current_environment(0)
    assert detect.tensorrt().reason in str(info.value)


def test_tensorrt_version_found_under_its_cuda_specific_distribution(monkeypatch):
    """pip installs TensorRT as tensorrt-cu12 or tensorrt-cu13 (`tensorrt` is only a meta package): the
    manifest's tool versions and doctor read it there."""
    import importlib.metadata

    from resnet_deploy.environment import package_version

    def version(name):
        if name == "tensorrt-cu12":
            return "10.16.1.11"
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert package_version("tensorrt") == "10.16.1.11"
