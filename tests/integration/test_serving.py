"""Triton model repositories, and the Open Inference Protocol server driven by Triton's own client."""

from __future__ import annotations

import gzip
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("uvicorn", reason="serving needs the serve extra (uvicorn, starlette)")
httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient is a test dependency")
from google.protobuf import text_format  # noqa: E402  (installed with tritonclient)
from tritonclient.grpc import model_config_pb2  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402


from resnet_deploy.target import runtime  # noqa: E402
from resnet_deploy.backends import detect  # noqa: E402
from resnet_deploy.backends.base import Runner  # noqa: E402
from resnet_deploy.data import random_images  # noqa: E402
from resnet_deploy.serving.app import create_app  # noqa: E402
from resnet_deploy.serving.limits import ServeLimits  # noqa: E402
from resnet_deploy.errors import DeployError  # noqa: E402
from resnet_deploy.serving.triton import TritonOptions, write_model_repository  # noqa: E402
from tests.conftest import assert_one_line_error, free_port, serving_in_thread  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def exported(small_export):
    return small_export


def _config(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_triton_repository_config_parses_with_tritons_model_config(cli, exported, tmp_path):
    repo = tmp_path / "repo"
    result = cli("triton", str(exported.onnx_path), "--repo", str(repo), "--preferred", "4,8",
                 "--queue-delay-us", "500", "--instances", "2", "--kind", "cpu")
    assert result.exit_code == 0, result.stderr
    config = _config(repo / "resnet18" / "config.pbtxt")
    assert config.name == "resnet18" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
    [inp] = config.input
    assert inp.name == "input" and list(inp.dims) == [3, 64, 64]
    assert inp.data_type == model_config_pb2.TYPE_FP32 and inp.format == model_config_pb2.ModelInput.FORMAT_NCHW
    [out] = config.output
    assert out.name == "logits" and list(out.dims) == [1000] and out.label_filename == "imagenet_labels.txt"
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    [group] = config.instance_group
    assert group.count == 2 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert (repo / "resnet18" / "1" / "model.onnx").read_bytes() == exported.onnx_path.read_bytes()
    labels = (repo / "resnet18" / "imagenet_labels.txt").read_text().splitlines()
    assert len(labels) == 1000 and labels[0] == "tench"

    # updating: a second model and a second version are added, nothing else is touched
    cli("triton", str(exported.paths["fp16"]), "--repo", str(repo), "--model-name", "resnet18_fp16", "--max-batch", "4")
    cli("triton", str(exported.paths["fp16"]), "--repo", str(repo), "--version", "2", "--kind", "gpu")
    assert _config(repo / "resnet18_fp16" / "config.pbtxt").max_batch_size == 4
    assert (repo / "resnet18" / "1" / "model.onnx").read_bytes() == exported.onnx_path.read_bytes()
    assert (repo / "resnet18" / "2" / "model.onnx").read_bytes() == exported.paths["fp16"].read_bytes()
    gpu = _config(repo / "resnet18" / "config.pbtxt")
    assert gpu.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU and not gpu.parameters
    # --kind auto (the default) on a machine without a GPU: CPU instances, with ONNX Runtime's CPU settings
    auto = _config(repo / "resnet18_fp16" / "config.pbtxt")
    if not detect.cuda_gpu():
        assert auto.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
        assert int(auto.parameters["intra_op_thread_count"].string_value) >= 1 and auto.optimization.graph.level == 0
    assert not [p for p in repo.rglob(".tmp-*")]


def _with_bf16_verified(export_folder, tmp_path):
    """A copy of the export whose manifest records a passed bf16 gate (what `export --bf16` writes on a CPU with
    native bf16; this test's subject is the Triton writer, on any CPU)."""
    import shutil

    from resnet_deploy.artifacts import read_manifest, write_manifest

    folder = tmp_path / "bf16-verified"
    shutil.copytree(export_folder, folder)
    manifest = read_manifest(folder / "resnet18.json")
    manifest.precision_options["bf16"] = {"verified": True, "reason": None, "cpu": {"bf16": "native"}}
    write_manifest(manifest, folder)
    return folder


def test_triton_openvino_serves_only_what_was_verified_in_bf16(cli, exported, tmp_path):
    """Triton's OpenVINO backend cannot pin f32: on a bf16 CPU it computes any float part in bf16. A file whose
    bf16 computation the export did not verify is refused, naming why and what to do; the fp32 file with a
    passed bf16 gate is written, and says what it computes."""
    repo = tmp_path / "repo"
    for path in (exported.onnx_path, exported.paths["fp16"]):
        assert_one_line_error(cli("triton", str(path), "--repo", str(repo), "--backend", "openvino"), 2,
                              "Triton's OpenVINO backend cannot pin f32 inference (its one precision key is HINT_BF16)")
    assert not (repo / "resnet18" / "config.pbtxt").exists()
    verified = _with_bf16_verified(exported.onnx_path.parent, tmp_path)
    result = cli("triton", str(verified / "resnet18.onnx"), "--repo", str(repo), "--backend", "openvino")
    assert result.exit_code == 0, result.stderr
    assert "computing fp32, and bf16 on CPUs with native bf16 (verified by export --bf16)" in result.stdout
    record = json.loads((repo / "resnet18" / "resnet_deploy.json").read_text())
    assert record["versions"]["1"]["computes"].startswith("fp32, and bf16 on CPUs with native bf16")


def test_two_triton_writes_into_one_model_at_once_keep_both_versions(exported, tmp_path):
    """Two `triton` processes writing other files under one model name at the same moment: the model's lock
    makes them take turns, so each version holds the file its record names and neither is lost."""
    import subprocess
    import sys

    from resnet_deploy.fileio import sha256_file

    for trial in range(3):
        repo = tmp_path / f"repo{trial}"
        files = [exported.onnx_path, exported.paths["fp16"]]
        processes = [subprocess.Popen([sys.executable, "-m", "resnet_deploy.cli", "triton", str(path), "--repo",
                                       str(repo), "--model-name", "shared"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for path in files]
        for process in processes:
            _, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
        record = json.loads((repo / "shared" / "resnet_deploy.json").read_text())
        assert sorted(record["versions"]) == ["1", "2"], record
        for version, entry in record["versions"].items():
            assert sha256_file(repo / "shared" / version / "model.onnx") == entry["sha256"]
        assert {entry["artifact"] for entry in record["versions"].values()} == {p.name for p in files}


def test_triton_openvino_and_ensemble_configs_parse_with_tritons_model_config(cli, exported, tmp_path):
    repo = tmp_path / "repo"
    verified = _with_bf16_verified(exported.onnx_path.parent, tmp_path)
    result = cli("triton", str(verified / "resnet18.onnx"), "--repo", str(repo), "--backend", "openvino",
                 "--instances", "2", "--ensemble")
    assert result.exit_code == 0, result.stderr
    openvino = _config(repo / "resnet18" / "config.pbtxt")
    assert openvino.backend == "openvino" and not openvino.platform and openvino.default_model_filename == "model.onnx"
    assert openvino.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU  # its only kind
    threads = int(openvino.parameters["INFERENCE_NUM_THREADS"].string_value)
    assert threads >= 1 and openvino.parameters["NUM_STREAMS"].string_value == "1"
    preprocess = _config(repo / "resnet18_preprocess" / "config.pbtxt")
    assert preprocess.backend == "python" and preprocess.input[0].data_type == model_config_pb2.TYPE_STRING
    assert list(preprocess.output[0].dims) == [3, 64, 64] and preprocess.HasField("dynamic_batching")
    assert json.loads(preprocess.parameters["preprocess"].string_value) == exported.manifest.preprocess
    ensemble = _config(repo / "resnet18_ensemble" / "config.pbtxt")
    steps = ensemble.ensemble_scheduling.step
    assert ensemble.platform == "ensemble" and [s.model_name for s in steps] == ["resnet18_preprocess", "resnet18"]
    assert dict(steps[0].output_map) == {"input": "preprocessed"} and dict(steps[1].input_map) == {"input": "preprocessed"}
    assert ensemble.output[0].label_filename == "imagenet_labels.txt" and (repo / "resnet18_ensemble" / "1").is_dir()
    assert_one_line_error(cli("triton", str(verified / "resnet18.onnx"), "--repo", str(repo), "--backend", "openvino",
                              "--kind", "gpu"), 2, "runs on CPU instances only")
    with pytest.raises(DeployError, match="Triton serves artifacts, not the PyTorch model: use --backend ort or openvino"):
        write_model_repository(exported.onnx_path, repo, TritonOptions(backend="torch"))
    (repo / "other_preprocess").mkdir()
    (repo / "other_preprocess" / "config.pbtxt").write_text('name: "other_preprocess"\n')
    assert_one_line_error(cli("triton", str(exported.onnx_path), "--repo", str(repo), "--model-name", "other",
                              "--ensemble"), 2, "holds a model resnet-deploy did not write for other")
    assert (repo / "other_preprocess" / "config.pbtxt").read_text() == 'name: "other_preprocess"\n'


def test_triton_never_destroys(cli, exported, tmp_path):
    repo, fp32, fp16 = tmp_path / "repo", str(exported.onnx_path), str(exported.paths["fp16"])
    model = repo / "resnet18"

    def triton(*args):
        return cli("triton", *args, "--repo", str(repo), "--kind", "cpu")

    assert triton(fp32).stdout.splitlines()[0].endswith("/resnet18/1/")
    assert triton(fp32).stdout.splitlines()[0].endswith("/resnet18/1/")  # the same artifact: its own version again
    assert triton(fp16).stdout.splitlines()[0].endswith("/resnet18/2/")  # a new artifact of the model: a new version
    assert_one_line_error(triton(fp32, "--version", "2"), 2, "version 2 of resnet18 holds resnet18.fp16.onnx "
                                                               "(another artifact)")
    assert (model / "2" / "model.onnx").read_bytes() == exported.paths["fp16"].read_bytes()

    record = json.loads((model / "resnet_deploy.json").read_text())
    record["versions"]["3"] = {**record["versions"]["1"], "artifact": "resnet18.engine",
                               "interface": {**record["versions"]["1"]["interface"], "platform": "tensorrt_plan"}}
    (model / "3").mkdir()
    (model / "3" / "model.plan").write_bytes(b"plan")
    (model / "resnet_deploy.json").write_text(json.dumps(record))
    config = (model / "config.pbtxt").read_text()
    assert_one_line_error(triton(fp16, "--version", "4"), 2, "version 3 of resnet18 holds resnet18.engine "
                                                             "(tensorrt_plan")  # its config would orphan it
    assert (model / "config.pbtxt").read_text() == config and not (model / "4").exists()

    record["versions"] = {v: {**e, "model": {**e["model"], "weights": {"init": "random", "seed": 7}}}
                          for v, e in record["versions"].items() if v != "3"}
    (model / "resnet_deploy.json").write_text(json.dumps(record))
    assert_one_line_error(triton(fp32), 2, "resnet18 serves another model (resnet18, weights")

    foreign = repo / "other"
    foreign.mkdir(parents=True)
    (foreign / "config.pbtxt").write_text('name: "other"\nplatform: "pytorch_libtorch"\n')
    assert_one_line_error(triton(fp32, "--model-name", "other"), 2, "holds a model resnet-deploy did not write")
    assert (foreign / "config.pbtxt").read_text().startswith('name: "other"')
    forced = triton(fp32, "--model-name", "other", "--force")
    assert forced.exit_code == 0 and _config(foreign / "config.pbtxt").platform == "onnxruntime_onnx"
    assert not [p for p in repo.rglob(".tmp-*")]


@pytest.mark.parametrize("args, message", [
    (["--max-batch", "9"], "outside the artifact's profile"),
    (["--preferred", "32"], "must lie between 1 and the max batch"),
    (["--model-name", "bad.name"], "invalid artifact name"),
    (["--instances", "0"], "--instances 0 is out of range: it must be between 1 and 64"),
    (["--instances", "100000"], "--instances 100000 is out of range"),
    (["--max-batch", "0"], "--max-batch 0 is outside the artifact's profile"),
    (["--queue-delay-us", "-1"], "--queue-delay-us -1 is out of range"),
])
def test_triton_bad_options(cli, exported, tmp_path, args, message):
    assert_one_line_error(cli("triton", str(exported.onnx_path), "--repo", str(tmp_path / "r"), *args),
                          contains=message)
    assert not (tmp_path / "r" / "resnet18" / "config.pbtxt").exists()



STALL_S = 1.0  # the test server's read timeout


@pytest.fixture(scope="module")
def server(exported):
    """The server on a free loopback port, in a thread; yields (url, runner, app)."""
    runner = runtime.load(exported.onnx_path)
    app = create_app(runner, model_name="resnet18",
                     limits=ServeLimits(max_batch=8, max_delay_ms=100, queue_size=64, read_timeout_s=STALL_S))
    with serving_in_thread(app, header_timeout_s=STALL_S) as url:
        yield url, runner, app
    runner.close()


def _inputs(batch, binary=True):
    tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    return [tensor]


def test_health_and_metadata(server):
    url, _, _ = server
    client = httpclient.InferenceServerClient(url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("resnet18")
    assert not client.is_model_ready("resnet50")
    meta = client.get_model_metadata("resnet18")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 64, 64]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}]
    # the manifest's declared preprocessing, so a client prepares images as the export did
    assert meta["parameters"]["preprocess"]["crop"] == [64, 64]
    assert meta["parameters"]["preprocess"]["mean"] == [0.485, 0.456, 0.406]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [True, False])
