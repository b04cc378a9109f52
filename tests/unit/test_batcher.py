"""The server's dynamic batcher on a stand-in runner: no request hangs, whatever a batch meets."""

from __future__ import annotations

import asyncio

import numpy as np

from resnet_deploy.backends.base import Runner
from resnet_deploy.serving.batcher import DynamicBatcher
from resnet_deploy.serving.limits import RequestError


class SumRunner(Runner):
    """Logits = each image's channel sums; takes any H/W, like a --dynamic-hw artifact."""

    name = "sum"
    batch_range = (1, 8)

    def __init__(self, fail_on: float | None = None):
        self.fail_on, self.batches = fail_on, []

    def __call__(self, batch):
        self.batches.append(batch.shape)
        if self.fail_on is not None and (batch == self.fail_on).any():
            raise RuntimeError("kernel failed")
        return {"logits": batch.sum(axis=(2, 3))}

    def run_padded(self, batch):
        return self(batch)


def _serve(runner, requests, **options):
    """Submit ``requests`` at once to a batcher; each answer or error, bounded in time (a hang fails)."""

    async def scenario():
        batcher = DynamicBatcher(runner, **{"max_batch": 8, "max_delay": 0.05, "queue_size": 64, **options})
        await batcher.start()
        try:
            tasks = [asyncio.create_task(batcher.submit(batch)) for batch in requests]
            return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        finally:
            await batcher.stop()

    return asyncio.run(scenario())


def test_a_lone_request_is_answered_where_asyncio_has_its_own_timeout_error(monkeypatch):
    """Python 3.10's asyncio.wait_for raises asyncio.TimeoutError, not the built-in TimeoutError: the
    batcher waiting for a second request must catch that one, or its worker dies and every request hangs."""

    class LegacyTimeoutError(Exception):
        pass

    wait_for, timeouts = asyncio.wait_for, (TimeoutError, asyncio.TimeoutError)  # the same class from 3.11 on

    async def legacy_wait_for(awaitable, timeout):
        try:
            return await wait_for(awaitable, timeout)
        except timeouts:
            raise LegacyTimeoutError from None

    monkeypatch.setattr(asyncio, "TimeoutError", LegacyTimeoutError)
    monkeypatch.setattr(asyncio, "wait_for", legacy_wait_for)
    batch = np.ones((1, 3, 2, 2), np.float32)
    (outputs, size), = _serve(SumRunner(), [batch])
    np.testing.assert_array_equal(outputs["logits"], [[4, 4, 4]])
    assert size == 1


def test_images_of_other_sizes_run_in_their_own_batches():
    runner = SumRunner()
    requests = [np.ones((1, 3, 4, 4), np.float32), np.ones((1, 3, 8, 2), np.float32), np.ones((2, 3, 4, 4), np.float32)]
    answers = _serve(runner, requests)
    assert [a[0]["logits"][0, 0] for a in answers] == [16, 16, 16]
    assert all(shape[1:] in ((3, 4, 4), (3, 8, 2)) for shape in runner.batches)


def test_a_failing_batch_answers_its_requests_and_the_worker_goes_on():
    runner = SumRunner(fail_on=7.0)
    bad, good = np.full((1, 3, 2, 2), 7.0, np.float32), np.ones((1, 3, 2, 2), np.float32)
    first = _serve(runner, [bad])
    assert isinstance(first[0], RequestError) and first[0].status == 500 and "kernel failed" in str(first[0])
    answers = _serve(runner, [bad, good], max_batch=1)  # one worker: the good request comes after the failure
    assert isinstance(answers[0], RequestError)
    np.testing.assert_array_equal(answers[1][0]["logits"], [[4, 4, 4]])
