"""runtime.load, predict, bench and doctor on real exported artifacts."""

from __future__ import annotations

import contextlib
import json
import re

import numpy as np
import pytest
from PIL import Image

from resnet_deploy.target import bench, runtime
from resnet_deploy.backends import detect, registry
from resnet_deploy.backends.onnxrt import GRAPH_CACHE_DIR
from resnet_deploy.data import random_images
from resnet_deploy.errors import DeployError
from resnet_deploy.data import imagenet_classes
from tests.conftest import assert_one_line_error


@pytest.fixture
def exported(small_export):
    return small_export


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Generated images in the modes users bring: RGB, greyscale, CMYK, RGBA, palette."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)
    rgb = Image.fromarray(pixels)
    rgb.save(folder / "rgb.png")
    rgb.convert("L").save(folder / "grey.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    rgb.convert("RGBA").save(folder / "rgba.png")
    rgb.convert("P").save(folder / "palette.gif")
    return folder


def test_torch_and_ort_runners_agree_at_several_batch_sizes(exported):
    shape = (3, 64, 64)
    with runtime.load(exported.onnx_path) as ort_runner, \
            runtime.load(exported.onnx_path, backend="torch") as torch_runner:
        assert ort_runner.name == "onnxruntime-cpu" and torch_runner.name == "torch-cpu"
        assert ort_runner.batch_range == torch_runner.batch_range == (1, 8)
        assert ort_runner.inputs[0].shape == ["batch", 3, 64, 64]
        assert ort_runner.output_names == torch_runner.output_names == ["logits"]
        assert torch_runner.outputs[0].shape == ["batch", 1000]  # the manifest's, as a server's metadata needs
        assert ort_runner.manifest.stem == torch_runner.manifest.stem == "resnet18"
        for size in (1, 3, 8):
            batch = random_images(size, shape, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), seed=size)
            got, want = ort_runner(batch)["logits"], torch_runner(batch)["logits"]
            assert got.shape == (size, 1000)
            assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
            assert (got.argmax(1) == want.argmax(1)).all()
        with pytest.raises(DeployError, match="outside the artifact's profile"):
            ort_runner(random_images(9, shape, (0, 0, 0), (1, 1, 1)))
    assert ort_runner.session is None and torch_runner.model is None