def test_inference_equals_the_runner(server, binary):
    url, runner, _ = server
    client = httpclient.InferenceServerClient(url)
    batch = random_images(3, (3, 64, 64), MEAN, STD, seed=7)
    output = httpclient.InferRequestedOutput("logits", binary_data=binary)
    result = client.infer("resnet18", _inputs(batch, binary), outputs=[output])
    got = result.as_numpy("logits")
    want = runner(batch)["logits"]
    assert got.shape == (3, 1000)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert result.get_response()["parameters"]["server_batch_size"] >= 3


def test_concurrent_requests_are_batched(server):
    url, runner, app = server
    before = app.state.batcher.stats.batches
    batches = [random_images(1, (3, 64, 64), MEAN, STD, seed=i) for i in range(6)]

    def one(batch):
        client = httpclient.InferenceServerClient(url)
        result = client.infer("resnet18", _inputs(batch))
        return result.as_numpy("logits"), result.get_response()["parameters"]["server_batch_size"]

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(one, batches))
    for (got, _), batch in zip(answers, batches):
        np.testing.assert_allclose(got, runner(batch)["logits"], rtol=0, atol=1e-4 * np.abs(got).max())
    assert max(size for _, size in answers) > 1  # some requests shared a runner call
    assert app.state.batcher.stats.batches - before < len(batches)
    metrics = urllib.request.urlopen(f"http://{url}/metrics").read().decode()
    assert "resnet_deploy_batches_total" in metrics
    deepest = re.search(r"^resnet_deploy_deepest_queue (\d+)$", metrics, re.M)
    assert deepest and int(deepest.group(1)) == app.state.batcher.stats.deepest_queue >= 1


