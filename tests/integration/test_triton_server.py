"""The repositories `resnet-deploy triton` writes, loaded by a real Triton Inference Server
(tests/triton/server.py): every model ready, answers equal ONNX Runtime's, Triton's classification
extension and dynamic batcher at work, and the ensemble that takes encoded images computing what
`predict` computes on real photographs (scikit-learn's bundled JPEGs) and converted files."""

from __future__ import annotations

import json
import os
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from resnet_deploy.target import runtime
from resnet_deploy.backends import detect
from resnet_deploy.data import imagenet_classes, random_images
from tests.triton import server as triton_server

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def triton(small_export, embedded_export, request, tmp_path_factory):
    """(server, repo) with the small export's fp32 (and its ensemble) and fp16 ONNX written by `resnet-deploy
    triton --kind auto`, and the export that embeds its preprocessing (uint8 pixels in) with its ensemble."""
    from resnet_deploy.serving.triton import TritonOptions, write_model_repository

    cache = Path(request.config.cache.mkdir("triton"))
    venv = triton_server.environment(cache)
    repo = tmp_path_factory.mktemp("repo")
    write_model_repository(small_export.onnx_path, repo, TritonOptions(preferred=(4, 8), queue_delay_us=20_000,
                                                                       ensemble=True))
    write_model_repository(small_export.paths["fp16"], repo, TritonOptions(model_name="resnet18_fp16"))
    write_model_repository(embedded_export.onnx_path, repo, TritonOptions(model_name="pixels", ensemble=True))
    folder = tmp_path_factory.mktemp("backends")
    try:
        server = triton_server.Server(venv, triton_server.backends(venv, folder / "backends"), repo,
                                      folder / "triton.log")
    except RuntimeError as exc:  # a machine the wheel's binary cannot run on; in CI it must start
        if os.environ.get("CI"):
            raise
        pytest.skip(f"tritonserver did not start here: {str(exc).splitlines()[0]}")
    yield server, repo
    server.stop()


def _infer(client, model, batch, **kwargs):
    tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    return client.infer(model, [tensor], **kwargs)


def test_every_model_written_is_ready(triton):
    server, _repo = triton
    client = httpclient.InferenceServerClient(server.url)
    for model in ("resnet18", "resnet18_fp16", "resnet18_preprocess", "resnet18_ensemble", "pixels",
                  "pixels_preprocess", "pixels_ensemble"):
        assert client.is_model_ready(model), model
        if not detect.cuda_gpu() and not model.endswith("_ensemble"):  # an ensemble has no instances
            # --kind auto: CPU instances, which a Triton without GPUs loads
            assert client.get_model_config(model)["instance_group"][0]["kind"] == "KIND_CPU"


def test_answers_equal_onnx_runtime(triton, small_export):
    server, _repo = triton
    client = httpclient.InferenceServerClient(server.url)
    batch = random_images(3, (3, 64, 64), MEAN, STD, seed=4)
    for model, path in (("resnet18", small_export.onnx_path), ("resnet18_fp16", small_export.paths["fp16"])):
        with runtime.load(path) as runner:
            want = runner(batch)["logits"]
        np.testing.assert_allclose(_infer(client, model, batch).as_numpy("logits"), want, rtol=0, atol=1e-5)


def test_classification_extension_names_the_top_classes(triton, small_export):
    server, _repo = triton
    client = httpclient.InferenceServerClient(server.url)
    batch = random_images(1, (3, 64, 64), MEAN, STD, seed=6)
    with runtime.load(small_export.onnx_path) as runner:
        logits = runner(batch)["logits"][0]
    top = _infer(client, "resnet18", batch, outputs=[httpclient.InferRequestedOutput("logits", class_count=3)])
    entries = [entry.decode().split(":") for entry in top.as_numpy("logits")[0]]
    names = imagenet_classes()
    assert [int(index) for _score, index, _name in entries] == list(np.argsort(-logits)[:3])
    assert [name for _score, _index, name in entries] == [names[i] for i in np.argsort(-logits)[:3]]


def test_concurrent_requests_are_batched_by_triton(triton):
    server, _repo = triton
    batch = random_images(1, (3, 64, 64), MEAN, STD, seed=7)

    def one(_):
        client = httpclient.InferenceServerClient(server.url)  # one per thread, closed in it (gevent's hub is per thread)
        try:
            return _infer(client, "resnet18", batch).as_numpy("logits")
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(one, range(32)))
    assert all(np.array_equal(a, answers[0]) for a in answers)
    with urllib.request.urlopen(f"http://{server.url}/v2/models/resnet18/stats") as response:
        stats = json.loads(response.read())["model_stats"][0]
    assert stats["inference_count"] >= 32 and stats["execution_count"] < stats["inference_count"]


