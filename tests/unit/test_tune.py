"""tune's selection on stand-in measurements: what is chosen, what never is, and why it says so; the plan
file and when it applies."""

from __future__ import annotations

import json

import pytest

from resnet_deploy.target import plan as deployplan
from resnet_deploy.target.plan import Configuration, DeployPlan, read_plan
from resnet_deploy.errors import DeployError
from resnet_deploy.target.tune import TIE, Candidate, choose, rank


def candidate(artifact: str, precision: str, p50: dict[int, float], *, passed: bool | None = True,
              backend: str = "ort", threads: int = 2, reason: str | None = None) -> Candidate:
    timings = {batch: {"p50_ms": ms, "p99_ms": ms * 1.2, "images_per_s": batch / ms * 1e3}
               for batch, ms in p50.items()}
    own = {"bf16": True} if precision == "bf16" else {}
    return Candidate(Configuration(artifact, precision, backend, own, threads), passed=passed, reason=reason,
                     accuracy={"min_cosine": 0.999}, timings=timings)


def test_the_fastest_passing_configuration_is_chosen():
    fp32 = candidate("m.onnx", "fp32", {1: 40.0})
    int8 = candidate("m.int8.onnx", "int8", {1: 12.0})
    bf16 = candidate("m.onnx", "bf16", {1: 15.0}, backend="openvino")
    chosen, why = choose([fp32, int8, bf16], "latency")
    assert chosen is int8 and why.startswith("the fastest configuration that passed verification (12.00 ms p50)")


def test_a_faster_candidate_that_fails_accuracy_is_not_chosen_and_is_named():
    rejected = candidate("m.int8.onnx", "int8", {1: 10.0}, passed=False, reason="top-1 drop 3.00 points > 1.0")
    bf16 = candidate("m.onnx", "bf16", {1: 14.0}, backend="openvino")
    fp32 = candidate("m.onnx", "fp32", {1: 40.0})
    chosen, why = choose([rejected, bf16, fp32], "latency")
    assert chosen is bf16
    assert why.endswith("1 faster one(s) failed verification")
    assert rank([fp32, rejected, bf16], "latency") == [bf16, fp32, rejected]  # the rejected after every passing one


def test_a_tie_goes_to_the_configuration_closest_to_fp32_then_fewer_threads():
    int8 = candidate("m.int8.onnx", "int8", {1: 10.0})
    fp16 = candidate("m.fp16.onnx", "fp16", {1: 10.0 * (1 + TIE / 2)})  # within the tie: fp16 is closer to fp32
    chosen, why = choose([int8, fp16], "latency")
    assert chosen is fp16 and "within 3% of the fastest" in why and "fp16 against int8" in why
    outside = candidate("m.fp16.onnx", "fp16", {1: 10.0 * (1 + 2 * TIE)})
    assert choose([int8, outside], "latency")[0] is int8
    two, one = candidate("m.onnx", "fp32", {1: 20.0}, threads=2), candidate("m.onnx", "fp32", {1: 20.0}, threads=1)
    assert choose([two, one], "latency")[0] is one
    first, second = candidate("a.onnx", "fp32", {1: 20.0}), candidate("b.onnx", "fp32", {1: 20.0})
    assert choose([first, second], "latency")[0] is first  # a full tie: the first, every run alike


def test_all_rejected_chooses_nothing_and_says_why():
    rejected = [candidate("m.int8.onnx", "int8", {1: 10.0}, passed=False, reason="cosine 0.98 < 0.99"),
                candidate("m.onnx", "bf16", {1: 12.0}, passed=False, reason="top-1 drop 2.00 points > 1.0")]
    chosen, why = choose(rejected, "latency")
    assert chosen is None
    assert why.startswith("no configuration passed verification") and "cosine 0.98 < 0.99" in why
    unloaded = [candidate("m.onnx", "fp32", {}, passed=None, reason="did not load: x")]
    assert choose(unloaded, "latency") == (None, "no configuration was verified: 1 did not load (did not load: x)")


def test_a_budget_that_ran_out_is_not_called_a_verdict():
    untried = [candidate(f"m{i}.onnx", "fp32", {}, passed=None, reason="not tried: half of --budget-s was spent")
               for i in range(3)]
    chosen, why = choose(untried, "latency")
    assert chosen is None and why.startswith("no configuration was verified: 3 not tried (--budget-s ran out")
    assert "could be verified here" not in why


def test_a_tie_is_explained_by_what_decided_it():
    two, one = candidate("m.onnx", "fp32", {1: 20.0}, threads=2), candidate("m.onnx", "fp32", {1: 20.2}, threads=1)
    chosen, why = choose([two, one], "latency")
    assert chosen is one and why.endswith("uses fewer threads (1 against 2)") and "closer to fp32" not in why
    first, second = candidate("a.onnx", "fp32", {1: 20.1}), candidate("b.onnx", "fp32", {1: 20.0})
    chosen, why = choose([first, second], "latency")
    assert chosen is first and why.endswith("was listed first")


