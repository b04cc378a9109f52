"""`serve --grpc-port`: the protocol over gRPC (Triton's GRPCInferenceService) beside REST, driven by
tritonclient.grpc: the same answers, one batcher and one set of statistics for both transports."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("uvicorn", reason="serving needs the serve extra (uvicorn, starlette)")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="the grpc extra")
import grpc  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from resnet_deploy.data import random_images  # noqa: E402
from resnet_deploy.serving.app import create_app  # noqa: E402
from resnet_deploy.serving.grpc_service import GrpcFront  # noqa: E402
from resnet_deploy.serving.limits import ServeLimits  # noqa: E402
from resnet_deploy.target import runtime  # noqa: E402
from tests.conftest import free_port, serving_in_thread  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def both(small_export):
    """(http_url, grpc_url, runner): one app serving REST and gRPC on free loopback ports."""
    runner = runtime.load(small_export.onnx_path)
    app = create_app(runner, model_name="resnet18", limits=ServeLimits(max_batch=8, max_delay_ms=50))
    grpc_port = free_port()
    app.state.model.fronts.append(GrpcFront(app.state.model, "127.0.0.1", grpc_port))
    with serving_in_thread(app) as url:
        yield url, f"127.0.0.1:{grpc_port}", runner
    runner.close()


def _grpc_inputs(batch):
    tensor = grpcclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    return [tensor]


def test_health_metadata_config_and_index_over_grpc(both):
    http_url, grpc_url, _ = both
    client, rest = grpcclient.InferenceServerClient(grpc_url), httpclient.InferenceServerClient(http_url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("resnet18")
    assert not client.is_model_ready("resnet50")
    assert "classification" in client.get_server_metadata().extensions
    metadata = client.get_model_metadata("resnet18", as_json=True)
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "3", "64", "64"]}]
    # the same description as REST's /config, as Triton's ModelConfig message
    assert client.get_model_config("resnet18").config == \
        json_format.ParseDict(rest.get_model_config("resnet18"), model_config_pb2.ModelConfig())
    assert client.get_model_config("resnet18").config.max_batch_size == 8
    assert [(m.name, m.version, m.state) for m in client.get_model_repository_index().models] == \
        [("resnet18", "1", "READY")]
    with pytest.raises(InferenceServerException, match="unknown model 'resnet50'"):
        client.get_model_config("resnet50")


def test_grpc_answers_equal_the_runner_and_rest(both):
    http_url, grpc_url, runner = both
    client, rest = grpcclient.InferenceServerClient(grpc_url), httpclient.InferenceServerClient(http_url)
    batch = random_images(3, (3, 64, 64), MEAN, STD, seed=21)
    want = runner(batch)["logits"]
    result = client.infer("resnet18", _grpc_inputs(batch))
    np.testing.assert_allclose(result.as_numpy("logits"), want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert result.get_response().parameters["server_batch_size"].int64_param >= 3
    asked = grpcclient.InferRequestedOutput("logits", class_count=3)
    top = client.infer("resnet18", _grpc_inputs(batch), outputs=[asked]).as_numpy("logits")
    tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    rest_top = rest.infer("resnet18", [tensor], outputs=[httpclient.InferRequestedOutput("logits", class_count=3)])
    assert [[e.split(b":")[1:] for e in row] for row in top] == \
        [[e.split(b":")[1:] for e in row] for row in rest_top.as_numpy("logits")]


def test_typed_contents_are_read_as_raw_ones(both):
    """A request carrying ``contents.fp32_contents`` (other clients than tritonclient send these) is the same
    batch as raw bytes."""
    _, grpc_url, runner = both
    batch = random_images(1, (3, 64, 64), MEAN, STD, seed=22)
    request = service_pb2.ModelInferRequest(model_name="resnet18")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=batch.shape)
    tensor.contents.fp32_contents.extend(batch.ravel().tolist())
    with grpc.insecure_channel(grpc_url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(1, 1000)
    np.testing.assert_allclose(got, runner(batch)["logits"], rtol=0, atol=1e-5 * np.abs(got).max())


@pytest.mark.parametrize("shape, datatype, code, message", [
    ([1, 3, 32, 32], "FP32", grpc.StatusCode.INVALID_ARGUMENT, "does not match the model's"),
    ([9, 3, 64, 64], "FP32", grpc.StatusCode.INVALID_ARGUMENT, "outside 1 to 8"),
    ([1, 3, 64, 64], "INT32", grpc.StatusCode.INVALID_ARGUMENT, "takes FP32"),
])
def test_bad_grpc_requests_are_refused_with_the_reason(both, shape, datatype, code, message):
    _, grpc_url, _ = both
    request = service_pb2.ModelInferRequest(model_name="resnet18")
    request.inputs.add(name="input", datatype=datatype, shape=shape)
    request.raw_input_contents.append(b"\0" * (4 * int(np.prod(shape))))
    with grpc.insecure_channel(grpc_url) as channel, pytest.raises(grpc.RpcError) as caught:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert caught.value.code() == code and message in caught.value.details()
    request.model_name = "resnet50"
    with grpc.insecure_channel(grpc_url) as channel, pytest.raises(grpc.RpcError) as caught:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_both_transports_share_one_batcher_and_its_statistics(both):
    """Requests over REST and gRPC at once are batched together and counted in one set of statistics."""
    http_url, grpc_url, runner = both
    before = grpcclient.InferenceServerClient(grpc_url).get_inference_statistics("resnet18", as_json=True)
    batch = random_images(1, (3, 64, 64), MEAN, STD, seed=23)

    def over(transport):
        if transport == "grpc":
            client = grpcclient.InferenceServerClient(grpc_url)
            result = client.infer("resnet18", _grpc_inputs(batch))
            return result.as_numpy("logits"), result.get_response().parameters["server_batch_size"].int64_param
        client = httpclient.InferenceServerClient(http_url)
        tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        try:
            result = client.infer("resnet18", [tensor])
            return result.as_numpy("logits"), result.get_response()["parameters"]["server_batch_size"]
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(over, ["grpc", "http"] * 4))
    want = runner(batch)["logits"]
    for got, _size in answers:
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert max(size for _, size in answers) > 1  # the 50 ms batch window joined some of them
    after = httpclient.InferenceServerClient(http_url).get_inference_statistics("resnet18")
    counts = [int(s["model_stats"][0]["inference_stats"]["success"]["count"]) for s in (before, after)]
    assert counts[1] - counts[0] == 8


KSERVE = "kserve==0.21.0"  # the KServe SDK, in an environment of its own (its server's dependencies are many)


def test_the_kserve_sdk_clients_read_serve(both, request, tmp_path):
    """KServe's own clients, as a KServe user calls a v2 model: the REST client's health checks and
    inference, and the gRPC client's inference, equal to the runner's outputs."""
    import json
    import subprocess
    from pathlib import Path

    from tests.conftest import cached_venv

    http_url, grpc_url, runner = both
    venv = cached_venv(Path(request.config.cache.mkdir("kserve")) / "venv", [KSERVE])
    batch = random_images(2, (3, 64, 64), MEAN, STD, seed=24)
    np.save(tmp_path / "batch.npy", batch)
    script = Path(__file__).parents[1] / "kserve" / "client.py"
    done = subprocess.run([str(venv / "bin" / "python"), str(script), f"http://{http_url}", grpc_url, "resnet18",
                           str(tmp_path / "batch.npy")], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["live"] and found["ready"] and found["model_ready"]
    want = runner(batch)["logits"]
    for transport in ("rest", "grpc"):
        np.testing.assert_allclose(np.array(found[transport]), want, rtol=0, atol=1e-5 * np.abs(want).max())


def _typed_request(batch, values=None):
    request = service_pb2.ModelInferRequest(model_name="resnet18")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=batch.shape)
    tensor.contents.fp32_contents.extend(batch.ravel().tolist() if values is None else values)
    return request


@pytest.mark.parametrize("change, message", [
    (lambda r: r.inputs[0].contents.fp32_contents.extend([0.0] * 10), "has 12298 values; shape [1, 3, 64, 64] needs"),
    (lambda r: r.raw_input_contents.append(b"\0" * 49152), "both raw and typed contents"),
    (lambda r: (r.inputs[0].ClearField("contents"), r.raw_input_contents.extend([b"\0" * 49152] * 2)),
     "2 raw input contents for 1 inputs"),
])
def test_inconsistent_grpc_contents_are_refused(both, change, message):
    """Typed contents are counted before they become a list (16 M values took 1 GB and 2 s to refuse); raw and
    typed at once, or more raw contents than inputs, are refused rather than one of them ignored."""
    _, grpc_url, _ = both
    request = _typed_request(random_images(1, (3, 64, 64), MEAN, STD, seed=25))
    change(request)
    with grpc.insecure_channel(grpc_url) as channel, pytest.raises(grpc.RpcError) as caught:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in caught.value.details()


def test_a_call_past_its_deadline_leaves_the_queue_with_its_work():
    """gRPC cancels a call whose deadline passed: it gave its queue place back while its batch stayed queued
    and was computed later, so the queue bound held nothing (1473 images computed for abandoned calls). Now a
    cancelled call leaves the queue, and only what a worker had already taken is computed."""
    from resnet_deploy.artifacts import TensorSpec
    from resnet_deploy.backends.base import Runner

    class Slow(Runner):
        name, batch_range = "slow", (1, 1)
        inputs = [TensorSpec("input", ["batch", 3, 8, 8], "float32")]
        outputs = [TensorSpec("logits", ["batch", 1], "float32")]

        def run(self, batch):
            import time

            time.sleep(0.2)
            return {"logits": batch.mean(axis=(1, 2, 3))[:, None].astype(np.float32)}

    app = create_app(Slow(), model_name="slow", limits=ServeLimits(max_batch=1, queue_size=4))
    port = free_port()
    app.state.model.fronts.append(GrpcFront(app.state.model, "127.0.0.1", port))
    with serving_in_thread(app):
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = grpcclient.InferInput("input", [1, 3, 8, 8], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 3, 8, 8), np.float32))

        def late(_):
            with pytest.raises(InferenceServerException, match="Deadline"):
                client.infer("slow", [tensor], client_timeout=0.05)

        for _ in range(3):  # 12 calls, 4 at a time (the queue's bound)
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(late, range(4)))
        import time

        time.sleep(0.6)
        batcher = app.state.batcher
        assert batcher.waiting == 0 and not batcher.pending
        assert batcher.stats.images <= 3 + 1  # at most the one call a worker held in each round
        assert client.infer("slow", [tensor], client_timeout=10).as_numpy("logits")[0, 0] == 1.0


def test_a_grpc_port_in_use_is_refused_not_shared(both, small_export):
    """gRPC's default SO_REUSEPORT let a second server bind the same port and take half its connections; and
    a front that cannot start leaves nothing running and says why in one line (the port taken between the
    listen check and the bind, as during a model load)."""
    import asyncio

    from resnet_deploy.errors import DeployError
    from resnet_deploy.serving.server import prepare

    _, grpc_url, _ = both
    service = prepare(small_export.onnx_path, limits=ServeLimits(max_request_mb=4096))  # over gRPC's 2 GiB int
    host, port = grpc_url.rsplit(":", 1)
    with pytest.raises(DeployError, match=f"cannot listen for gRPC on {host}:{port}"):
        asyncio.run(GrpcFront(service.app.state.model, host, int(port)).start())
    with pytest.raises(DeployError, match=f"cannot listen for gRPC on {host}:{port}"):
        service.run(host, free_port(), int(port))
    assert service.app.state.model.batcher._executor._shutdown  # the batcher it had started is stopped
    service.runner.close()


def test_shutting_down_is_not_ready_and_refuses_new_grpc_calls(small_export):
    """On SIGTERM uvicorn drains HTTP first; gRPC went on answering ready and taking new work meanwhile."""
    import time

    with runtime.load(small_export.onnx_path) as runner:
        app = create_app(runner, model_name="resnet18")
        port = free_port()
        app.state.model.fronts.append(GrpcFront(app.state.model, "127.0.0.1", port))
        with serving_in_thread(app):
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
            assert client.is_server_ready()
            app.state.model.shutting_down()
            time.sleep(0.5)
            assert not app.state.model.ready
            with pytest.raises(InferenceServerException, match="UNAVAILABLE|unavailable|Connection refused"):
                client.infer("resnet18", _grpc_inputs(random_images(1, (3, 64, 64), MEAN, STD)), client_timeout=5)
