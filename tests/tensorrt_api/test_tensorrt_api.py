"""The package's TensorRT and CUDA code, and the test stand-ins, against the real APIs: TensorRT 10.0.1,
10.8, 10.16 and 11.4 bindings, cuda-python 12 and 13 (fetched at test time, see conftest.py)."""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resnet_deploy.backends import cuda, detect
from resnet_deploy.backends.detect import Availability
from resnet_deploy.environment import nvidia_driver_present
from resnet_deploy.export import engine as engine_module
from tests.standins import cudart as cudart_standin
from tests.standins import tensorrt as trt_standin

from .conftest import HERE, ROOT

pytestmark = pytest.mark.tensorrt_api
PACKAGE = ROOT / "resnet_deploy"


def _sources() -> dict[Path, str]:
    return {path: path.read_text() for path in PACKAGE.rglob("*.py")}


def trt_names_used() -> set[tuple[str, ...]]:
    """Every ``trt.A`` and ``trt.A.B`` written in the modules that import tensorrt as ``trt``."""
    used = set()
    for text in _sources().values():
        if "import tensorrt as trt" not in text:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "trt":
                used.add((node.attr,))
            elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                  and isinstance(node.value.value, ast.Name) and node.value.value.id == "trt"):
                used.add((node.value.attr, node.attr))
    return {name for name in used if not name[0].startswith("__")}


def _at_least(version: str, minimum: str) -> bool:
    return trt_standin._at_least(version, minimum)


@pytest.mark.parametrize("version", trt_standin.VERSIONS)
def test_every_trt_name_the_package_uses_exists(real_tensorrt, version):
    spec, _env = real_tensorrt(version)
    used = trt_names_used()
    assert ("Runtime",) in used and ("BuilderFlag", "VERSION_COMPATIBLE") in used  # the scan sees the package
    for name in sorted(used):
        assert name[0] in spec["names"], f"trt.{name[0]} does not exist in TensorRT {version}"
        if len(name) == 2:
            owner = spec["enums"].get(name[0]) or spec["classes"][name[0]]["attributes"]
            assert name[1] in owner, f"trt.{'.'.join(name)} does not exist in TensorRT {version}"
    # the one member the package reaches by name: present, or refused up front for this version
    for option, member in engine_module.HARDWARE_COMPAT.items():
        since = engine_module.HARDWARE_COMPAT_SINCE.get(option)
        present = member in spec["enums"]["HardwareCompatibilityLevel"]
        assert present == (since is None or _at_least(version, since)), (option, version)


@pytest.mark.parametrize("version", trt_standin.VERSIONS)
def test_standin_is_the_real_api(real_tensorrt, version):
    """Each stand-in class stands for a real one: its methods exist there with the same parameters, its
    public attributes are real properties or class attributes, its enums have the real members."""
    spec, _env = real_tensorrt(version)
    for cls in trt_standin.CLASSES:
        real = spec["classes"][cls.REAL]
        for name, value in vars(cls).items():
            if name.startswith("_") and name != "__init__" or name == "REAL":
                continue
            if name == "__init__" and not real["methods"]["__init__"]:
                continue  # made by TensorRT, not by its users: the stand-in's constructor is its own
            if inspect.isfunction(value):
                ours = [p for p in inspect.signature(value).parameters][1:]
                overloads = [[p["name"] for p in params] for params in real["methods"].get(name, [])]
                assert ours in overloads, f"{cls.REAL}.{name}{tuple(ours)}: TensorRT {version} has {overloads}"
            else:
                assert name in real["properties"] or name in real["attributes"], f"{cls.REAL}.{name}"
    known: dict[str, set[str]] = {}
    for each in trt_standin.VERSIONS:
        for enum, members in trt_standin.enums(each).items():
            known.setdefault(enum, set()).update(members)
    ours = trt_standin.enums(version)
    for enum, members in known.items():
        real_members = set(spec["enums"][enum])
        assert set(ours[enum]) == members & real_members, f"{enum} in TensorRT {version}"
    raises = {name for name, numpy_type in spec["nptype"].items() if numpy_type is None}
    assert raises == set(trt_standin.NO_HOST_FORM) & set(spec["enums"]["DataType"])