def _post(url, body, headers=None):
    request = urllib.request.Request(f"http://{url}/v2/models/resnet18/infer", data=body, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _json_request(shape, datatype="FP32", data=None, name="input"):
    count = int(np.prod(shape))
    return json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype,
                                   "data": data if data is not None else [0.0] * count}]}).encode()


@pytest.mark.parametrize("body, headers, message", [
    (b"{not json", None, "not valid JSON"),
    (_json_request([1, 3, 32, 32]), None, "does not match the model's [-1, 3, 64, 64]"),
    (_json_request([1, 3, 64, 64], datatype="INT32"), None, "takes FP32"),
    (_json_request([9, 3, 64, 64]), None, "outside 1 to 8"),
    (_json_request([1, 3, 64, 64], name="image"), None, "unknown input 'image'"),
    (_json_request([1, 3, 64, 64], data=[1.0, 2.0]), None, "has 2 values"),
    (_json_request([1, 3, 64, 64], data=["a"] * 12288), None, "not a list of numbers"),
    (_json_request([1, 3, 64, 64]), {"Inference-Header-Content-Length": "999999999"}, "does not fit"),
    (json.dumps({"inputs": []}).encode(), None, "one tensor named 'input'"),
])
def test_bad_requests_get_400_and_the_server_keeps_serving(server, body, headers, message):
    url, _, _ = server
    status, answer = _post(url, body, headers)
    assert status == 400 and message in answer["error"], answer
    client = httpclient.InferenceServerClient(url)
    assert client.infer("resnet18", _inputs(random_images(1, (3, 64, 64), MEAN, STD))).as_numpy("logits").shape \
        == (1, 1000)


