"""The real TensorRT and cuda-python APIs, fetched from the package registry at test time.

TensorRT's Python bindings wheels (tensorrt-cu12-bindings, about 1.3 MB, no NVIDIA libraries in them)
import once the nine C entry points their extension links against exist: stub libnvinfer,
libnvinfer_plugin and libnvonnxparser are compiled here with the system C compiler (every symbol
returns NULL or 0: nothing can be built or run). Each version is imported in its own process (two
cannot share one) and its API dumped as JSON by dump_spec.py. Nothing fetched is committed (NVIDIA's
licence): it lives in pytest's cache folder. Where the registry cannot be reached the tests skip,
saying so; any other failure fails them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import pip

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

# The C entry points the bindings' extension module links against (the same nine from 10.0 to 11.4).
ENTRY_POINTS = """
void *createInferBuilder_INTERNAL(void *logger, int version) { return 0; }
void *createInferRuntime_INTERNAL(void *logger, int version) { return 0; }
void *createInferRefitter_INTERNAL(void *engine, void *logger, int version) { return 0; }
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version) { return 0; }
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version) { return 0; }
void *getBuilderPluginRegistry(int capability) { return 0; }
int getNvOnnxParserVersion(void) { return 0; }
void *getPluginRegistry(void) { return 0; }
int initLibNvInferPlugins(void *logger, const char *ns) { return 0; }
"""
LIBRARIES = ("nvinfer", "nvinfer_plugin", "nvonnxparser")

# cuda-python releases checked: the runtime API as `cuda.bindings.runtime` on 12.x and 13.x, and 12.1
# (`cuda.cudart`, raising RuntimeError without a driver) for doctor.
CUDA_PYTHON = {
    "12": ["cuda-bindings==12.9.4", "cuda-pathfinder==1.9.1"],
    "13": ["cuda-bindings==13.4.4", "cuda-pathfinder==1.9.1"],
    "12.1": ["cuda-python==12.1.0"],
}

@pytest.fixture(scope="session")
def api_cache(request) -> Path:
    return Path(request.config.cache.mkdir("tensorrt_api"))


@pytest.fixture(scope="session")
def stub_libraries(api_cache) -> Path:
    """A folder of stub libnvinfer.so.N, libnvinfer_plugin.so.N, libnvonnxparser.so.N (N = 10, 11)."""
    folder = api_cache / "stubs"
    if all((folder / f"lib{name}.so.{major}").exists() for name in LIBRARIES for major in (10, 11)):
        return folder
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        pytest.fail("no C compiler to build the TensorRT stub libraries (apt-get install gcc)")
    folder.mkdir(exist_ok=True)
    source = folder / "entry_points.c"
    source.write_text(ENTRY_POINTS)
    for name in LIBRARIES:
        for major in (10, 11):
            soname = f"lib{name}.so.{major}"
            subprocess.run([compiler, "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(folder / soname),
                            str(source)], check=True, capture_output=True)
    return folder


def bindings_folder(api_cache: Path, version: str) -> Path:
    """The real ``tensorrt`` package of ``version`` (the bindings wheel's ``tensorrt_bindings`` folder)
    in a folder to put on PYTHONPATH, fetched on first use."""
    target = api_cache / f"tensorrt-{version}"
    if (target / "tensorrt" / "__init__.py").exists():
        return target
    wheels = api_cache / "wheels"
    wheels.mkdir(exist_ok=True)
    pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest", str(wheels),
        f"tensorrt-cu12-bindings=={version}")
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    wheel = next(wheels.glob(f"tensorrt_cu12_bindings-{version}-{tag}-*.whl"))
    unpacked = api_cache / f"unpacked-{version}"
    shutil.rmtree(unpacked, ignore_errors=True)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked)
    target.mkdir(exist_ok=True)
    shutil.rmtree(target / "tensorrt", ignore_errors=True)
    (unpacked / "tensorrt_bindings").rename(target / "tensorrt")
    shutil.rmtree(unpacked)
    return target


def tensorrt_env(api_cache: Path, stubs: Path, version: str) -> dict[str, str]:
    """The environment of a process that imports the real ``tensorrt`` of ``version`` on the stubs."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(stubs), env.get("LD_LIBRARY_PATH")]))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(bindings_folder(api_cache, version)), str(ROOT),
                                                      env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="session")
def real_tensorrt(api_cache, stub_libraries):
    """``get(version)`` -> (the real API of that TensorRT version as dump_spec.py's JSON, the environment
    of a process that imports it)."""
    specs: dict[str, tuple[dict, dict]] = {}

    def get(version: str) -> tuple[dict, dict[str, str]]:
        if version not in specs:
            env = tensorrt_env(api_cache, stub_libraries, version)
            done = subprocess.run([sys.executable, str(HERE / "dump_spec.py")], env=env, capture_output=True,
                                  text=True)
            assert done.returncode == 0, f"the real tensorrt {version} did not import:\n{done.stderr[-2000:]}"
            spec = json.loads(done.stdout)
            assert spec["version"] == version
            specs[version] = (spec, env)
        return specs[version]

    return get


@pytest.fixture(scope="session")
def cuda_python(api_cache):
    """``get(release)`` -> a folder holding that cuda-python release (a key of CUDA_PYTHON), to put on
    PYTHONPATH."""

    def get(release: str) -> Path:
        target = api_cache / f"cuda-python-{release}"
        marker = target / ".complete"
        if not marker.exists():
            shutil.rmtree(target, ignore_errors=True)
            pip("install", "--quiet", "--no-deps", "--no-compile", "--target", str(target), *CUDA_PYTHON[release])
            marker.touch()
        return target

    return get