def test_torch_runner_options_keep_the_outputs(exported):
    batch = random_images(2, (3, 64, 64), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with runtime.load(exported.onnx_path, backend="torch") as plain:
        want = plain(batch)["logits"]
    with runtime.load(exported.onnx_path, backend="torch", channels_last=True) as nhwc:
        assert nhwc.describe()["channels_last"] is True
        np.testing.assert_allclose(nhwc(batch)["logits"], want, rtol=0, atol=1e-4 * np.abs(want).max())
    with runtime.load(exported.onnx_path, backend="torch", half=True) as half:
        assert half.precision == "fp16"
        got = half(batch)["logits"]
    assert got.dtype == np.float32 and 0 < np.abs(got - want).max() <= 1e-2 * np.abs(want).max()


def test_fp16_artifact_runs_and_reports_its_precision(exported):
    with runtime.load(exported.paths["fp16"]) as runner:
        assert runner.precision == "fp16" and runner.describe()["artifact"].endswith("resnet18.fp16.onnx")
        out = runner(random_images(2, (3, 64, 64), (0, 0, 0), (1, 1, 1)))["logits"]
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_optimised_graph_is_cached_beside_the_artifact(exported):
    batch = random_images(2, (3, 64, 64), (0, 0, 0), (1, 1, 1))
    cache_dir = exported.onnx_path.parent / GRAPH_CACHE_DIR
    for stale in cache_dir.glob("*"):
        stale.unlink()
    with runtime.load(exported.onnx_path, graph_cache=False) as plain:
        assert plain.graph_cache == "off"
        want = plain(batch)["logits"]
    with runtime.load(exported.onnx_path) as first:
        assert first.graph_cache == "written"
        np.testing.assert_allclose(first(batch)["logits"], want, rtol=0, atol=1e-5)
    cached = list(cache_dir.glob("resnet18.onnx.*.onnx"))
    assert len(cached) == 1 and cached[0].stat().st_size > 1000
    with runtime.load(exported.onnx_path) as second:
        assert second.graph_cache == "hit"
        np.testing.assert_allclose(second(batch)["logits"], want, rtol=0, atol=1e-5)


def test_a_bad_cached_graph_is_rebuilt_with_a_warning(exported):
    """Another model's graph put in the cache (served silently before, with wrong answers), a damaged one
    (every load crashed before), a cache without its record: each rebuilt, and the answers right."""
    import hashlib
    import warnings

    from resnet_deploy.errors import DeployWarning

    batch = random_images(2, (3, 64, 64), (0, 0, 0), (1, 1, 1))
    with runtime.load(exported.onnx_path, graph_cache=False) as plain:
        want = plain(batch)["logits"]
    with runtime.load(exported.onnx_path):
        pass
    cache, = (exported.onnx_path.parent / GRAPH_CACHE_DIR).glob("resnet18.onnx.*.onnx")
    record = cache.with_name(cache.name + ".sha256")
    other = exported.paths["fp16"].read_bytes()

    def replace_with_other():
        cache.write_bytes(other)

    def damage_with_matching_record():
        cache.write_bytes(cache.read_bytes()[:5000])
        record.write_text(hashlib.sha256(cache.read_bytes()).hexdigest())

    for spoil, reason in ((replace_with_other, "its bytes are not the ones written"),
                          (damage_with_matching_record, "ONNX Runtime cannot load it"),
                          (record.unlink, "it has no record of what was written")):
        spoil()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with runtime.load(exported.onnx_path) as runner:
                assert runner.graph_cache == "rebuilt"
                np.testing.assert_allclose(runner(batch)["logits"], want, rtol=0, atol=1e-5)
        assert any(issubclass(w.category, DeployWarning) and reason in str(w.message) for w in caught), reason
        with runtime.load(exported.onnx_path) as runner:
            assert runner.graph_cache == "hit"


@pytest.mark.parametrize("kwargs, message", [
    ({"backend": "tflite"}, "unknown backend 'tflite'"),
    ({"backend": "trt"}, "is an ONNX model, and --backend trt runs a TensorRT engine: use --backend ort or openvino "
                         "or torch; build one with `resnet-deploy build"),
    ({"device": "gpu"}, "unknown device 'gpu'"),
])
def test_load_errors_are_clear(exported, kwargs, message):
    with pytest.raises(DeployError, match=None) as info:
        runtime.load(exported.onnx_path, **kwargs)
    assert message in str(info.value)


@pytest.mark.skipif(detect.onnxruntime_provider("CUDAExecutionProvider").available, reason="this machine has ORT CUDA")
def test_cuda_without_a_gpu_says_why(exported):
    with pytest.raises(DeployError, match="install onnxruntime-gpu"):
        runtime.load(exported.onnx_path, device="cuda")
    with pytest.raises(DeployError, match="TensorrtExecutionProvider"):
        runtime.load(exported.onnx_path, tensorrt_provider=True)


def test_an_option_of_another_backend_is_refused_by_name(exported):
    with pytest.raises(DeployError, match=r"^cuda_graphs: not an option of the ort backend \(it takes as_written, "
                                          r"tensorrt_provider\)$"):
        runtime.load(exported.onnx_path, cuda_graphs=True)
    with pytest.raises(DeployError, match="options of the trt backend given, but this run does not use it"):
        bench.load_runners(contextlib.ExitStack(), [exported.onnx_path], ["ort"], own={"trt": {"cuda_graphs": True}})


def test_predict_every_image_mode_gives_probabilities(cli, exported, images):
    result = cli("predict", str(exported.onnx_path), str(images), "--topk", "3", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    names = imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench" and names[999] == "toilet tissue"
    assert sorted(p["image"].rsplit("/", 1)[1] for p in report["predictions"]) == \
        ["cmyk.jpg", "grey.png", "palette.gif", "rgb.png", "rgba.png"]
    for prediction in report["predictions"]:
        top = prediction["top"]
        assert len(top) == 3
        probabilities = [c["probability"] for c in top]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-9
        assert all(c["label"] == names[c["index"]] for c in top)
    # greyscale becomes RGB with equal channels: the same image as its RGB form would only be if grey
    table = cli("predict", str(exported.onnx_path), str(images / "rgb.png"))
    assert table.exit_code == 0 and "probability" in table.stdout and "rgb.png" in table.stdout


def test_predict_full_softmax_sums_to_one_and_matches_the_reference(exported, images):
    from resnet_deploy.artifacts import read_manifest
    from resnet_deploy.data import ImagePreprocess, load_images
    from resnet_deploy.target.predict import predict

    manifest = read_manifest(exported.onnx_path.with_suffix(".json"))
    preprocess = ImagePreprocess.from_manifest(manifest.preprocess)
    with runtime.load(exported.onnx_path) as runner, runtime.load(exported.onnx_path, backend="torch") as reference:
        [prediction] = predict(runner, [images / "grey.png"], preprocess, topk=1000)
        logits = reference(load_images([images / "grey.png"], preprocess))["logits"][0]
    assert sum(c["probability"] for c in prediction.top) == pytest.approx(1.0, abs=1e-6)
    assert prediction.top[0]["index"] == int(logits.argmax())


def test_predict_with_a_labels_file_and_bad_inputs(cli, exported, images, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"thing {i}\n" for i in range(1000)))
    result = cli("predict", str(exported.onnx_path), str(images / "rgb.png"), "--labels", str(labels), "--json")
    assert json.loads(result.stdout)["predictions"][0]["top"][0]["label"].startswith("thing ")
    labels.write_text("a\nb\n")
    assert_one_line_error(cli("predict", str(exported.onnx_path), str(images / "rgb.png"), "--labels", str(labels)),
                          contains="has 2 labels; the model has 1000 classes")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is text")
    assert_one_line_error(cli("predict", str(exported.onnx_path), str(not_an_image)), contains="cannot read")
    assert_one_line_error(cli("predict", str(exported.onnx_path), str(tmp_path / "missing.jpg")),
                          contains="does not exist")
    assert_one_line_error(cli("predict", str(exported.onnx_path), str(images / "rgb.png"), "--topk", "0"),
                          contains="--topk 0 is out of range: it must be at least 1")
    # a thread count ONNX Runtime would have tried to honour (16 GB of thread stacks before any work)
    assert_one_line_error(cli("predict", str(exported.onnx_path), str(images / "rgb.png"), "--threads", "100000"),
                          contains="--threads 100000 is out of range")


def test_bench_compares_artifacts_and_backends_in_one_table(cli, exported, tmp_path):
    plot = tmp_path / "bench.png"
    result = cli("bench", str(exported.onnx_path), str(exported.paths["fp16"]), "--backend", "torch,ort",
                 "--batch-sizes", "1,2", "--iters", "5", "--warmup", "1", "--json", "-q", "--plot", str(plot))
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    rows = report["results"]
    # torch once (the same PyTorch model behind both files), ORT per file, at two batch sizes
    assert [(r["backend"], r["precision"], r["batch"]) for r in rows] == [
        ("torch-cpu", "fp32", 1), ("onnxruntime-cpu", "fp32", 1), ("onnxruntime-cpu", "fp16", 1),
        ("torch-cpu", "fp32", 2), ("onnxruntime-cpu", "fp32", 2), ("onnxruntime-cpu", "fp16", 2)]
    for row in rows:
        lat = row["latency_ms"]
        assert row["iterations"] == 5 and 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]
        assert row["device_ms"] is None
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] == pytest.approx(
        rows[1]["latency_ms"]["p50"] / rows[0]["latency_ms"]["p50"])
    assert report["runners"][1]["threads"] >= 1 and report["runners"][1]["graph_cache"] in ("hit", "written")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    table = cli("bench", str(exported.onnx_path), "--batch-sizes", "1", "--iters", "3", "--warmup", "0")
    assert table.exit_code == 0 and "p99 ms" in table.stdout and "1.00x" in table.stdout