def _check_call(spec: dict, entry: tuple) -> str | None:
    """Why the logged use ``entry`` does not fit the real API, or None."""
    cls, member, positional, keywords, kind = entry
    real = spec["classes"].get(cls)
    if real is None:
        return f"{cls} does not exist"
    if kind == "get":
        return None if member in real["properties"] or member in real["attributes"] else f"{cls}.{member} is no property"
    if kind == "set":
        prop = real["properties"].get(member)
        return None if prop and prop["writable"] else f"{cls}.{member} is not a writable property"
    for params in real["methods"].get(member, []):
        names = [p["name"] for p in params]
        required = [p["name"] for p in params if not p["default"]]
        if positional <= len(names) and set(keywords) <= set(names[positional:]) \
                and set(required) <= set(names[:positional]) | set(keywords):
            return None
    return f"{cls}.{member} takes no call of {positional} positional and {keywords} keyword arguments"


@pytest.mark.parametrize("version", trt_standin.VERSIONS)
def test_every_call_the_package_makes_fits_the_real_api(real_tensorrt, version, monkeypatch, tmp_path):
    """The engine build (timing cache, DLA, version and hardware compatibility) and the runner (dynamic
    H/W, CUDA graphs at two shapes, close) run on the stand-in of ``version``; every method call,
    property read and write they made is then checked against that version's real classes."""
    from resnet_deploy.backends.tensorrt import TensorRTRunner
    from resnet_deploy.export.engine import BuildOptions, build_engine

    spec, _env = real_tensorrt(version)
    cudart = cudart_standin.CudaRuntime()
    trt = trt_standin.module(version, cudart, dla_cores=1)
    monkeypatch.setattr(cuda, "runtime_api", lambda: cudart)
    monkeypatch.setattr(cuda, "bindings_installed", lambda: True)
    monkeypatch.setattr(detect, "tensorrt", lambda: Availability(True))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"onnx")
    shapes = {"input": ((1, 3, 2, 2), (2, 3, 4, 4), (4, 3, 8, 8))}
    compat = "same-cc" if _at_least(version, "10.9") else "ampere+"
    options = BuildOptions(timing_cache=tmp_path / "cache", dla_core=0, version_compatible=True,
                           hardware_compat=compat)
    record = build_engine(onnx_path, tmp_path / "m.engine", shapes, options, built_from="m.onnx")
    build_engine(onnx_path, tmp_path / "m.engine", shapes, options, built_from="m.onnx")  # the cache merged
    for graphs in (False, True):
        with TensorRTRunner.for_record(tmp_path / "m.engine", record, cuda_graphs=graphs) as runner:
            for shape in ((2, 3, 4, 4), (1, 3, 8, 2)):
                batch = np.ones(shape, np.float32)
                np.testing.assert_allclose(runner(batch)["logits"], batch.sum(axis=(2, 3)))
    used = set(trt.log.entries)
    assert {entry[:2] for entry in used} >= {("Builder", "build_serialized_network"), ("ITimingCache", "combine"),
                                             ("IExecutionContext", "execute_async_v3"),
                                             ("Runtime", "engine_host_code_allowed")}
    problems = [problem for entry in sorted(used) if (problem := _check_call(spec, entry))]
    assert not problems, f"TensorRT {version}: {problems}"


CUDA_FUNCTION = re.compile(r"""call\(\s*"(cuda\w+)"|cudart\.(cuda\w+)\(""")


def cuda_functions_used() -> set[str]:
    return {a or b for text in _sources().values() for a, b in CUDA_FUNCTION.findall(text)}


