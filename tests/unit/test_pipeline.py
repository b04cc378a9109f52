"""The overlapped lanes of predict and batch (target/pipeline.py), Ray's actor pool sizing, and the batch job's
inputs, records and rows, with stand-in runners and files: order, errors, failures, early stops, bounds."""

from __future__ import annotations

import itertools
import os
import random
import threading
import time

import numpy as np
import pytest

from resnet_deploy.artifacts import FEATURES, LOGITS, TensorSpec
from resnet_deploy.backends.base import Runner
from resnet_deploy.errors import DeployError
from resnet_deploy.target.pipeline import Item, LanePlan, lane_plan, run_pipelined


class EchoRunner(Runner):
    """Logits = the input's first value and its square: each row's output says which input it came from."""

    name = "echo"

    def __init__(self, fail_on: float | None = None) -> None:
        self.inputs = [TensorSpec("input", ["batch", 2])]
        self.outputs = [TensorSpec(LOGITS, ["batch", 2])]
        self.batch_range = (1, 8)
        self.fail_on = fail_on
        self.calls = 0

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.fail_on is not None and self.fail_on in batch[:, 0]:
            raise RuntimeError("the runtime failed")
        time.sleep(random.random() * 0.003)
        return {LOGITS: np.stack([batch[:, 0], batch[:, 0] ** 2], axis=1)}


def decode(source: str) -> np.ndarray:
    if source.startswith("bad"):
        raise DeployError(f"cannot read {source} as an image")
    time.sleep(random.random() * 0.002)
    return np.array([float(source), 0.0], np.float32)


def numbered(count: int, bad: set[int] = frozenset()) -> list[tuple[int, str]]:
    return [(i, f"bad{i}" if i in bad else str(i)) for i in range(count)]


@pytest.mark.parametrize("lanes", [1, 3])
def test_every_item_once_in_order_with_errors_as_items(lanes):
    items = list(itertools.chain.from_iterable(
        run_pipelined(EchoRunner(), numbered(103, {0, 50, 51}), decode, plan=LanePlan(lanes, 1), batch_size=4)))
    assert [item.position for item in items] == list(range(103))
    for item in items:
        if item.position in {0, 50, 51}:
            assert item.outputs is None and "cannot read bad" in item.error
        else:
            assert item.error is None and item.outputs[LOGITS][0] == float(item.source)


def test_a_chunk_of_only_errors_does_not_call_the_runner():
    runner = EchoRunner()
    items = [i for chunk in run_pipelined(runner, numbered(4, {0, 1, 2, 3}), decode, plan=LanePlan(2, 1),
                                          batch_size=4) for i in chunk]
    assert runner.calls == 0 and all(i.error for i in items)


def _lane_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("lane-")]


def test_a_runner_failure_reaches_the_consumer_and_stops_the_lanes():
    with pytest.raises(RuntimeError, match="the runtime failed"):
        for _ in run_pipelined(EchoRunner(fail_on=37.0), numbered(400), decode, plan=LanePlan(3, 1), batch_size=4):
            pass
    assert not _lane_threads()


def test_a_consumer_that_stops_early_stops_the_lanes_and_bounds_the_work_ahead():
    decoded = []

    def counting(source: str) -> np.ndarray:
        decoded.append(source)
        return decode(source)

    chunks = run_pipelined(EchoRunner(), numbered(1000), counting, plan=LanePlan(2, 1), batch_size=4)
    first = next(chunks)
    time.sleep(0.3)  # the lanes run ahead only as far as the window allows: 2 x lanes chunks
    assert [i.position for i in first] == [0, 1, 2, 3]
    assert len(decoded) <= 4 * (2 * 2 + 1)
    chunks.close()
    assert not _lane_threads()


def test_lane_plans():
    assert lane_plan("cpu", cores=4) == LanePlan(4, 1)
    assert lane_plan("cpu", threads=2, cores=4) == LanePlan(2, 2)
    assert lane_plan("cpu", threads=3, cores=4) == LanePlan(1, 3)
    assert lane_plan("cpu", threads=64, cores=4) == LanePlan(1, 64)  # the loader refuses it, in one line
    assert lane_plan("cuda:0", cores=8) == LanePlan(8, 1)  # lanes decode for the device