def _photos(folder: Path) -> list[Path]:
    """Two real photographs (JPEG, as scikit-learn ships them) and the first one as greyscale PNG, RGBA PNG,
    CMYK JPEG and WebP."""
    import sklearn.datasets
    from PIL import Image

    shipped = Path(sklearn.datasets.__file__).parent / "images"
    photos = [shipped / "china.jpg", shipped / "flower.jpg"]
    with Image.open(photos[0]) as image:
        for mode, name in (("L", "grey.png"), ("RGBA", "alpha.png"), ("CMYK", "cmyk.jpg"), ("RGB", "photo.webp")):
            image.convert(mode).save(folder / name)
            photos.append(folder / name)
    return photos


def _images_request(paths_or_bytes: list) -> list:
    data = [p.read_bytes() if isinstance(p, Path) else p for p in paths_or_bytes]
    tensor = httpclient.InferInput("image", [len(data), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(data, dtype=np.object_).reshape(-1, 1))
    return [tensor]


def test_the_ensemble_computes_what_predict_computes_from_image_bytes(triton, small_export, tmp_path, cli):
    from resnet_deploy.data import ImagePreprocess, load_images

    server, _repo = triton
    client = httpclient.InferenceServerClient(server.url)
    photos = _photos(tmp_path)
    preprocess = ImagePreprocess.from_manifest(small_export.manifest.preprocess)
    with runtime.load(small_export.onnx_path) as runner:
        want = runner(load_images(photos, preprocess))["logits"]
    got = client.infer("resnet18_ensemble", _images_request(photos)).as_numpy("logits")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    predicted = json.loads(cli("predict", str(small_export.onnx_path), *map(str, photos), "--json").stdout)
    assert [p["top"][0]["index"] for p in predicted["predictions"]] == list(got.argmax(axis=1))
    top = client.infer("resnet18_ensemble", _images_request(photos[:1]),
                       outputs=[httpclient.InferRequestedOutput("logits", class_count=2)]).as_numpy("logits")[0]
    assert [int(entry.decode().split(":")[1]) for entry in top] == list(np.argsort(-want[0])[:2])


def test_a_bad_image_fails_its_request_alone(triton, tmp_path):
    from tritonclient.utils import InferenceServerException

    server, _repo = triton
    good = _photos(tmp_path)[1]
    requests = [[b"\x89PNG not really an image"]] + [[good]] * 7

    def one(images):
        client = httpclient.InferenceServerClient(server.url)  # one per thread, closed in it (gevent's hub is per thread)
        try:
            return client.infer("resnet18_ensemble", _images_request(images))
        except InferenceServerException as exc:
            return exc
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one, requests))
    assert isinstance(answers[0], InferenceServerException) and "image 0 is not an image" in str(answers[0])
    logits = [a.as_numpy("logits") for a in answers[1:]]
    assert all(np.array_equal(x, logits[0]) for x in logits)
    client = httpclient.InferenceServerClient(server.url)
    assert client.is_server_ready() and client.is_model_ready("resnet18_preprocess")


def test_an_embedded_preprocessing_artifact_is_served_as_uint8(triton, embedded_export, tmp_path):
    """The artifact that normalises in its graph: uint8 NHWC pixels over the wire (a quarter of FP32's bytes),
    and its ensemble's preprocessing model sending it the resized pixels; both equal ONNX Runtime's."""
    from resnet_deploy.data import ImagePreprocess, load_images

    server, _repo = triton
    client = httpclient.InferenceServerClient(server.url)
    assert client.get_model_metadata("pixels")["inputs"][0]["datatype"] == "UINT8"
    photos = _photos(tmp_path)[:3]
    pixels = load_images(photos, ImagePreprocess.from_manifest(embedded_export.manifest.preprocess))
    with runtime.load(embedded_export.onnx_path) as runner:
        want = runner(pixels)["logits"]
    tensor = httpclient.InferInput("input", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    np.testing.assert_allclose(client.infer("pixels", [tensor]).as_numpy("logits"), want, rtol=0,
                               atol=1e-5 * np.abs(want).max())
    got = client.infer("pixels_ensemble", _images_request(photos)).as_numpy("logits")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_serve_answers_classification_as_triton_does(triton, small_export):
    """The same artifact behind `serve` and behind Triton, asked for the top 3 classes: the same BYTES answer,
    score, index and label (binary and JSON outputs)."""
    pytest.importorskip("starlette", reason="serving needs the serve extra")
    from resnet_deploy.serving.app import create_app
    from tests.conftest import serving_in_thread

    server, _repo = triton
    batch = random_images(2, (3, 64, 64), MEAN, STD, seed=9)
    with runtime.load(small_export.onnx_path) as runner, serving_in_thread(
            create_app(runner, model_name="resnet18")) as url:
        answers = {}
        for name, address in (("triton", server.url), ("serve", url)):
            client = httpclient.InferenceServerClient(address)
            for binary in (True, False):
                asked = httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=3)
                got = _infer(client, "resnet18", batch, outputs=[asked]).as_numpy("logits")
                answers[name, binary] = [[e.decode() if isinstance(e, bytes) else e for e in row] for row in got]
    for binary in (True, False):
        triton_rows, serve_rows = answers["triton", binary], answers["serve", binary]
        assert [[e.split(":")[1:] for e in row] for row in serve_rows] == \
            [[e.split(":")[1:] for e in row] for row in triton_rows]
        np.testing.assert_allclose([[float(e.split(":")[0]) for e in row] for row in serve_rows],
                                   [[float(e.split(":")[0]) for e in row] for row in triton_rows], rtol=0, atol=1e-4)
        assert all(re.fullmatch(r"-?\d+\.\d{6}", e.split(":")[0]) for row in serve_rows + triton_rows for e in row)