@pytest.mark.parametrize("release", ["12", "13"])
def test_every_cuda_call_fits_real_cuda_python(cuda_python, release):
    folder = cuda_python(release)
    done = subprocess.run([sys.executable, str(HERE / "cuda_calls.py")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": f"{folder}:{ROOT}"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["module"] == "cuda.bindings.runtime"
    assert not report["problems"], report["problems"]
    used = cuda_functions_used()
    assert {"cudaMalloc", "cudaGraphInstantiate", "cudaGraphExecDestroy", "cudaEventElapsedTime"} <= used
    assert used <= set(report["calls"]), f"not exercised: {sorted(used - set(report['calls']))}"
    assert report["error_line"] == "CUDA error 35 (cudaErrorInsufficientDriver)"
    assert set(report["standin"]) >= used  # the stand-in has every function the package calls, as the real one

def test_doctor_with_old_cuda_python_and_real_tensorrt_says_no_driver(cuda_python, real_tensorrt):
    """cuda-python 12.1 raises RuntimeError ("Failed to dlopen libcuda.so") where newer ones answer an
    error: doctor still prints one line for it, and says why TensorRT cannot run. It needs a machine without
    an NVIDIA driver (with one, cuda-python 12.1 loads libcuda.so and the question does not arise)."""
    if nvidia_driver_present():
        pytest.skip("an NVIDIA driver is loaded here: cuda-python 12.1 finds libcuda.so")
    folder = cuda_python("12.1")
    _spec, env = real_tensorrt("10.16.1.11")
    env = {**env, "PYTHONPATH": f"{folder}:{env['PYTHONPATH']}"}
    done = subprocess.run([sys.executable, "-m", "resnet_deploy.cli", "doctor"], capture_output=True, text=True,
                          env=env)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    cuda_line = next(line for line in lines if line.startswith("cuda "))
    assert cuda_line.endswith("cuda-python 12.1.0, runtime CUDA 12.1: no CUDA driver is installed (no NVIDIA GPU "
                              "here, or its driver is missing)"), cuda_line
    tensorrt_line = next(line for line in lines if line.strip().startswith("tensorrt ") and "no:" in line)
    assert "tensorrt is installed but no CUDA driver is installed" in tensorrt_line
    report = json.loads(subprocess.run([sys.executable, "-m", "resnet_deploy.cli", "doctor", "--json"],
                                       capture_output=True, text=True, env=env, check=True).stdout)
    assert report["cuda"]["driver"] is None and report["cuda"]["gpus"] == 0


def _detect_tensorrt_in(env: dict[str, str]) -> tuple[str, int, str]:
    """(tensorrt's version, the GPUs cuda-python sees, detect.tensorrt()'s reason) in a process of ``env``."""
    code = ("from resnet_deploy.backends import cuda, detect; import tensorrt; "
            "print(tensorrt.__version__); print(cuda.device_count()); print(detect.tensorrt().reason)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    version, gpus, reason = done.stdout.splitlines()
    return version, int(gpus), reason


def test_real_tensorrt_module_imports_beside_the_package_without_cuda_python(real_tensorrt, tmp_path):
    """The package's own detection, asked in a process where the real bindings import and cuda-python cannot
    (hidden by an empty ``cuda`` package first on the path, whatever this machine has installed): tensorrt
    is found, and the missing cuda-python is the reason it cannot run."""
    _spec, env = real_tensorrt("11.4.0.106")
    (tmp_path / "cuda").mkdir()
    (tmp_path / "cuda" / "__init__.py").write_text("")
    env = {**env, "PYTHONPATH": f"{tmp_path}:{env['PYTHONPATH']}"}
    version, gpus, reason = _detect_tensorrt_in(env)
    assert version == "11.4.0.106" and gpus == 0
    assert reason.startswith("tensorrt is installed but cuda-python is not"), reason


def test_real_tensorrt_module_with_cuda_python_names_what_is_missing(real_tensorrt, cuda_python):
    """With the real cuda-python 13 beside the real bindings: where its runtime sees no GPU, the reason is
    the driver or the GPU (never cuda-python); where it sees one, detection lets the stub-backed tensorrt
    through to loading (nothing here can build or run an engine)."""
    _spec, env = real_tensorrt("11.4.0.106")
    env = {**env, "PYTHONPATH": f"{cuda_python('13')}:{env['PYTHONPATH']}"}
    version, gpus, reason = _detect_tensorrt_in(env)
    assert version == "11.4.0.106"
    if gpus:
        assert reason == ""
    else:
        assert reason.startswith("tensorrt is installed but ") and "cuda-python is not" not in reason, reason
