"""The runner interface: input checks, warm-up, metadata and lifecycle, on a counting stand-in backend."""

from __future__ import annotations

import numpy as np
import pytest

from resnet_deploy.artifacts import TensorSpec
from resnet_deploy.backends.base import Runner
from resnet_deploy.target.bench import bench, latency_stats
from resnet_deploy.errors import DeployError


class CountingRunner(Runner):
    """Returns the per-image channel means; counts calls and what it was given."""

    name = "counting"

    def __init__(self, batch_range=(1, 4)):
        self.inputs = [TensorSpec("input", ["batch", 3, 8, 8])]
        self.outputs = [TensorSpec("logits", ["batch", 3])]
        self.batch_range = batch_range
        self.calls, self.closed = [], False

    def run(self, batch):
        self.calls.append(batch.shape[0])
        return {"logits": batch.mean(axis=(2, 3))}

    def close(self):
        self.closed = True


def test_a_valid_batch_runs():
    runner = CountingRunner()
    batch = np.ones((2, 3, 8, 8), np.float32)
    assert runner(batch)["logits"].shape == (2, 3)
    assert runner.input_name == "input" and runner.output_names == ["logits"]


@pytest.mark.parametrize("batch, message", [
    (np.ones((2, 3, 8, 8), np.float64), "input dtype is float64"),
    (np.ones((2, 3, 8, 8), np.uint8), "takes float32"),
    (np.ones((2, 3, 9, 8), np.float32), "does not match the model's"),
    (np.ones((3, 8, 8), np.float32), "does not match the model's"),
    (np.ones((5, 3, 8, 8), np.float32), "batch size 5 is outside the artifact's profile (1 to 4)"),
    ([[0.0]], "takes a numpy array, not list"),
])
def test_bad_input_is_a_clear_error(batch, message):
    runner = CountingRunner()
    with pytest.raises(DeployError, match=None) as info:
        runner(batch)
    assert message in str(info.value)
    assert runner.calls == []


def test_non_contiguous_input_is_made_contiguous():
    runner = CountingRunner()
    batch = np.ones((2, 8, 8, 3), np.float32).transpose(0, 3, 1, 2)
    assert not batch.flags.c_contiguous
    assert runner.check_input(batch).flags.c_contiguous


def test_warmup_runs_the_smallest_profile_batch_and_the_context_closes():
    with CountingRunner(batch_range=(2, 4)) as runner:
        runner.warmup(iterations=3)
        assert runner.calls == [2, 2, 2]
        runner.warmup(4, iterations=1)
        assert runner.calls[-1] == 4
        description = runner.describe()
    assert runner.closed
    assert description["batch_range"] == [2, 4] and description["inputs"][0]["shape"] == ["batch", 3, 8, 8]


def test_latency_stats_are_ordered_milliseconds():
    stats = latency_stats([0.001, 0.002, 0.003, 0.004, 0.100])
    assert stats["min"] == pytest.approx(1.0) and stats["p50"] == pytest.approx(3.0)
    assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= 100.0
    assert stats["mean"] == pytest.approx(22.0)


def test_bench_times_exactly_the_calls_asked_for():
    first, second = CountingRunner(), CountingRunner()
    results = bench([("a", first), ("b", second)], [1, 4], iterations=7, warmup=2)
    assert [(r.label, r.batch, r.iterations) for r in results] == [("a", 1, 7), ("b", 1, 7), ("a", 4, 7), ("b", 4, 7)]
    # per batch size: one first call, the warm-up, then 7 timed calls and one untimed call per block
    timed_and_untimed = first.calls.count(1) - 1 - 2
    assert 7 < timed_and_untimed <= 14
    assert results[0].ratio == 1.0 and results[2].ratio == 1.0
    for r in results:
        assert r.images_per_s == pytest.approx(r.batch / r.latency_ms["p50"] * 1e3)
        assert r.device_ms is None  # no CUDA stream, no device time claimed


def test_bench_refuses_a_batch_outside_a_profile():
    with pytest.raises(DeployError, match="outside b's profile"):
        bench([("a", CountingRunner((1, 8))), ("b", CountingRunner((1, 4)))], [8], iterations=1)