STALLED_BODY = (b"POST /v2/models/resnet18/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n")


def _stalled_client(url: str, sent: bytes = STALLED_BODY) -> bytes:
    """A client that sends ``sent`` (by default a request's headers, promising a body) and then nothing:
    the server's answer, read until the server closes or the answer is complete."""
    host, port = url.split(":")
    with socket.create_connection((host, int(port)), timeout=STALL_S * 10) as sock:
        sock.sendall(sent)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _content_length(answer):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer


def _content_length(response: bytes) -> int:
    head = response.partition(b"\r\n\r\n")[0].lower()
    return next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.startswith(b"content-length:")), 0)


def test_a_stalled_body_is_answered_408(server):
    url, _, _ = server
    started = time.monotonic()
    answer = _stalled_client(url)
    assert answer.startswith(b"HTTP/1.1 408") and b"stalled for 1 s" in answer
    assert time.monotonic() - started < STALL_S * 5


@pytest.mark.parametrize("sent", [b"", b"POST /v2/models/resnet18/infer HTTP/1.1\r\nHost: x\r\nContent-Le"],
                         ids=["silent", "partial-headers"])
def test_a_connection_whose_headers_stall_is_answered_408_and_closed(server, sent):
    """The slowloris case: a connection that sends nothing, or part of its headers, is not held forever."""
    url, _, _ = server
    started = time.monotonic()
    answer = _stalled_client(url, sent)
    assert answer.startswith(b"HTTP/1.1 408") and b"headers did not arrive within 1 s" in answer, answer
    assert time.monotonic() - started < STALL_S * 5
    client = httpclient.InferenceServerClient(url)  # a keep-alive client between requests is not cut off
    for _ in range(2):
        assert client.is_server_ready()
        time.sleep(STALL_S * 1.5)
    assert client.is_server_ready()


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def test_soak_mixed_requests_and_slow_clients_leave_it_ready_and_flat(server):
    """A bounded soak: 400 requests from 8 threads, a quarter of them bad in assorted ways, and 8 clients
    that stall; afterwards every good answer was right, every bad one a 4xx, the server ready, and its
    memory (the test process's: the server runs in it) within 64 MB of where it started."""
    from concurrent.futures import ThreadPoolExecutor

    url, runner, _ = server
    batch = random_images(1, (3, 64, 64), MEAN, STD, seed=5)
    want = runner(batch)["logits"]
    good = _json_request([1, 3, 64, 64], data=batch.ravel().tolist())
    bad = [b"{not json", _json_request([1, 3, 32, 32]), _json_request([1, 3, 64, 64], data=["a"] * 12288),
           json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 64, 64], "datatype": "FP32",
                                   "data": [0.5] * 12288, "parameters": 5}]}).encode()]
    for body in [good] * 20:  # warm: allocator pools, session caches
        _post(url, body)
    before = _rss_mb()

    def one(index: int):
        if index % 50 == 0:
            return "stalled", _stalled_client(url)[:12]
        body = bad[index % len(bad)] if index % 4 == 3 else good
        return ("bad" if body is not good else "good"), _post(url, body)

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(one, range(400)))
    for kind, result in outcomes:
        if kind == "stalled":
            assert result == b"HTTP/1.1 408"
        elif kind == "bad":
            assert result[0] == 400, result
        else:
            status, answer = result
            assert status == 200
            np.testing.assert_allclose(np.asarray(answer["outputs"][0]["data"], np.float32).reshape(1, 1000), want,
                                       rtol=1e-4, atol=1e-4)
    assert urllib.request.urlopen(f"http://{url}/v2/health/ready").status == 200
    assert _rss_mb() - before < 64


