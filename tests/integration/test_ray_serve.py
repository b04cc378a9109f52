"""`serve --ray`: the OIP app as a Ray Serve deployment on the session's local Ray: ready, answering what `serve`
answers for the same file and threads, and autoscaling from 1 to 2 replicas under a bounded load and back.
The options Ray Serve cannot take together are refused before Ray starts."""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from resnet_deploy.data import random_images
from resnet_deploy.errors import ArgumentError
from resnet_deploy.serving.limits import ServeLimits
from resnet_deploy.serving.ray_serve import RayServeOptions
from tests.conftest import assert_one_line_error, free_port, serving_in_thread

httpclient = pytest.importorskip("tritonclient.http")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LIMITS = ServeLimits(max_batch=4, max_delay_ms=2)
READY_S, SCALE_S = 180, 90  # bounds: Ray Serve's start on a busy 2-core machine, and each scaling step


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def ray_service(local_ray, small_export):
    """``serve_on_ray`` in a thread on the shared Ray: 1 to 2 replicas of 1 CPU, scaling after 1 s over one
    request in flight per replica (averaged over 2 s), back after 2 s under it. Yields (port, the lines it
    announced)."""
    pytest.importorskip("ray.serve", reason="the ray extra's Ray Serve runs serve --ray")
    from resnet_deploy.serving.ray_serve import serve_on_ray

    port, stop, lines, failures = free_port(), threading.Event(), [], []
    options = RayServeOptions(min_replicas=1, max_replicas=2, target_ongoing=1, upscale_delay_s=1,
                              downscale_delay_s=2, look_back_s=2)

    def run() -> None:
        try:
            serve_on_ray(str(small_export.onnx_path), options, port=port, limits=LIMITS, announce=lines.append,
                         stop=stop)
        except BaseException as exc:  # noqa: BLE001  (reported by the test that waits for it)
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    while not (lines and _ready(port)):
        assert not failures, failures
        assert time.monotonic() - started < READY_S, "the Ray Serve deployment was not ready in time"
        time.sleep(0.5)
    print(f"Ray Serve deployment ready in {time.monotonic() - started:.1f} s")
    yield port, lines
    stop.set()
    thread.join(timeout=60)
    assert not thread.is_alive() and not failures, failures


def _replicas(name: str = "resnet18") -> int:
    from ray import serve

    deployment = serve.status().applications[name].deployments[name]
    return deployment.replica_states.get("RUNNING", 0)


def _logits(address: str, batch: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(address)
    tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    return client.infer("resnet18", [tensor]).as_numpy("logits")


def test_answers_equal_serves(ray_service, small_export):
    from resnet_deploy.serving.server import prepare

    port, lines = ray_service
    assert f"http://127.0.0.1:{port}/v2/models/resnet18" in lines[-1] and "1 to 2 replicas" in lines[-1]
    batch = random_images(3, (3, 64, 64), MEAN, STD, seed=5)
    on_ray = _logits(f"127.0.0.1:{port}", batch)
    service = prepare(small_export.onnx_path, limits=LIMITS, threads=1)  # a replica's threads: its 1 CPU
    try:
        with serving_in_thread(service.app) as url:
            local = _logits(url, batch)
    finally:
        service.runner.close()
    assert on_ray.shape == (3, 1000)
    assert np.array_equal(on_ray, local), np.abs(on_ray - local).max()


def test_scales_from_one_to_two_replicas_and_back(ray_service):
    port, _ = ray_service
    assert _replicas() == 1
    batch = random_images(4, (3, 64, 64), MEAN, STD, seed=6)
    done = threading.Event()

    def client() -> int:
        calls = 0
        while not done.is_set() and calls < 2000:  # bounded: the load ends with the scaling, or at the bound
            _logits(f"127.0.0.1:{port}", batch)
            calls += 1
        return calls

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        calls = [pool.submit(client) for _ in range(8)]
        try:
            while _replicas() < 2:
                assert time.monotonic() - started < SCALE_S, "no second replica under 8 clients"
                time.sleep(0.25)
            scaled_up = time.monotonic() - started
        finally:
            done.set()
        assert sum(c.result() for c in calls) > 0
    idle = time.monotonic()
    while _replicas() > 1:
        assert time.monotonic() - idle < SCALE_S, "the second replica stayed after the load ended"
        time.sleep(0.25)
    print(f"1 -> 2 replicas in {scaled_up:.1f} s under 8 clients; back to 1 in {time.monotonic() - idle:.1f} s")
    assert _ready(port)


def test_options_ray_serve_cannot_take_are_refused(cli, small_export):
    for options, reason in ((RayServeOptions(replicas=2, max_replicas=3), "one or the other"),
                            (RayServeOptions(min_replicas=2), "needs --max-replicas"),
                            (RayServeOptions(min_replicas=3, max_replicas=2), "--max-replicas"),
                            (RayServeOptions(replica_cpus=0), "--replica-cpus"),
                            (RayServeOptions(max_replicas=2, target_ongoing=float("nan")), "--target-ongoing"),
                            (RayServeOptions(replicas=2, look_back_s=5), "tune autoscaling"),
                            (RayServeOptions(upscale_delay_s=float("inf")), "--upscale-delay-s")):
        with pytest.raises(ArgumentError, match=reason):
            options.check()
    scaling = RayServeOptions(min_replicas=1, max_replicas=3).check().deployment_options(
        ServeLimits(max_batch=8, queue_size=64))
    assert scaling["autoscaling_config"]["target_ongoing_requests"] == 8  # a replica fills its batches first
    assert scaling["max_ongoing_requests"] == 64 + 8 and "num_replicas" not in scaling
    fixed = RayServeOptions(replica_cpus=2).check().deployment_options(ServeLimits(max_batch=8), gpu=True)
    assert fixed["num_replicas"] == 1 and fixed["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1}
    assert RayServeOptions(replica_cpus=2.5).threads == 2  # whole CPUs
    with pytest.raises(ArgumentError, match="never scale up"):
        RayServeOptions(max_replicas=2, target_ongoing=500).check().deployment_options(ServeLimits(max_batch=8))
    artifact = str(small_export.onnx_path)
    def overdue(*_):
        raise TimeoutError("a refusal that regressed served until stopped")

    previous = signal.signal(signal.SIGALRM, overdue)
    signal.alarm(120)
    try:
        assert_one_line_error(cli("serve", artifact, "--replicas", "2"), contains="give --ray too")
        assert_one_line_error(cli("serve", artifact, "--ray", "--grpc-port", "9001"), contains="--grpc-port")
        assert_one_line_error(cli("serve", artifact, "--ray", "--threads", "2"), contains="--replica-cpus")
        assert_one_line_error(cli("serve", artifact, "--ray", "--replicas", "0"), contains="--replicas")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