@pytest.mark.parametrize("args, message", [
    (["--batch-sizes", "16"], "outside"),
    (["--batch-sizes", "one"], "invalid --batch-sizes"),
    (["--iters", "3", "--duration", "1"], "not both"),
    (["--backend", "tvm"], "unknown backend 'tvm': choose from auto, ort, trt, openvino, torch"),
    (["--iters", "0"], "--iters 0 is out of range: it must be between 1 and"),
    (["--threads", "100000"], "--threads 100000 is out of range"),
    (["--duration", "nan"], "--duration nan is not a finite number"),  # ran forever: NaN passed every bound
    (["--duration", "inf"], "--duration inf is not a finite number"),
    (["--plot", "nodir/x.png"], "--plot nodir/x.png: the folder"),  # said before the run, not after it
])
def test_bench_bad_arguments(cli, exported, args, message):
    assert_one_line_error(cli("bench", str(exported.onnx_path), "-q", *args), contains=message)


def test_doctor_reports_what_can_run(cli):
    result = cli("doctor", "--json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert report["backends"]["torch-cpu"]["usable"] and report["backends"]["onnxruntime-cpu"]["usable"]
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]
    assert report["cpu"]["physical_cores"] >= 1
    trt = detect.tensorrt()
    assert report["backends"]["tensorrt"] == {"backend": "trt", "usable": trt.available, "reason": trt.reason or None}
    assert set(report["backends"]) == {variant.name for _, variant in registry.variants()}
    text = cli("doctor")
    assert "backends:" in text.stdout and re.search(r"onnxruntime-cpu +yes", text.stdout)
    from resnet_deploy.environment import int8_isa

    assert report["cpu"]["int8_isa"] == int8_isa()
    words = {"vnni": "int8 kernels VNNI", "avx2": "int8 kernels no VNNI", "i8mm": "int8 kernels i8mm",
             "dotprod": "int8 kernels dotprod", "neon": "int8 kernels no dot product",
             "other": "int8 kernels neither x86 nor ARM"}
    assert words[int8_isa()] in text.stdout


