"""Running apart from judging: RunResults as a value (saved and loaded without pickles), judging by the
precision's policy, and the golden file as the reference's saved results."""

from __future__ import annotations

import numpy as np
import pytest

from resnet_deploy.errors import ArtifactError, DeployError
from resnet_deploy.parity.compare import REFERENCE, Check, judge
from resnet_deploy.parity.golden import HOLDOUT_IMAGES, write_golden
from resnet_deploy.parity.inputs import HOLDOUT, RANDOM, InputSet
from resnet_deploy.parity.results import RunResults, run
from resnet_deploy.parity.tolerances import Policy


class Scaled:
    """A runner whose logits are its input's means times ``scale``: a known, controllable error."""

    def __init__(self, name: str, scale: float = 1.0) -> None:
        self.name, self.scale, self.calls = name, scale, 0

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.calls += 1
        logits = batch.reshape(len(batch), 3, -1).mean(axis=2) * np.array([1.0, 2.0, 3.0], np.float32)
        return {"logits": (logits * self.scale).astype(np.float32)}

    def describe(self) -> dict:
        return {"scale": self.scale}


def _sets(rng: np.random.Generator) -> list[InputSet]:
    holdout = [rng.random((8, 3, 4, 4), dtype=np.float32) for _ in range(3)]
    return [InputSet(HOLDOUT, holdout), InputSet(RANDOM, [rng.random((2, 3, 4, 4), dtype=np.float32)])]


def test_each_runner_runs_each_batch_once_and_results_round_trip(tmp_path):
    reference, candidate = Scaled("torch-cpu"), Scaled("onnxruntime-cpu", 1.001)
    results = run([reference, candidate, reference], _sets(np.random.default_rng(0)))
    assert reference.calls == 4 and candidate.calls == 4  # 4 batches; the repeated runner is not run again
    results.save(tmp_path / "r.npz")
    loaded = RunResults.load(tmp_path / "r.npz")
    assert [(s.label, len(s.batches)) for s in loaded.sets] == [(HOLDOUT, 3), (RANDOM, 1)]
    assert loaded.runners == {"torch-cpu": {"scale": 1.0}, "onnxruntime-cpu": {"scale": 1.001}}
    for name in results.outputs:
        np.testing.assert_array_equal(loaded.joined(name, "logits"), results.joined(name, "logits"))
    more = run([Scaled("openvino-cpu")], [], into=loaded.copy())  # a target adding its runner to saved results
    assert set(more.outputs) == {"torch-cpu", "onnxruntime-cpu", "openvino-cpu"} and len(loaded.outputs) == 2


def test_a_file_without_the_header_is_refused(tmp_path):
    np.savez(tmp_path / "old.npz", **{"random.0.input": np.zeros(3)})
    with pytest.raises(ArtifactError, match="older resnet-deploy: re-export"):
        RunResults.load(tmp_path / "old.npz")


def test_judging_follows_the_precision_policy():
    results = run([Scaled("torch-cpu"), Scaled("onnxruntime-cpu", -1.0)], _sets(np.random.default_rng(1)))
    checks = [Check("onnxruntime-cpu", Policy.make("int8", random_init=False).tolerance)]
    for precision, random_judged in (("int8", False), ("fp32", True)):
        policy = Policy.make(precision, random_init=False)
        rows = judge(results, checks, reference="torch-cpu", judges=policy.judges_in(results.sets))
        assert {row.inputs: row.judged for row in rows} == {HOLDOUT: True, RANDOM: random_judged}
        assert all(not row.passed and row.reference == REFERENCE for row in rows)  # negated logits: cosine -1
    only_random = RunResults([InputSet(RANDOM, results.sets[1].batches)])
    assert Policy.make("int8", random_init=False).judges_in(only_random.sets)(RANDOM)  # no hold-out: random judges


def test_policy_overrides_are_bounded_and_named():
    assert Policy.make("int8", random_init=True).tolerance.min_top1 is None  # random weights: top-1 set aside
    assert Policy.make("int8", random_init=True, overrides={"min_top1": 0.5}).notes == []
    with pytest.raises(DeployError, match="unknown tolerance 'max_abs'"):
        Policy.make("fp32", random_init=False, overrides={"max_abs": 1.0})
    with pytest.raises(DeployError, match="--min-cosine 2.0 is out of range"):
        Policy.make("fp32", random_init=False, overrides={"min_cosine": 2.0})


def test_golden_keeps_the_first_holdout_images_in_profile_sized_batches(tmp_path):
    sets = _sets(np.random.default_rng(2))  # 24 hold-out images in batches of 8
    results = run([Scaled("torch-cpu")], sets)
    write_golden(tmp_path / "g.npz", results)
    golden = RunResults.load(tmp_path / "g.npz")
    holdout = golden.sets[0]
    assert [len(b) for b in holdout.batches] == [8, 8] and sum(map(len, holdout.batches)) == HOLDOUT_IMAGES
    np.testing.assert_array_equal(np.concatenate(holdout.batches), np.concatenate(sets[0].batches)[:HOLDOUT_IMAGES])
    np.testing.assert_array_equal(golden.joined("torch-cpu", "logits"),
                                  np.concatenate([results.joined("torch-cpu", "logits")[:HOLDOUT_IMAGES],
                                                  results.outputs["torch-cpu"][3]["logits"]]))