def _within(ours, theirs, where="config"):
    """Every field of ``ours`` is in ``theirs`` with the same value (Triton adds its defaults around them)."""
    if isinstance(ours, dict):
        assert isinstance(theirs, dict), where
        for key, value in ours.items():
            assert key in theirs, f"{where}.{key} is not in Triton's"
            _within(value, theirs[key], f"{where}.{key}")
    elif isinstance(ours, list):
        assert isinstance(theirs, list) and len(ours) == len(theirs), where
        for index, (mine, its) in enumerate(zip(ours, theirs)):
            _within(mine, its, f"{where}[{index}]")
    else:
        assert ours == theirs, f"{where}: {ours!r} here, {theirs!r} in Triton's"


def test_serve_answers_config_and_statistics_in_tritons_form(triton, small_export, embedded_export):
    """The same artifacts behind serve and Triton (written with the same batching): serve's ``/config`` holds
    Triton's own JSON config of the model field for field (one description rendered as config.pbtxt and as
    JSON), Triton's protobuf reads it; its statistics have every field Triton's have, as JSON numbers."""
    pytest.importorskip("starlette", reason="serving needs the serve extra")
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    from resnet_deploy.serving.app import create_app
    from resnet_deploy.serving.limits import ServeLimits
    from tests.conftest import serving_in_thread

    server, _repo = triton
    theirs = httpclient.InferenceServerClient(server.url)
    for model, path in (("resnet18", small_export.onnx_path), ("pixels", embedded_export.onnx_path)):
        delay_ms = 20 if model == "resnet18" else 0.1  # as the fixture wrote them: 20000 us, and the default 100
        with runtime.load(path) as runner, serving_in_thread(
                create_app(runner, model_name=model, limits=ServeLimits(max_delay_ms=delay_ms))) as url:
            ours = httpclient.InferenceServerClient(url)
            config = ours.get_model_config(model)
            json_format.ParseDict(config, model_config_pb2.ModelConfig())
            tritons = theirs.get_model_config(model)
            tritons["dynamic_batching"].pop("preferred_batch_size", None)  # Triton's batcher option; serve has none
            # serve's --queue bound; the repository the fixture wrote leaves Triton's queue unbounded
            assert config["dynamic_batching"].pop("default_queue_policy") == {"max_queue_size": 64}
            _within(config, tritons)
            assert set(config) >= {"name", "max_batch_size", "input", "output", "dynamic_batching", "instance_group"}
            ours.infer(model, [_pixels_or_images(runner)])
            mine, its = (client.get_inference_statistics(model)["model_stats"][0] for client in (ours, theirs))
            _same_fields(mine, its)


def _pixels_or_images(runner):
    batch = runner.example_batch(1)
    tensor = httpclient.InferInput("input", list(batch.shape), "UINT8" if batch.dtype == np.uint8 else "FP32")
    tensor.set_data_from_numpy(batch)
    return tensor


def _same_fields(ours, theirs, where="stats"):
    """``ours`` has each field ``theirs`` has (Triton's newer fields aside), of the same JSON type."""
    for key, value in theirs.items():
        if key in ("response_stats",):  # decoupled models' per-response figures: serve's model is not decoupled
            continue
        assert key in ours, f"{where}.{key} is missing"
        assert type(ours[key]) is type(value) or (isinstance(value, list) and not value), f"{where}.{key}"
        if isinstance(value, dict):
            _same_fields(ours[key], value, f"{where}.{key}")


def test_the_tested_release_and_the_kserve_urls_are_tritons(triton, tmp_path):
    """What `kserve` writes for a repository holds for the Triton that loaded it: the release it names as
    KServe's runtimeVersion is this server's, and every URL it prints names a model this server has ready
    (the folder's name, kserve#2755), from the repository root it was started on (kserve#1075)."""
    from resnet_deploy.serving.kserve import KServeOptions, write_kserve
    from resnet_deploy.serving.triton import TESTED_TRITON_VERSION

    server, repo = triton
    client = httpclient.InferenceServerClient(server.url)
    assert client.get_server_metadata()["version"] == TESTED_TRITON_VERSION
    written = write_kserve(repo, tmp_path, KServeOptions(name="classifier", storage_uri="s3://models/repository",
                                                         image="registry.example.com/triton-pillow:1", memory="4Gi"))
    models = [path.split("/")[3] for path in written.urls]
    assert set(models) == {"resnet18", "resnet18_fp16", "resnet18_ensemble", "pixels", "pixels_ensemble"}
    assert all(client.is_model_ready(model) for model in models)