ARENA_PROBE = """
import sys, numpy as np, onnx
from onnx import TensorProto, helper
from resnet_deploy.backends.onnxrt import OnnxRuntimeRunner

def resident_mib():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS')) // 1024

x = helper.make_tensor_value_info('x', TensorProto.FLOAT, ['N', 64, 64, 64])
y = helper.make_tensor_value_info('y', TensorProto.FLOAT, ['N', 1, 1, 1])
nodes = [helper.make_node('Relu', ['x'], ['a']), helper.make_node('Add', ['a', 'x'], ['b']),
         helper.make_node('Mul', ['b', 'a'], ['c']), helper.make_node('ReduceMax', ['c'], ['y'], keepdims=1)]
graph = helper.make_model(helper.make_graph(nodes, 'wide', [x], [y]), opset_imports=[helper.make_opsetid('', 17)])
keeps = None if sys.argv[1] == 'none' else int(sys.argv[1])
runner = OnnxRuntimeRunner(graph.SerializeToString(), threads=1)
runner.release_memory_above(keeps)
small = np.ones((1, 64, 64, 64), np.float32)
first = runner.run(small)['y'].copy()
before = resident_mib()
runner.run(np.ones((128, 64, 64, 64), np.float32))  # 128 MiB a tensor: the overload
after = resident_mib()
assert np.array_equal(runner.run(small)['y'], first)
print(after - before)
"""


def test_memory_a_batch_above_the_arena_size_took_is_handed_back():
    """Issue 28, item 11: after a batch larger than the profile's opt, ONNX Runtime's CPU arena kept its
    peak (a server's RSS went from 344 to 891 MB and stayed); with ``arena_keeps`` it is handed back."""
    import subprocess
    import sys

    def growth(keeps: str) -> int:
        done = subprocess.run([sys.executable, "-c", ARENA_PROBE, keeps], capture_output=True, text=True, check=True)
        return int(done.stdout.split()[-1])

    kept, handed_back = growth("none"), growth("1")
    assert kept > 300, f"the default arena kept only {kept} MiB: the probe no longer measures the arena"
    assert handed_back < 100, f"{handed_back} MiB still held after the oversized batch"


def test_a_served_runner_hands_back_the_memory_of_batches_above_the_opt(exported):
    """serve's runner releases what a batch above the profile's opt took; bench, tune and predict keep it (the
    fastest, and what they time)."""
    pytest.importorskip("starlette", reason="serving needs the serve extra")
    from resnet_deploy.serving.server import prepare

    assert runtime.load(exported.onnx_path).arena_keeps is None
    service = prepare(exported.onnx_path)
    assert service.runner.arena_keeps == exported.manifest.batch.opt == 4
    service.runner.close()