def test_unknown_model_is_404_and_tritonclient_raises(server):
    url, _, _ = server
    request = urllib.request.Request(f"http://{url}/v2/models/nope/infer", data=_json_request([1, 3, 64, 64]),
                                     method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request)
    assert info.value.code == 404
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="unknown model"):
        httpclient.InferenceServerClient(url).infer("nope", _inputs(random_images(1, (3, 64, 64), MEAN, STD)))


def test_full_queue_answers_503_not_a_crash(exported):
    """A batcher whose runner is slow: requests over the queue bound are refused at once."""
    import asyncio

    from resnet_deploy.serving.batcher import DynamicBatcher
    from resnet_deploy.serving.limits import RequestError

    class Slow(Runner):
        batch_range = (1, 4)

        def __call__(self, batch):
            time.sleep(0.2)
            return {"logits": batch[:, :1, 0, 0]}

    async def scenario():
        batcher = DynamicBatcher(Slow(), max_batch=1, max_delay=0, queue_size=2)
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit(np.full((1, 3, 2, 2), i, np.float32))) for i in range(6)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.stop()
        return results, batcher.stats

    results, stats = asyncio.run(scenario())
    served = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, RequestError)]
    assert len(served) + len(refused) == 6 and refused and all(r.status == 503 for r in refused)
    assert [float(out["logits"][0, 0]) for out, _ in served] == sorted(float(out["logits"][0, 0]) for out, _ in served)
    assert stats.rejected_overload == len(refused) and stats.batches == len(served)


def test_serve_command_starts_on_loopback_and_answers(exported):
    import subprocess
    import sys

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "resnet_deploy.cli", "serve", str(exported.onnx_path),
                                "--port", str(port), "--max-batch", "4"], stderr=subprocess.PIPE, text=True)
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read()
            try:
                if client.is_model_ready("resnet18"):
                    break
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            assert time.monotonic() < deadline, "serve did not become ready"
            time.sleep(0.2)
        result = client.infer("resnet18", _inputs(random_images(2, (3, 64, 64), MEAN, STD)))
        assert result.as_numpy("logits").shape == (2, 1000)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert f"on http://127.0.0.1:{port}/v2" in process.stderr.read()


def test_without_the_serve_extra_only_serve_refuses(exported):
    from tests.conftest import cli_without

    assert cli_without("pydantic", "doctor").returncode == 0  # the target's base install has no pydantic
    refused = cli_without("pydantic", "serve", str(exported.onnx_path))
    assert refused.returncode == 2 and refused.stderr.strip() == (
        "error: serve needs uvicorn, starlette and pydantic: pip install 'resnet-deploy[serve]'")
    refused = cli_without("grpc", "serve", str(exported.onnx_path), "--grpc-port", str(free_port()))
    assert refused.returncode == 2 and refused.stderr.strip() == (  # before the model is loaded
        "error: --grpc-port needs grpcio and Triton's protocol messages: pip install 'resnet-deploy[grpc]'")


def test_serve_bad_options_are_one_line_errors(cli, exported):
    assert_one_line_error(cli("serve", str(exported.onnx_path), "--max-batch", "64"),
                          contains="--max-batch 64 is out of range: it must be between 1 and 8 (the artifact's profile)")
    assert_one_line_error(cli("serve", str(exported.onnx_path), "--model-name", "a/b c"), 2,
                          "--model-name 'a/b c': a model name is letters")  # served every route as 404
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        assert_one_line_error(cli("serve", str(exported.onnx_path), "--port", port), 2,
                              f"cannot listen on 127.0.0.1:{port}: Address already in use")
        assert_one_line_error(cli("serve", str(exported.onnx_path), "--port", str(free_port()), "--grpc-port", port),
                              2, f"cannot listen on 127.0.0.1:{port}: Address already in use")
    assert_one_line_error(cli("serve", str(exported.onnx_path), "--port", "8123", "--grpc-port", "8123"), 2,
                          "--grpc-port 8123 is the HTTP --port")
    for option, value in (("--workers", "0"), ("--grpc-port", "70000"), ("--workers", "100000"), ("--queue", "0"), ("--max-batch", "0"),
                          ("--max-delay-ms", "-1"), ("--max-request-mb", "0"), ("--port", "70000"),
                          ("--threads", "100000"), ("--max-request-mb", "nan"), ("--max-delay-ms", "nan"),
                          ("--max-request-mb", "inf")):
        assert_one_line_error(cli("serve", str(exported.onnx_path), option, value),
                              contains=f"{option} {value}")


class _SlowRunner(Runner):
    """A runner of 224 px images that takes 40 ms a batch and answers each image's mean: requests of ~600 KB
    whose answers say whose they are."""

    name, batch_range = "slow", (1, 4)

    def __init__(self) -> None:
        from resnet_deploy.artifacts import TensorSpec

        self.inputs = [TensorSpec("input", ["batch", 3, 224, 224], "float32")]
        self.outputs = [TensorSpec("logits", ["batch", 1], "float32")]

    def run(self, batch):
        time.sleep(0.04)
        return {"logits": batch.mean(axis=(1, 2, 3))[:, None].astype(np.float32)}