def test_a_passing_candidate_without_timings_ranks_after_the_timed_ones():
    untimed = candidate("m.onnx", "fp32", {}, threads=1)
    timed = candidate("m.onnx", "fp32", {1: 20.0})
    rejected = candidate("m.int8.onnx", "int8", {1: 5.0}, passed=False, reason="cosine 0.9 < 0.99")
    assert rank([untimed, rejected, timed], "latency") == [timed, rejected, untimed]


def test_throughput_picks_the_best_images_per_second_over_batch_sizes():
    small = candidate("m.onnx", "fp32", {1: 10.0, 8: 60.0})  # 133 images/s at batch 8
    batched = candidate("m.int8.onnx", "int8", {1: 12.0, 8: 40.0})  # 200 images/s at batch 8
    assert choose([small, batched], "latency")[0] is small
    chosen, _ = choose([small, batched], "throughput")
    assert chosen is batched and chosen.figure("throughput") == (200.0, 8)
    with pytest.raises(DeployError, match="unknown objective"):
        choose([small], "cost")


def _plan(sha: str, cpu: dict) -> DeployPlan:
    config = Configuration("m.int8.onnx", "int8", "openvino", {}, 2)
    return DeployPlan(stem="m", choice=config, sha256=sha, objective="latency", batch=1,
                      figures={"p50_ms": 5.0, "vs_baseline": 0.3}, why="the fastest",
                      measured={"date": "2026-11-29", "cpu": cpu})


class _Entry:
    def __init__(self, file: str, sha256: str) -> None:
        self.file, self.sha256 = file, sha256


class _Manifest:
    def __init__(self, sha: str) -> None:
        self.entry = _Entry("m.int8.onnx", sha)

    def artifact(self, precision: str):
        return self.entry if precision == "int8" else None


def test_a_plan_applies_to_its_export_on_the_same_kind_of_cpu_only(tmp_path, monkeypatch):
    here = {"model": "this", "isa": ["avx2", "avx512f", "avx512_vnni"], "int8_isa": "vnni", "bf16": "native"}
    monkeypatch.setattr(deployplan, "cpu_description", lambda: dict(here))
    plan = _plan("abc", here)
    path = plan.write(tmp_path)
    assert path.name == "m.deploy.json" and json.loads(path.read_text())["format"] == deployplan.FORMAT
    read = read_plan(tmp_path, "m")
    assert read.choice == plan.choice and read.problem_here(_Manifest("abc")) is None
    assert "another export" in read.problem_here(_Manifest("def"))
    avx2 = {**here, "model": "other", "isa": ["avx2"], "int8_isa": "avx2", "bf16": "no native bf16"}
    problem = _plan("abc", avx2).problem_here(_Manifest("abc"))
    assert problem == "it was measured on another kind of CPU (other: avx2; here: avx2 avx512_vnni avx512f)"
    assert "0.30x ONNX Runtime fp32" in plan.summary()


def test_a_damaged_plan_is_one_line(tmp_path):
    (tmp_path / "m.deploy.json").write_text("{not json")
    with pytest.raises(DeployError, match=r"m.deploy.json cannot be read .*: run `resnet-deploy tune` again"):
        read_plan(tmp_path, "m")
    assert read_plan(tmp_path, "other") is None


def _damaged(field: str, value):
    """A valid plan's JSON with one field (a dotted path) replaced; ``field`` None: the whole document."""
    data = _plan("abc", {"model": "this", "isa": ["avx2"], "int8_isa": "avx2", "bf16": "no"}).to_dict()
    if field is None:
        return value
    *parents, last = field.split(".")
    target = data
    for parent in parents:
        target = target[parent]
    target[last] = value
    return data


@pytest.mark.parametrize("field, value", [
    (None, []), (None, None), (None, "plan"), ("measured", []), ("figures", {}), ("figures.p50_ms", "1.0"),
    ("figures.p50_ms", float("nan")), ("choice.own", [1]), ("choice.own", {"throughput": "yes"}),
    ("choice.threads", "2"), ("choice.threads", 1.5), ("choice.threads", 0), ("choice.threads", True),
    ("choice", None), ("batch", -1), ("measured.cpu", "x"), ("measured.cpu.isa", "avx2"), ("stem", 7),
])
def test_a_malformed_plan_is_one_line_naming_the_field(tmp_path, field, value):
    """Whatever a hand edit or a damaged disk leaves in the plan, reading it is a one-line error naming what
    is wrong, never a traceback from deep in a runner (were: AttributeError, TypeError, exit 1)."""
    (tmp_path / "m.deploy.json").write_text(json.dumps(_damaged(field, value)))
    with pytest.raises(DeployError, match=r"m.deploy.json cannot be read \(.+\): run `resnet-deploy tune` again"):
        read_plan(tmp_path, "m")
