"""The TensorRT path (runner, engine build, compatibility, bench timing) against the faithful stand-ins of
TensorRT and cuda-python in tests/standins, with PyTorch unimportable. No engine is built or run here:
the stand-ins compute a known function so the package's plumbing can be checked without a GPU, and
tests/tensorrt_api checks the stand-ins and the package's calls against the real bindings."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from resnet_deploy.backends import cuda, detect
from resnet_deploy.backends.detect import Availability
from resnet_deploy.errors import DeployError, DeployWarning
from tests.standins import cudart as cudart_standin
from tests.standins import tensorrt as trt_standin


@pytest.fixture
def standin(monkeypatch, tmp_path):
    """``make(version, **module_options)`` -> (cudart, trt): the stand-ins installed in place of
    cuda-python and tensorrt; the default is a TensorRT 10.16 on a GPU of compute capability 9.0."""

    def make(version: str = "10.16.1.11", **options):
        cudart = cudart_standin.CudaRuntime()
        trt = trt_standin.module(version, cudart, **options)
        monkeypatch.setattr(cuda, "runtime_api", lambda: cudart)
        monkeypatch.setattr(cuda, "bindings_installed", lambda: True)
        monkeypatch.setattr(detect, "tensorrt", lambda: Availability(True))
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setitem(sys.modules, "torch", None)  # the TensorRT path imports no PyTorch
        return cudart, trt

    return make


def _batch(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _expected(batch: np.ndarray) -> np.ndarray:
    return batch.sum(axis=(2, 3))


def _released(cudart) -> bool:
    return not (cudart.memory or cudart.pinned or cudart.graphs or cudart.graph_execs or cudart.events)


def test_runner_copies_in_runs_and_copies_out_per_shape(standin, tmp_path):
    from resnet_deploy.backends.tensorrt import TensorRTRunner

    cudart, _trt = standin()
    runner = TensorRTRunner(trt_standin.engine_file(tmp_path / "m.engine"))
    assert runner.batch_range == (1, 4) and runner.inputs[0].shape == ["batch", 3, 2, 2] and runner.device == "cuda:0"
    assert runner.outputs[0].shape == ["batch", 3]
    for size, seed in ((2, 0), (3, 1), (2, 2)):
        batch = _batch((size, 3, 2, 2), seed)
        np.testing.assert_allclose(runner(batch)["logits"], _expected(batch), rtol=1e-5)
    assert len(cudart.memory) == 4 and len(cudart.pinned) == 4  # device and pinned host buffers of two shapes
    with pytest.raises(DeployError, match="outside the artifact's profile"):
        runner(_batch((5, 3, 2, 2), 0))
    runner.close()
    assert _released(cudart)


def test_dynamic_height_width_engine_runs_at_two_shapes(standin, tmp_path):
    from resnet_deploy.backends.tensorrt import TensorRTRunner

    _cudart, _trt = standin()
    path = trt_standin.engine_file(tmp_path / "m.engine", shape=(-1, 3, -1, -1),
                                   profile=((1, 3, 2, 2), (2, 3, 4, 6), (4, 3, 8, 8)))
    with TensorRTRunner(path) as runner:
        assert runner.inputs[0].shape == ["batch", 3, "height", "width"]  # TensorRT's -1s, named
        assert runner.example_batch().shape == (1, 3, 4, 6)  # the profile's optimum, not negative sizes
        for shape in ((2, 3, 4, 4), (1, 3, 8, 2), (2, 3, 4, 4)):
            batch = _batch(shape, sum(shape))
            np.testing.assert_allclose(runner(batch)["logits"], _expected(batch), rtol=1e-5)
        with pytest.raises(DeployError, match=r"input shape \[1, 3, 16, 16\] is outside the engine's optimization "
                                              r"profile \(\[1, 3, 2, 2\] to \[4, 3, 8, 8\]\)"):
            runner(_batch((1, 3, 16, 16), 0))


def test_standin_graph_replayed_after_its_context_changed_shape_is_garbage(standin, tmp_path):
    """The stand-in's model of NVIDIA's rule, which the runner's one-context-per-shape design obeys: a graph
    captured on a context is only valid while that context keeps the shape it was captured with."""
    cudart, trt = standin()
    engine = trt.Runtime(None).deserialize_cuda_engine(
        trt_standin.engine_file(tmp_path / "m.engine", shape=(-1, 3, -1, -1),
                                profile=((1, 3, 2, 2), (1, 3, 2, 2), (4, 3, 4, 4))).read_bytes())
    context = engine.create_execution_context()
    source, target = cudart.cudaMalloc(16 * 4)[1], cudart.cudaMalloc(3 * 4)[1]
    context.set_tensor_address("input", source)
    context.set_tensor_address("logits", target)
    context.set_input_shape("input", (1, 3, 2, 2))
    cudart.cudaStreamBeginCapture(1, 1)
    context.execute_async_v3(1)
    graph = cudart.cudaGraphInstantiate(cudart.cudaStreamEndCapture(1)[1], 0)[1]
    cudart.cudaGraphLaunch(graph, 1)
    assert np.isfinite(np.frombuffer(bytes(cudart.memory[target]), np.float32)).all()
    context.set_input_shape("input", (1, 3, 4, 4))  # another shape run on the same context ...
    context.set_input_shape("input", (1, 3, 2, 2))  # ... and back: the graph's state is gone
    cudart.cudaGraphLaunch(graph, 1)
    assert np.isnan(np.frombuffer(bytes(cudart.memory[target]), np.float32)).all()


def test_cuda_graphs_per_shape_replayed_after_shape_changes(standin, tmp_path):
    from resnet_deploy.backends.tensorrt import TensorRTRunner

    cudart, _trt = standin()
    path = trt_standin.engine_file(tmp_path / "m.engine", shape=(-1, 3, -1, -1),
                                   profile=((1, 3, 2, 2), (2, 3, 4, 4), (4, 3, 8, 8)))
    with TensorRTRunner(path, cuda_graphs=True) as runner:
        for step, shape in enumerate([(2, 3, 4, 4), (1, 3, 8, 8), (2, 3, 4, 4), (1, 3, 8, 8), (2, 3, 4, 4)]):
            batch = _batch(shape, step)
            np.testing.assert_allclose(runner(batch)["logits"], _expected(batch), rtol=1e-5)
        assert len(cudart.graph_execs) == 2 and not cudart.graphs  # one graph per shape; captured graphs freed
        assert set(cudart.capture_modes) == {cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal}
        contexts = {id(binding.context) for binding in runner._bound.values()}
        assert len(contexts) == 2  # each graph keeps the context it was captured on to itself
        first = runner._bound[(2, 3, 4, 4)].context  # run at steps 0, 2 and 4
        assert first._executions == 2 + 2  # the plain run before capture, the capture's first launch, 2 replays
    assert _released(cudart)


@pytest.mark.parametrize("failure", ["fail_end_capture", "fail_instantiate"])
def test_capture_failure_falls_back_to_plain_execution_with_a_warning(standin, tmp_path, failure):
    from resnet_deploy.backends.tensorrt import TensorRTRunner

    cudart, _trt = standin()
    setattr(cudart, failure, True)
    with TensorRTRunner(trt_standin.engine_file(tmp_path / "m.engine"), cuda_graphs=True) as runner:
        batch = _batch((2, 3, 2, 2), 0)
        with pytest.warns(DeployWarning, match=r"CUDA graph (capture|instantiation) failed.*input shape \[2, 3, 2, 2\] "
                                               "runs without a CUDA graph"):
            np.testing.assert_allclose(runner(batch)["logits"], _expected(batch), rtol=1e-5)
        again = _batch((2, 3, 2, 2), 1)
        np.testing.assert_allclose(runner(again)["logits"], _expected(again), rtol=1e-5)
        assert len(cudart.capture_modes) == 1  # not retried on every call
        assert not cudart.graphs and not cudart.graph_execs
    assert _released(cudart)


def test_every_graph_destroyed_on_close_and_old_shapes_released(standin, tmp_path):
    from resnet_deploy.backends.tensorrt import MAX_BOUND_SHAPES, TensorRTRunner

    cudart, _trt = standin()
    path = trt_standin.engine_file(tmp_path / "m.engine", shape=(-1, 3, -1, -1),
                                   profile=((1, 3, 1, 1), (1, 3, 4, 4), (1, 3, 32, 32)))
    runner = TensorRTRunner(path, cuda_graphs=True)
    for side in range(1, MAX_BOUND_SHAPES + 4):  # dynamic H/W: more shapes than are kept
        batch = _batch((1, 3, side, side), side)
        np.testing.assert_allclose(runner(batch)["logits"], _expected(batch), rtol=1e-4)
    assert len(runner._bound) == MAX_BOUND_SHAPES and len(cudart.graph_execs) == MAX_BOUND_SHAPES
    assert len(cudart.memory) == 2 * MAX_BOUND_SHAPES  # the dropped shapes' buffers were freed
    runner.close()
    assert _released(cudart)


def test_version_compatible_engine_loads_with_host_code_allowed(standin, tmp_path):
    from resnet_deploy.backends import tensorrt
    from resnet_deploy.backends.load_options import LoadOptions, TensorRTOptions
    from resnet_deploy.export.engine import BuildOptions, engine_record

    _cudart, trt = standin("10.16.1.11")
    path = trt_standin.engine_file(tmp_path / "m.engine", version_compatible=True)
    with pytest.raises(DeployError, match="could not load m.engine"):
        tensorrt.TensorRTRunner(path)  # what the runner did before: the lean runtime is host code
    record = engine_record("10.12.0.36", "NVIDIA H100 80GB HBM3", (9, 0), "m.fp16.onnx",
                           BuildOptions(version_compatible=True))
    manifest = types.SimpleNamespace(precision_options={"engine": record})
    with tensorrt.load(path, manifest, "engine", ("cuda", 0), LoadOptions(own=TensorRTOptions())) as runner:
        batch = _batch((2, 3, 2, 2), 0)
        np.testing.assert_allclose(runner(batch)["logits"], _expected(batch), rtol=1e-5)
    assert ("Runtime", "engine_host_code_allowed", 0, (), "set") in trt.log.entries


def test_engine_record_dla_core_is_used_by_the_runtime(standin, tmp_path):
    from resnet_deploy.backends.tensorrt import TensorRTRunner

    _cudart, trt = standin()
    record = {"dla_core": 1, "version_compatible": False}
    with TensorRTRunner.for_record(trt_standin.engine_file(tmp_path / "m.engine"), record):
        pass
    assert ("Runtime", "DLA_core", 0, (), "set") in trt.log.entries


def test_no_execution_context_is_a_one_line_error_and_releases_the_stream(standin, tmp_path):
    from resnet_deploy.backends.tensorrt import TensorRTRunner

    cudart, _trt = standin(fail_contexts=True)
    with pytest.raises(DeployError, match="could not create an execution context for m.engine"):
        TensorRTRunner(trt_standin.engine_file(tmp_path / "m.engine"))
    assert _released(cudart)


def test_bf16_outputs_are_read_and_fp8_refused(standin, tmp_path):
    from resnet_deploy.backends.tensorrt import TensorRTRunner

    _cudart, trt = standin()
    with pytest.raises(TypeError):
        trt.nptype(trt.DataType.BF16)  # why the runner keeps its own table
    path = trt_standin.engine_file(tmp_path / "m.engine", output_dtype="BF16")
    with TensorRTRunner(path) as runner:
        assert runner.outputs[0].dtype == "bfloat16"
        batch = _batch((2, 3, 2, 2), 0)
        np.testing.assert_allclose(runner(batch)["logits"], _expected(batch), rtol=1e-2)
    with pytest.raises(DeployError, match="tensor 'logits' is FP8, which has no host form"):
        TensorRTRunner(trt_standin.engine_file(tmp_path / "f.engine", output_dtype="FP8"))


def test_bench_times_a_tensorrt_runner_on_its_own_stream_without_torch(standin, tmp_path):
    from resnet_deploy.backends.tensorrt import TensorRTRunner
    from resnet_deploy.target.bench import bench

    cudart, _trt = standin()
    with TensorRTRunner(trt_standin.engine_file(tmp_path / "m.engine"), cuda_graphs=True) as runner:
        results = bench([("m.engine [tensorrt]", runner)], [1, 4], iterations=6, warmup=2)
        assert [r.batch for r in results] == [1, 4] and all(r.iterations == 6 for r in results)
        assert all(r.device_ms is not None and r.device_ms["p50"] == pytest.approx(1.5) for r in results)
        assert not cudart.events  # the timer's events were destroyed after the run
    assert "torch" not in {name for name, module in sys.modules.items() if module is not None}


def test_a_cuda_error_is_one_line_naming_it(standin, tmp_path):
    from resnet_deploy.backends.tensorrt import TensorRTRunner

    cudart, _trt = standin()
    cudart.limit = 8
    with TensorRTRunner(trt_standin.engine_file(tmp_path / "m.engine")) as runner:
        with pytest.raises(DeployError, match=r"CUDA error 2 \(cudaErrorMemoryAllocation\)"):
            runner(_batch((2, 3, 2, 2), 0))
        assert not cudart.memory and not cudart.pinned  # a half-made binding gives back what it took


def test_runtime_load_of_an_engine_checks_the_gpu_without_torch(standin, tmp_path):
    from resnet_deploy.backends import tensorrt
    from resnet_deploy.backends.load_options import LoadOptions, TensorRTOptions
    from resnet_deploy.backends.registry import BACKENDS

    _cudart, _trt = standin("10.12.0.36")
    options = LoadOptions(own=TensorRTOptions())
    path = trt_standin.engine_file(tmp_path / "m.engine")
    record = {"tensorrt": "10.12.0.36", "compute_capability": "8.0", "gpu": "NVIDIA A100", "hardware_compat": "none"}
    manifest = types.SimpleNamespace(precision_options={"engine": record})
    with pytest.raises(DeployError, match=r"built for NVIDIA A100 \(compute capability 8.0\), this GPU is NVIDIA H100"):
        tensorrt.load(path, manifest, "engine", ("cuda", 0), options)
    record.update(compute_capability="9.0", gpu="NVIDIA H100 80GB HBM3")
    # no device named: the GPU the CUDA runtime sees (torch, which cannot be imported here, is not asked)
    device = BACKENDS["trt"].device(None, TensorRTOptions(), path.name)
    with pytest.raises(DeployError, match="the trt backend runs on a CUDA GPU, not the CPU"):
        BACKENDS["trt"].device("cpu", TensorRTOptions(), path.name)
    with tensorrt.load(path, manifest, "engine", device, options) as runner:
        assert runner.name == "tensorrt" and runner.device == "cuda:0"


def test_old_cuda_python_without_a_driver_says_so(standin):
    cudart, _trt = standin()
    cudart.driverless_raises = True  # cuda-python 12.1-12.6 raise RuntimeError instead of answering an error
    assert cuda.device_count() == 0
    assert cuda.versions()["driver"] is None
    assert cuda.driver_problem().startswith("no CUDA driver is installed")
    with pytest.raises(DeployError, match="no CUDA driver: cudaStreamCreate failed"):
        cuda.Stream()


def test_driver_older_than_cuda_python_names_the_extra(standin):
    cudart, _trt = standin()
    cudart.devices, cudart.driver, cudart.runtime = 0, 12040, 13000
    assert cuda.driver_problem() == ("the driver supports CUDA 12.4, older than the CUDA 13.0 cuda-python was built "
                                     "for: pip install 'resnet-deploy[gpu-cu12]'")


# ---- the engine build, on the stand-in builder ----

def _build(tmp_path, **options):
    from resnet_deploy.export.engine import BuildOptions, build_engine

    onnx_path = tmp_path / "m.fp16.onnx"
    onnx_path.write_bytes(b"onnx")
    shapes = {"input": ((1, 3, 2, 2), (2, 3, 2, 2), (4, 3, 2, 2))}
    return build_engine(onnx_path, tmp_path / "m.engine", shapes, BuildOptions(**options), built_from=onnx_path.name)


def test_build_writes_an_engine_the_runner_loads(standin, tmp_path):
    from resnet_deploy.backends.tensorrt import TensorRTRunner

    _cudart, trt = standin("11.4.0.106")
    record = _build(tmp_path, version_compatible=True, hardware_compat="ampere+")
    assert record["tensorrt"] == "11.4.0.106" and record["compute_capability"] == "9.0"
    assert ("Builder", "create_network", 1, (), "call") in trt.log.entries  # flags 0 on 11: strongly typed always
    with TensorRTRunner.for_record(tmp_path / "m.engine", record) as runner:
        batch = _batch((2, 3, 2, 2), 0)
        np.testing.assert_allclose(runner(batch)["logits"], _expected(batch), rtol=1e-5)


def test_same_cc_needs_tensorrt_10_9(standin, tmp_path):
    standin("10.8.0.43")
    with pytest.raises(DeployError, match=r"--hardware-compat same-cc needs TensorRT 10.9 or newer; this machine has "
                                          r"TensorRT 10.8.0.43"):
        _build(tmp_path, hardware_compat="same-cc")
    assert not (tmp_path / "m.engine").exists()
    _cudart, trt = standin("10.16.1.11")
    assert _build(tmp_path, hardware_compat="same-cc")["hardware_compat"] == "same-cc"
    assert ("IBuilderConfig", "hardware_compatibility_level", 0, (), "set") in trt.log.entries


def test_dla_core_checked_against_the_builder(standin, tmp_path):
    standin()
    with pytest.raises(DeployError, match="--dla-core 0: this machine has 0 DLA cores"):
        _build(tmp_path, dla_core=0)
    _cudart, trt = standin(dla_cores=2)
    assert _build(tmp_path, dla_core=1)["dla_core"] == 1
    assert ("IBuilderConfig", "DLA_core", 0, (), "set") in trt.log.entries


def _timings(path) -> list[str]:
    return json.loads(path.read_bytes())["timings"]


def test_timing_cache_merged_under_a_lock_rejected_cache_replaced(standin, tmp_path):
    standin()
    cache = tmp_path / "trt.cache"
    _build(tmp_path, timing_cache=cache)
    assert _timings(cache) == ["tactic-this-build"]
    cache.write_bytes(json.dumps({"timings": ["tactic-another-build"]}).encode())  # a build that finished meanwhile
    _build(tmp_path, timing_cache=cache)
    assert _timings(cache) == ["tactic-another-build", "tactic-this-build"]  # merged, not overwritten
    assert (tmp_path / "trt.cache.lock").exists()
    for bad in (b"\x00not a cache", json.dumps({"timings": ["mismatch"]}).encode()):
        cache.write_bytes(bad)
        with pytest.warns(DeployWarning, match="TensorRT rejected the timing cache"):
            _build(tmp_path, timing_cache=cache)
        assert "tactic-this-build" in _timings(cache)


def test_no_timing_cache_kept_leaves_the_file_and_warns(standin, tmp_path):
    standin(keep_no_cache=True)
    cache = tmp_path / "trt.cache"
    cache.write_bytes(json.dumps({"timings": ["tactic-old"]}).encode())
    with pytest.warns(DeployWarning, match="TensorRT kept no timing cache"):
        _build(tmp_path, timing_cache=cache)
    assert _timings(cache) == ["tactic-old"] and (tmp_path / "m.engine").exists()
