"""What runs is what was asked for, whoever else is calling: every CPU runner from many threads, each thread's
answer checked against its own image; no call changes the caller's arrays or an earlier result; and the server
with two workers on each backend answers each request with its own logits."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnet_deploy.target import runtime
from resnet_deploy.backends import detect
from resnet_deploy.data import random_images
from resnet_deploy.environment import bf16_problem
from resnet_deploy.errors import DeployError
from resnet_deploy.parity.metrics import compare_arrays
from tests.conftest import serving_in_thread

httpclient = pytest.importorskip("tritonclient.http")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SHAPE = (3, 64, 64)
IMAGES = 12  # distinct images, each sent by several threads

# Every CPU configuration a user can load: (backend, its own options), the reason it cannot run here or None.
OPENVINO = None if detect.openvino().available else detect.openvino().reason
CONFIGURATIONS = [
    pytest.param("ort", {}, id="ort"),
    pytest.param("torch", {}, id="torch"),
    pytest.param("openvino", {}, id="openvino", marks=pytest.mark.skipif(bool(OPENVINO), reason=str(OPENVINO))),
    pytest.param("openvino", {"throughput": True}, id="openvino-throughput",
                 marks=pytest.mark.skipif(bool(OPENVINO), reason=str(OPENVINO))),
    pytest.param("openvino", {"bf16": True}, id="openvino-bf16",
                 marks=pytest.mark.skipif(bool(OPENVINO or bf16_problem()), reason=str(OPENVINO or bf16_problem()))),
]


@pytest.fixture(scope="module")
def images():
    """Distinct images, and their classes under the small export differ enough that a swap shows."""
    return random_images(IMAGES, SHAPE, MEAN, STD, seed=41)


def _own(answer: np.ndarray, expected: np.ndarray, index: int) -> bool:
    """``answer`` is image ``index``'s: within float32 reordering of its own logits, and nearer to them than to
    any other image's."""
    distances = np.abs(expected - answer[None]).max(axis=(1, 2))
    return compare_arrays(expected[index], answer).rel_to_scale < 1e-3 and int(distances.argmin()) == index


@pytest.mark.parametrize("backend, own", CONFIGURATIONS)
def test_every_runner_answers_each_thread_with_its_own_images(small_export, images, backend, own):
    """16 threads, each calling with its own images (batches of 1, 2 and 3, so the split throughput path runs
    too): every answer is its own images', never another thread's, and no call fails."""
    with runtime.load(small_export.onnx_path, backend=backend, **own) as runner:
        expected = np.stack([runner(images[i:i + 1])["logits"] for i in range(IMAGES)])  # (IMAGES, 1, 1000)
        start = threading.Barrier(16)

        def call(worker: int) -> list[str]:
            start.wait()
            wrong = []
            for step in range(6):
                size = 1 + (worker + step) % 3
                picks = [(worker * 5 + step * 7 + k) % IMAGES for k in range(size)]
                got = runner(np.ascontiguousarray(images[picks]))["logits"]
                wrong += [f"thread {worker} step {step}: image {i} got another answer"
                          for row, i in zip(got, picks) if not _own(row[None], expected, i)]
            return wrong

        with ThreadPoolExecutor(16) as pool:
            problems = [p for found in pool.map(call, range(16)) for p in found]
    assert not problems, problems[:5]


@pytest.mark.parametrize("backend, own", CONFIGURATIONS)
def test_no_call_changes_the_callers_arrays_or_an_earlier_result(small_export, backend, own):
    """A property over call sequences: after any sequence of calls (batch sizes within the profile), every
    input array is as the caller wrote it and every earlier answer is as it was returned."""
    with runtime.load(small_export.onnx_path, backend=backend, **own) as runner:

        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(st.lists(st.integers(1, 8), min_size=2, max_size=5), st.integers(0, 2**16))
        def sequence(sizes: list[int], seed: int) -> None:
            inputs = [random_images(size, SHAPE, MEAN, STD, seed=seed + n) for n, size in enumerate(sizes)]
            kept_inputs = [batch.copy() for batch in inputs]
            answers = [runner(batch)["logits"] for batch in inputs]
            kept_answers = [answer.copy() for answer in answers]
            runner(random_images(sizes[0], SHAPE, MEAN, STD, seed=seed + 99))  # one more call after them all
            for batch, kept in zip(inputs, kept_inputs):
                np.testing.assert_array_equal(batch, kept)
            for answer, kept in zip(answers, kept_answers):
                np.testing.assert_array_equal(answer, kept)

        sequence()


def test_a_runner_that_takes_one_call_at_a_time_says_so_and_is_serialised(small_export):
    """A runner that cannot take calls at once (TensorRT's: one stream, one set of buffers) is called one at
    a time by its own lock, and the server refuses workers that would only queue behind it."""
    from resnet_deploy.serving.limits import ServeLimits

    with runtime.load(small_export.onnx_path) as runner:
        runner.concurrent, runner.serial_reason = False, "one stream (a test's stand-in)"
        inside, most = [0], [0]
        run = runner.run

        def counted(batch):
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            time.sleep(0.002)
            try:
                return run(batch)
            finally:
                inside[0] -= 1

        runner.run = counted
        batch = runner.example_batch(1)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: runner(batch), range(32)))
        assert most[0] == 1
        assert runner.describe()["concurrent"] is False and runner.describe()["serial_reason"]
        with pytest.raises(DeployError, match=r"--workers 2: onnxruntime-cpu cannot take calls at once \(one "
                                              r"stream \(a test's stand-in\)\): give --workers 1"):
            ServeLimits(workers=2).check(runner)


@pytest.mark.parametrize("backend, own", [c for c in CONFIGURATIONS if c.id in ("ort", "openvino",
                                                                                 "openvino-throughput")])
def test_serve_with_two_workers_answers_each_request_with_its_own_logits(small_export, images, backend, own):
    """48 concurrent single-image requests, 3 rounds, to a server with two workers (two batches in flight on
    one runner): every answer is its own image's and every request succeeds."""
    from resnet_deploy.serving.app import create_app
    from resnet_deploy.serving.limits import ServeLimits

    with runtime.load(small_export.onnx_path, backend=backend, **own) as runner:
        expected = np.stack([runner(images[i:i + 1])["logits"] for i in range(IMAGES)])
        app = create_app(runner, model_name="resnet18",
                         limits=ServeLimits(max_batch=8, max_delay_ms=5, queue_size=256, workers=2))
        with serving_in_thread(app) as url:

            def ask(n: int) -> str | None:
                index = n % IMAGES
                client = httpclient.InferenceServerClient(url)
                tensor = httpclient.InferInput("input", [1, *SHAPE], "FP32")
                tensor.set_data_from_numpy(np.ascontiguousarray(images[index:index + 1]))
                try:
                    got = client.infer("resnet18", [tensor]).as_numpy("logits")
                except Exception as exc:  # noqa: BLE001 - a failed request is a finding, named
                    return f"request {n}: {exc}"
                finally:
                    client.close()  # in its own thread: gevent's hub is per thread
                return None if _own(got, expected, index) else f"request {n}: another image's logits"

            with ThreadPoolExecutor(48) as pool:
                problems = [p for _ in range(3) for p in pool.map(ask, range(48)) if p]
    assert not problems, problems[:5]