def test_the_queue_bound_holds_exactly_under_200_clients_and_readiness_answers(tmp_path):
    """--queue 4 --max-batch 4 under 200 concurrent clients sending 600 KB requests: never more than 4 wait at
    once (the bound was checked before an await, so dozens passed it together), every answer is a 200 with the
    client's own result or a 503, and readiness keeps answering while it lasts."""
    app = create_app(_SlowRunner(), model_name="slow", limits=ServeLimits(max_batch=4, max_delay_ms=2, queue_size=4))
    with serving_in_thread(app) as url:
        ready_ms, done = [], threading.Event()

        def probe() -> None:
            while not done.is_set():
                start = time.perf_counter()
                with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=30) as answer:
                    assert answer.status == 200
                ready_ms.append(1e3 * (time.perf_counter() - start))
                time.sleep(0.05)

        def ask(n: int):
            client = httpclient.InferenceServerClient(url, network_timeout=120)
            batch = np.full((1, 3, 224, 224), n, np.float32)
            try:
                got = client.infer("slow", _inputs(batch)).as_numpy("logits")
            except InferenceServerException as exc:
                return exc.status()
            finally:
                client.close()  # in its own thread: gevent's hub is per thread
            return "200" if float(got[0, 0]) == n else f"request {n} got {float(got[0, 0])}"

        prober = threading.Thread(target=probe)
        prober.start()
        with ThreadPoolExecutor(200) as pool:
            answers = list(pool.map(ask, range(200)))
        done.set()
        prober.join(timeout=60)
    stats = app.state.batcher.stats
    assert set(answers) <= {"200", "503"}, [a for a in answers if a not in ("200", "503")][:5]
    assert answers.count("200") >= 4 and answers.count("503") > 0
    assert stats.deepest_queue == 4 and stats.rejected_overload == answers.count("503")
    assert ready_ms and max(ready_ms) < 1000, f"readiness took up to {max(ready_ms):.0f} ms under load"