def test_ray_actor_pools_never_reserve_every_cpu():
    from resnet_deploy.batch.job import RayOptions
    from resnet_deploy.batch.ray_data import actor_pool

    assert actor_pool(RayOptions(), 2) == (2, 0.875)
    assert actor_pool(RayOptions(actors=1), 2) == (1, 1.75)
    assert actor_pool(RayOptions(actor_cpus=1), 2) == (1, 1)
    assert actor_pool(RayOptions(actor_cpus=4), 64) == (15, 4)
    for options, message in ((RayOptions(actors=2, actor_cpus=1), "reserve all 2 CPUs"),
                             (RayOptions(actor_cpus=0), "more than 0"), (RayOptions(actors=0), "at least 1"),
                             (RayOptions(actor_cpus=2), "reserve all 2 CPUs")):
        with pytest.raises(DeployError, match=message):
            actor_pool(options, 2)


def test_inputs_folders_globs_lists_and_uris(tmp_path):
    from resnet_deploy.batch.inputs import Filesystems, inputs_digest, list_inputs

    (tmp_path / "b").mkdir()
    for name in ("a.jpg", "b/c.png", "b/d.JPEG", "notes.txt.bak", "z.jpg"):
        (tmp_path / name).write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# comment\n\n{tmp_path / 'z.jpg'}\n  s3://bucket/key.jpg?region=us-east-1  \n")
    found = list_inputs([str(tmp_path / "b"), str(tmp_path / "*.jpg"), str(listing), f"file://{tmp_path}/b"],
                        Filesystems())
    in_b = [str(tmp_path / "b/c.png"), str(tmp_path / "b/d.JPEG")]
    assert found == [*in_b, str(tmp_path / "a.jpg"), str(tmp_path / "z.jpg"), str(tmp_path / "z.jpg"),
                     "s3://bucket/key.jpg", *in_b]  # the URI without its query; file:// as its path
    assert inputs_digest(found) != inputs_digest(found[::-1])
    (tmp_path / "b" / "up").symlink_to("..")  # a link loop: listed once, not forever
    (tmp_path / "sp ace").mkdir()
    (tmp_path / "sp ace" / "e.jpg").write_bytes(b"x")
    assert list_inputs([str(tmp_path / "**" / "*.png"), f"file://{tmp_path}/sp%20ace/e.jpg"], Filesystems()) == [
        in_b[0], str(tmp_path / "sp ace" / "e.jpg")]
    os.mkfifo(tmp_path / "fifo.txt")
    for bad, message in (([str(tmp_path / "missing")], "does not exist"), ([str(tmp_path / "*.gif")], "matches no"),
                         ([], "no images"), ([str(tmp_path / "fifo.txt")], "is a FIFO"),
                         (["abfs://account@container/a.jpg"], "cannot (open|list) abfs://")):
        with pytest.raises(DeployError, match=message):
            list_inputs(bad, Filesystems())


def test_rows_and_records():
    from resnet_deploy.batch.record import RunRecord
    from resnet_deploy.batch.shards import RowFormat

    items = [Item(0, "a.jpg", {LOGITS: np.array([0.0, 2.0, 1.0], np.float32)}), Item(1, "b.jpg", None, "broken")]
    def plain(columns: dict) -> dict:
        return {k: v.to_pylist() if hasattr(v, "to_pylist") else v for k, v in columns.items()}

    columns = plain(RowFormat(LOGITS, 2, ["x", "y", "z"], keep_logits=True).columns(items))
    assert columns["top_index"] == [[1, 2], None] and columns["top_label"] == [["y", "z"], None]
    assert columns["error"] == [None, "broken"] and columns[LOGITS] == [[0.0, 2.0, 1.0], None]
    assert abs(sum(columns["top_probability"][0]) - (np.exp(2) + np.exp(1)) / (1 + np.exp(2) + np.exp(1))) < 1e-6
    features = plain(RowFormat(FEATURES, 5).columns([Item(0, "a.jpg", {FEATURES: np.ones((4, 1, 1), np.float32)})]))
    assert plain(RowFormat(LOGITS, 2).columns([items[1]]))["top_index"] == [None]  # a shard of errors only
    assert features[FEATURES] == [[1.0] * 4] and "top_index" not in features
    record = RunRecord("a.onnx", "0" * 64, {}, {"topk": 5}, {}, {"count": 2, "sha256": "1"}, 10)
    assert record.mismatch(record) is None
    assert "artifact changed" in record.mismatch(RunRecord.from_dict({**record.to_dict(), "artifact_sha256": "f"}))
    assert "inputs are not" in record.mismatch(RunRecord.from_dict({**record.to_dict(), "inputs": {"count": 3}}))
    assert "row format differs" in record.mismatch(RunRecord.from_dict({**record.to_dict(), "rows": {"topk": 1}}))
    other = RunRecord.from_dict({**record.to_dict(), "configuration": {"backend": "openvino-cpu"}})
    assert "it ran with backend None, this invocation openvino-cpu" in record.mismatch(other)