def test_an_overloaded_server_answers_503_before_the_body_is_read():
    """With the one place in the queue held by a request whose body stalls, the next request gets its 503 from
    its headers alone: it has sent none of the 600 KB its Content-Length announces."""
    app = create_app(_SlowRunner(), model_name="slow", limits=ServeLimits(max_batch=4, queue_size=1,
                                                                          read_timeout_s=20))
    head = (b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 602112\r\n\r\n")
    with serving_in_thread(app) as url:
        host, port = url.split(":")
        with socket.create_connection((host, int(port)), timeout=10) as holder:
            holder.sendall(head + b"{")  # admitted, its body stalls: the queue is full
            time.sleep(0.3)
            with socket.create_connection((host, int(port)), timeout=10) as refused:
                refused.sendall(head)  # no body at all
                answer = b""
                while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < 57:
                    chunk = refused.recv(4096)
                    assert chunk, answer
                    answer += chunk
                answer = answer.decode()
    assert answer.startswith("HTTP/1.1 503") and "server overloaded: 1 requests already waiting" in answer


def test_triton_serves_the_bytes_verified_even_if_the_file_changes_during_the_copy(exported, tmp_path, monkeypatch):
    """The record's sha256 is the manifest's, and the copy is checked against it before anything in the
    repository changes: a file changed between the check and the copy leaves the repository as it was (with
    --force too, whose removal of a model it would replace now comes after the copy)."""
    import shutil

    from resnet_deploy.serving import triton

    repo = tmp_path / "repo"
    written = write_model_repository(exported.paths["fp16"], repo, TritonOptions(kind="cpu", model_name="m"))
    before = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    copy = shutil.copyfile
    monkeypatch.setattr(triton.shutil, "copyfile", lambda source, target: copy(exported.paths["fp16"], target))
    with pytest.raises(DeployError, match="resnet18.onnx changed since it was checked against its manifest"):
        write_model_repository(exported.onnx_path, repo, TritonOptions(kind="cpu", model_name="m"), force=True)
    assert {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before
    monkeypatch.undo()
    again = write_model_repository(exported.onnx_path, repo, TritonOptions(kind="cpu", model_name="other"))
    record = json.loads((again.folder / "resnet_deploy.json").read_text())
    assert record["versions"]["1"]["sha256"] == exported.manifest.artifact("fp32").sha256 and written.version == 1


def test_serve_from_python_is_what_the_cli_serves(cli, exported, monkeypatch):
    """`resnet-deploy serve` is one call of :func:`resnet_deploy.serve`: the same runner (file, backend,
    precision, threads), the same limits (the default batch resolved against the profile) and model name as
    :func:`~resnet_deploy.serving.server.prepare` gives a Python caller; the runner it loaded is closed after."""
    from resnet_deploy.serving import server

    def runner_facts(service):
        return {k: v for k, v in service.runner.describe().items() if k != "graph_cache"}  # written, then a hit

    listened = []
    monkeypatch.setattr(server.Service, "run", lambda service, host, port, grpc_port: listened.append(
        (service, runner_facts(service), host, (port, grpc_port))))
    port, grpc_port = free_port(), free_port()
    result = cli("serve", str(exported.onnx_path), "--port", str(port), "--queue", "16", "--grpc-port", str(grpc_port))
    assert result.exit_code == 0, result.output
    (served, facts, host, bound), = listened
    assert (host, bound) == ("127.0.0.1", (port, grpc_port))
    assert f"on http://127.0.0.1:{port}/v2 and gRPC 127.0.0.1:{grpc_port}" in result.stderr
    assert served.runner.session is None  # released when the server stopped
    from_python = server.prepare(exported.onnx_path, limits=ServeLimits(queue_size=16))
    assert runner_facts(from_python) == facts
    assert from_python.limits == served.limits and from_python.model_name == served.model_name == "resnet18"
    assert served.limits.max_batch == min(exported.manifest.batch.max, 32) == 8
    from_python.runner.close()


def test_prepare_takes_a_bare_runner_and_releases_a_runner_it_loaded_when_a_limit_does_not_fit(exported, monkeypatch):
    from resnet_deploy.backends.onnxrt import OnnxRuntimeRunner
    from resnet_deploy.errors import ArgumentError
    from resnet_deploy.serving import server
    from resnet_deploy.target import runtime as target_runtime

    bare = OnnxRuntimeRunner(str(exported.onnx_path))  # not from runtime.load: no artifact, no manifest
    service = server.prepare(bare)
    assert service.model_name == "model" and service.limits.max_batch == 32 and bare.session is not None
    loaded = []
    real_load = target_runtime.load
    monkeypatch.setattr(target_runtime, "load", lambda *a, **k: loaded.append(real_load(*a, **k)) or loaded[-1])
    with pytest.raises(ArgumentError, match="--max-batch"):
        server.prepare(exported.onnx_path, limits=ServeLimits(max_batch=1000))
    assert loaded and loaded[0].session is None  # closed, not left holding its session


def test_classification_extension_answers_the_top_classes_as_triton_does(server):
    """tritonclient's ``class_count=k`` gets BYTES ``"score:index:label"`` rows, highest first, equal to the logits'
    top k (it was ignored: FP32 logits came back), over binary and JSON outputs alike."""
    from resnet_deploy.data import imagenet_classes

    url, runner, _ = server
    client = httpclient.InferenceServerClient(url)
    batch = random_images(2, (3, 64, 64), MEAN, STD, seed=5)
    logits = runner(batch)["logits"]
    names = imagenet_classes()
    for binary in (True, False):
        asked = httpclient.InferRequestedOutput("logits", binary_data=binary, class_count=3)
        got = client.infer("resnet18", _inputs(batch), outputs=[asked]).as_numpy("logits")
        assert got.shape == (2, 3)
        for row, answer in zip(logits, got):
            expected = np.argsort(-row, kind="stable")[:3]
            parsed = [(entry.decode() if isinstance(entry, bytes) else entry).split(":") for entry in answer]
            assert [int(index) for _, index, _ in parsed] == list(expected)
            assert [label for _, _, label in parsed] == [names[i] for i in expected]
            np.testing.assert_allclose([float(score) for score, _, _ in parsed], row[expected], rtol=1e-5, atol=1e-5)
    assert "classification" in client.get_server_metadata()["extensions"]


@pytest.mark.parametrize("body, message", [
    ({"inputs": [{"name": "input", "shape": [1, 3, 64, 64], "datatype": "FP32",
                  "parameters": {"shared_memory_region": "r"}}]}, "input 'input': parameter 'shared_memory_region'"),
    ({"inputs": [{"name": "input", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": [0.0] * 12288}],
      "outputs": [{"name": "logits", "parameters": {"shared_memory_byte_size": 4}}]},
     "output 'logits': parameter 'shared_memory_byte_size' is not supported"),
])
def test_what_serve_cannot_do_is_refused_by_name_not_ignored(server, body, message):
    url, _, _ = server
    status, answer = _post(url, json.dumps(body).encode())
    assert status == 400 and message in answer["error"], answer


def test_unknown_routes_and_methods_answer_the_protocols_json_error(server):
    """A path serve has no endpoint for is a JSON 404 (tritonclient read the plain-text one as 'Parse error at
    offset 1'); a wrong method a JSON 405."""
    url, _, _ = server
    for method, path, status in (("GET", "/v2/models/resnet18/stats/nothing", 404), ("GET", "/nowhere", 404),
                                 ("DELETE", "/v2/models/resnet18/infer", 405)):
        request = urllib.request.Request(f"http://{url}{path}", method=method)
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request)
        assert caught.value.code == status and caught.value.headers["content-type"] == "application/json"
        assert path in json.loads(caught.value.read())["error"]


def test_model_config_is_tritons_json_form_of_what_serve_runs(server):
    """perf_analyzer starts by reading ``/v2/models/NAME/config`` (a 404 stopped it): Triton's JSON model config
    of what serve runs (the batcher's max batch and delay, its workers), which Triton's own ModelConfig parses."""
    from google.protobuf import json_format

    url, _, _ = server
    client = httpclient.InferenceServerClient(url)
    config = client.get_model_config("resnet18")
    assert config == client.get_model_config("resnet18", model_version="1")
    assert (config["name"], config["platform"], config["max_batch_size"]) == ("resnet18", "onnxruntime_onnx", 8)
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": [3, 64, 64]}]
    assert config["output"] == [{"name": "logits", "data_type": "TYPE_FP32", "label_filename": "imagenet_labels.txt",
                                 "dims": [1000]}]
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 100_000,  # --max-delay-ms 100
                                          "default_queue_policy": {"max_queue_size": 64}}  # --queue 64
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_CPU", "name": "resnet18_0"}]
    parsed = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    assert list(parsed.input[0].dims) == [3, 64, 64] and parsed.max_batch_size == 8
    with pytest.raises(InferenceServerException, match="version 2"):
        client.get_model_config("resnet18", model_version="2")


def _stats(client, **kwargs):
    return client.get_inference_statistics(**kwargs)["model_stats"][0]


def test_statistics_count_what_was_sent(server):
    """Triton's statistics from the batcher's own counters: three requests of two images and one refused after
    admission move success, fail, queue and the counts by exactly that; every runner call is in a batch size's
    row. Without a model name tritonclient asks ``/v2/models/stats`` (it was 'unknown model stats')."""
    url, _, _ = server
    client = httpclient.InferenceServerClient(url)
    before = _stats(client)
    assert before == _stats(client, model_name="resnet18")
    for seed in range(3):
        client.infer("resnet18", _inputs(random_images(2, (3, 64, 64), MEAN, STD, seed=seed)))
    assert _post(url, _json_request([1, 3, 64, 64], data=[1.0]))[0] == 400
    after = _stats(client, model_name="resnet18", model_version="1")
    moved = {key: after["inference_stats"][key]["count"] - before["inference_stats"][key]["count"]
             for key in ("success", "fail", "queue", "compute_infer")}
    assert moved == {"success": 3, "fail": 1, "queue": 3, "compute_infer": 3}
    assert after["inference_count"] - before["inference_count"] == 6
    assert 1 <= after["execution_count"] - before["execution_count"] <= 3
    assert sum(row["compute_infer"]["count"] for row in after["batch_stats"]) == after["execution_count"]
    assert all(row["batch_size"] >= 1 and row["compute_infer"]["ns"] > 0 for row in after["batch_stats"])
    stats = after["inference_stats"]
    assert stats["success"]["ns"] > stats["compute_infer"]["ns"] // stats["compute_infer"]["count"] > 0
    assert after["last_inference"] >= before["last_inference"] and after["last_inference"] > 1.6e12  # ms since 1970
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_inference_statistics("resnet50")


def test_repository_index_lists_the_served_model(server):
    url, _, _ = server
    client = httpclient.InferenceServerClient(url)
    entry = {"name": "resnet18", "version": "1", "state": "READY"}
    assert client.get_model_repository_index() == [entry]
    request = urllib.request.Request(f"http://{url}/v2/repository/index", data=b'{"ready": true}', method="POST")
    with urllib.request.urlopen(request) as response:
        assert json.loads(response.read()) == [entry]
    for body, status in ((b"[1]", 400), (b'{"ready": "yes"}', 400), (b"[" * 50_000, 400), (b" " * (65 << 10), 413)):
        request = urllib.request.Request(f"http://{url}/v2/repository/index", data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as caught:  # a flag's body: read within 64 KiB, never a 500
            urllib.request.urlopen(request)
        assert caught.value.code == status, body[:20]
        assert ("JSON object" if status == 400 else "limit") in json.loads(caught.value.read())["error"]


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_compressed_requests_and_answers_as_tritonclient_sends_them(server, coding):
    url, runner, _ = server
    client = httpclient.InferenceServerClient(url)
    batch = random_images(2, (3, 64, 64), MEAN, STD, seed=11)
    want = runner(batch)["logits"]
    for binary in (True, False):
        got = client.infer("resnet18", _inputs(batch, binary), request_compression_algorithm=coding,
                           response_compression_algorithm=coding).as_numpy("logits")
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    body = _json_request([1, 3, 64, 64])
    # gzip: two members, as concatenated gzip files are (RFC 1952), read as one body
    packed = gzip.compress(body[:1000]) + gzip.compress(body[1000:]) if coding == "gzip" else zlib.compress(body)
    request = urllib.request.Request(f"http://{url}/v2/models/resnet18/infer", data=packed, method="POST",
                                     headers={"Content-Encoding": coding, "Accept-Encoding": f"br;q=1, {coding}"})
    with urllib.request.urlopen(request) as response:
        assert response.headers["content-encoding"] == coding and response.headers["vary"] == "accept-encoding"
        answer = json.loads(gzip.decompress(response.read()) if coding == "gzip" else zlib.decompress(response.read()))
    assert answer["outputs"][0]["shape"] == [1, 1000]


@pytest.mark.parametrize("packed, coding, status, message", [
    (gzip.compress(b" " * (65 << 20)), "gzip", 413, "decompresses to over the"),  # within the limit as sent
    (gzip.compress(_json_request([1, 3, 64, 64]))[:-40], "gzip", 400, "truncated"),
    (b"not deflate at all", "deflate", 400, "does not decompress"),
    (gzip.compress(_json_request([1, 3, 64, 64])) + b"GARBAGE", "gzip", 400, "7 bytes follow the gzip request"),
    (zlib.compress(_json_request([1, 3, 64, 64])) + gzip.compress(b"{}"), "deflate", 400, "follow the deflate"),
    (_json_request([1, 3, 64, 64]), "br", 415, "'br' is not supported"),
])
def test_a_compressed_body_is_bounded_after_decompression(server, packed, coding, status, message):
    url, _, _ = server
    code, answer = _post(url, packed, {"Content-Encoding": coding})
    assert code == status and message in answer["error"], answer
