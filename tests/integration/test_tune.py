"""tune on a real export (resnet18 at 64 px: fp32, fp16, int8), the plan it writes, what --backend auto then
runs (serve's metadata says which, and its outputs are within the chosen precision's tolerance), and the bf16
precision's export gate where the CPU has native bf16 and where it does not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resnet_deploy import environment, export
from resnet_deploy.target import plan as deployplan, runtime
from resnet_deploy.artifacts import read_manifest
from resnet_deploy.backends.pytorch import reference_model
from resnet_deploy.data import random_images
from resnet_deploy.target.plan import read_plan
from resnet_deploy.parity.metrics import compare_arrays
from resnet_deploy.parity.tolerances import Policy
from resnet_deploy.target.tune import TIE, configurations
from tests.conftest import free_port, wait_until_ready

httpclient = pytest.importorskip("tritonclient.http")

NATIVE_BF16 = environment.bf16_problem() is None
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """An fp32 + fp16 + int8 (cpu target) export of resnet18 at 64 px, tuned by the CLI: (folder, report). The
    budget cannot run out (what is asserted must not depend on how many candidates fit in a time); --duration
    keeps the timing short."""
    from click.testing import CliRunner

    from resnet_deploy.cli import main

    folder = tmp_path_factory.mktemp("tuned")
    export("resnet18", input_size=64, batch="1:4:8", fp16=True, int8=True, int8_target="cpu", calib_data="random",
           calib_size=16, out=folder, quiet=True)
    result = CliRunner().invoke(main, ["tune", str(folder / "resnet18.onnx"), "--batch-sizes", "1,4", "--budget-s",
                                       "86400", "--duration", "0.3", "--plot", str(folder / "tune.png"), "--json"],
                                 catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert "verify 1/" in result.stderr and "timing " in result.stderr  # progress while it runs
    return folder, json.loads(result.stdout)


def test_tune_verifies_times_and_picks_the_fastest_within_a_tie(tuned):
    folder, report = tuned
    candidates = report["candidates"]
    assert {c["config"]["artifact"] for c in candidates} == {"resnet18.onnx", "resnet18.fp16.onnx", "resnet18.int8.onnx"}
    assert {c["config"]["backend"] for c in candidates} >= {"ort", "openvino"}
    assert all(c["passed"] is not None and c["timings"] for c in candidates)  # every one verified and timed
    choice = report["choice"]
    assert choice["passed"] is True and choice["config"] == candidates[0]["config"]  # ranked first
    p50 = {c["label"]: c["timings"]["1"]["p50_ms"] for c in candidates if c["passed"]}
    assert p50[choice["label"]] <= min(p50.values()) * (1 + TIE) + 1e-9
    baseline = next(c for c in candidates if c["label"] == "resnet18.onnx [ort, 2 threads]"
                    or (c["config"]["backend"], c["config"]["precision"]) == ("ort", "fp32"))
    assert baseline["timings"]["1"]["vs_baseline"] == pytest.approx(1.0)
    bf16 = [c for c in candidates if c["config"]["precision"] == "bf16"]
    if NATIVE_BF16:  # the fp32 file computed in bf16, verified at bf16's tolerance
        assert bf16 and all(c["passed"] and c["accuracy"]["min_cosine"] >= 0.999 for c in bf16)
    else:
        assert not bf16 and any(s["variant"] == "openvino-cpu-bf16" for s in report["skipped"])
    plan = read_plan(folder, "resnet18")
    assert plan.choice.to_dict() == choice["config"] and report["plan_file"] == str(folder / "resnet18.deploy.json")
    assert plan.measured["cpu"]["isa"] == environment.cpu_description()["isa"]
    assert (folder / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # --plot: latency vs accuracy


def test_tune_from_python_verifies_what_the_cli_verified(tuned):
    """`resnet-deploy tune` is one call of :func:`resnet_deploy.tune`: given the same inputs, the same candidates,
    verified on the same inputs to the same figures (the timings are measurements of another run)."""
    from resnet_deploy import tune

    folder, from_cli = tuned
    report = tune(folder / "resnet18.onnx", batch_sizes=[1, 4], budget_s=86400, duration=0.05, write=False).to_dict()
    for key in ("artifact", "objective", "reference", "inputs", "batch_sizes", "max_drop", "skipped"):
        assert report[key] == from_cli[key], key

    def outcomes(candidates):
        return {c["label"]: (c["passed"], c["reason"]) for c in candidates}

    def figures(candidates):
        return {(c["label"], k): v for c in candidates for k, v in (c["accuracy"] or {}).items() if v is not None}

    assert outcomes(report["candidates"]) == outcomes(from_cli["candidates"])
    assert figures(report["candidates"]) == pytest.approx(figures(from_cli["candidates"]), rel=1e-6)
    assert report["plan_file"] is None and from_cli["plan_file"]


def test_a_budget_that_runs_out_reports_the_rest_as_not_tried(tuned):
    """--budget-s bounds the run: verification stops at half of it; what was not verified is reported as not
    tried, never timed, never chosen, and never called a failure."""
    from resnet_deploy.target.tune import tune

    folder, _ = tuned
    report = tune(folder / "resnet18.onnx", budget_s=1.0, duration=0.05, batch_sizes=[1], threads=[1, 1], write=False)
    labels = [c.config.label for c in report.candidates]
    assert len(labels) == len(set(labels)) and all(c.config.threads == 1 for c in report.candidates)  # 1,1 is one
    untried = [c for c in report.candidates if c.passed is None]
    assert all(c.reason.startswith("not tried: half of --budget-s") and not c.timings for c in untried)
    assert all(c.timings for c in report.candidates if c.passed is not None)
    if report.choice is None:
        assert report.why.startswith("no configuration was verified: ") and "not tried" in report.why
    else:
        assert report.choice.passed and report.choice not in untried


def test_without_native_bf16_tune_offers_none_and_says_why(tuned, monkeypatch):
    folder, _ = tuned
    monkeypatch.setattr(environment, "cpu_flags", lambda: {"avx2", "fma"})  # an AVX2 EPYC's flags
    found, skipped = configurations(read_manifest(folder / "resnet18.json"), threads=[2])
    assert "bf16" not in {c.precision for c in found} and {c.precision for c in found} == {"fp32", "fp16", "int8"}
    reason = next(s for s in skipped if s["variant"] == "openvino-cpu-bf16")
    assert reason["files"] == ["resnet18.onnx (bf16)"]
    assert reason["reason"].startswith("this CPU has no native bf16 (avx512_bf16, amx_bf16)")


def test_auto_runs_the_plan_on_this_kind_of_cpu_only(tuned, monkeypatch):
    folder, report = tuned
    with runtime.load(folder / "resnet18.fp16.onnx") as runner:  # any file of the export: the plan's choice
        assert runner.artifact == str(folder / report["choice"]["config"]["artifact"])
        assert runner.backend == report["choice"]["config"]["backend"] and "chosen by `tune`" in runner.selection
    with runtime.load(folder / "resnet18.onnx", backend="ort") as runner:  # a backend named: no plan
        assert runner.selection is None and runner.artifact == str(folder / "resnet18.onnx")
    other = {**environment.cpu_description(), "isa": ["avx2", "fma"]}
    monkeypatch.setattr(deployplan, "cpu_description", lambda: other)
    with runtime.load(folder / "resnet18.onnx") as runner:
        assert runner.name == "onnxruntime-cpu" and runner.artifact == str(folder / "resnet18.onnx")
        assert "resnet18.deploy.json not used: it was measured on another kind of CPU" in runner.selection
        assert "run `resnet-deploy tune" in runner.selection



def test_bench_auto_labels_each_row_with_the_file_that_ran(tuned, cli):
    """bench's default --backend auto runs the plan's file for any file of the export: the row says which file
    ran (and for which it was asked), the same configuration is timed once, and naming a backend times each
    file itself."""
    folder, report = tuned
    chosen = report["choice"]["config"]["artifact"]
    files = [str(folder / "resnet18.onnx"), str(folder / "resnet18.fp16.onnx")]
    result = cli("bench", *files, "--batch-sizes", "1", "--iters", "3", "--warmup", "1", "--json")
    assert result.exit_code == 0, result.stderr
    done = json.loads(result.stdout)
    assert [r["label"].split(" [")[0] for r in done["results"]] == [chosen]
    assert [Path(d["artifact"]).name for d in done["runners"]] == [chosen]
    assert "already timed; name a backend (e.g. --backend ort) to time resnet18.fp16.onnx itself" in result.stderr
    named = json.loads(cli("bench", *files, "--backend", "ort", "--batch-sizes", "1", "--iters", "3", "--warmup", "1",
                           "--json").stdout)
    assert [r["label"] for r in named["results"]] == ["resnet18.onnx [onnxruntime-cpu]",
                                                      "resnet18.fp16.onnx [onnxruntime-cpu]"]


def test_triton_auto_writes_the_plans_file_and_settings_or_says_why_not(tuned, cli, tmp_path):
    """triton --backend auto (the library's write_model_repository, the CLI only prints): the plan's file and its
    threads; a plan on OpenVINO is served by ONNX Runtime, saying why (Triton's OpenVINO backend cannot pin f32,
    and this export's bf16 computation of that file was not verified)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    folder, report = tuned
    config = report["choice"]["config"]
    repo = tmp_path / "repo"
    result = cli("triton", str(folder / "resnet18.fp16.onnx"), "--repo", str(repo), "--kind", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "chosen by `tune`" in result.stderr
    entry = json.loads((repo / "resnet18" / "resnet_deploy.json").read_text())["versions"]["1"]
    assert entry["artifact"] == config["artifact"]
    written = text_format.Parse((repo / "resnet18" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert written.platform == "onnxruntime_onnx"  # ONNX Runtime either way: chosen, or in OpenVINO's place
    assert written.parameters["intra_op_thread_count"].string_value == str(config["threads"])
    if config["backend"] == "openvino":
        assert "served by ONNX Runtime, not OpenVINO: Triton's OpenVINO backend cannot pin f32" in result.stderr
    from resnet_deploy import TritonOptions, write_model_repository  # the same write from Python: the same repository

    from_python = write_model_repository(folder / "resnet18.fp16.onnx", tmp_path / "api", TritonOptions(kind="cpu"))
    assert from_python.selection in result.stderr and from_python.artifact.name == config["artifact"]
    for name in ("config.pbtxt", "resnet_deploy.json"):
        assert (tmp_path / "api" / "resnet18" / name).read_text() == (repo / "resnet18" / name).read_text()


def test_serve_auto_serves_the_chosen_configuration_within_its_tolerance(tuned):
    folder, report = tuned
    config = report["choice"]["config"]
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "resnet_deploy.cli", "serve", str(folder / "resnet18.onnx"),
                                "--port", str(port), "--backend", "auto"], stderr=subprocess.PIPE, text=True)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/v2/health/ready", process, 60, lambda: process.stderr.read())
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        served = client.get_model_metadata("resnet18")["parameters"]["configuration"]
        batch = random_images(4, (3, 64, 64), MEAN, STD, seed=3)
        tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        logits = client.infer("resnet18", [tensor]).as_numpy("logits")
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert served["artifact"] == config["artifact"] and served["backend"] == config["backend"]
    assert served["precision"] == config["precision"] and "chosen by `tune`" in served["selection"]
    assert "auto: " in process.stderr.read()
    manifest = read_manifest(folder / "resnet18.json")
    import torch

    with torch.no_grad():
        want = reference_model(manifest)(torch.from_numpy(batch)).numpy()
    policy = Policy.make(config["precision"], random_init=True)
    assert policy.tolerance.failures(compare_arrays(want, logits)) == []
    assert not np.array_equal(want, logits) or config["precision"] == "fp32"


def test_export_bf16_gate_is_recorded_where_it_ran_and_why_not_elsewhere(tmp_path, monkeypatch, cli):
    if NATIVE_BF16:
        done = export("resnet18", input_size=64, batch="1:2:4", bf16=True, out=tmp_path / "native", quiet=True)
        record = done.manifest.precision_options["bf16"]
        assert record["verified"] is True and record["cpu"]["bf16"] == "native"
        rows = [p for p in done.manifest.parity if p["artifact"] == "bf16"]
        assert rows and {p["backend"] for p in rows} == {"openvino-cpu-bf16"} and all(p["judged"] for p in rows)
        assert min(p["cosine"] for p in rows) >= 0.999 and max(p["rel_to_scale"] for p in rows) > 1e-4  # bf16, not f32
        assert [a.precision for a in done.manifest.artifacts] == ["fp32"]  # no file of its own
    monkeypatch.setattr(environment, "cpu_flags", lambda: {"avx2", "fma"})
    result = cli("export", "--arch", "resnet18", "--input-size", "64", "--batch", "1:2:4", "--bf16",
                 "--out", str(tmp_path / "avx2"))
    assert result.exit_code == 0, result.stderr
    assert "bf16 not verified here: this CPU has no native bf16" in result.stderr
    assert "bf16: " in result.stderr and "computed in bf16: not verified here" in result.stderr
    manifest = read_manifest(tmp_path / "avx2" / "resnet18.json")
    assert manifest.precision_options["bf16"]["verified"] is False
    assert not [p for p in manifest.parity if p["artifact"] == "bf16"]


@pytest.mark.slow
def test_top1_drop_is_judged_on_labelled_data_and_on_the_holdout(digits, tmp_path):
    """A trained model: with --data the drop is against the float32 reference's accuracy on it; without, the
    share of the calibration hold-out whose class changed. Over --max-drop is a rejection naming the drop."""
    from resnet_deploy.target.tune import tune

    out, record = digits
    export("resnet18_cifar", weights=out / record["checkpoint"], input_size=record["settings"]["size"],
           preprocess={"mean": (0.5,) * 3, "std": (0.5,) * 3}, int8=True, int8_target="cpu",
           calib_data=out / "data" / "train", batch="1:8:32", out=tmp_path, quiet=True)
    artifact = tmp_path / "resnet18_cifar.onnx"
    labelled = tune(artifact, data=str(out / "data" / "test"), max_drop=0.0, budget_s=86400, duration=0.2, batch_sizes=[1],
                    write=False)
    assert labelled.inputs["kind"] == "labelled images" and labelled.inputs["images"] == 450
    for candidate in labelled.candidates:
        drop = candidate.accuracy["top1_drop"]
        assert drop == pytest.approx(100 * (candidate.accuracy["top1_reference"] - candidate.accuracy["top1"]))
        assert candidate.accuracy["top1_reference"] == pytest.approx(record["test_top1_torch"])
        if drop > 0:
            assert candidate.passed is False and candidate.reason == f"top-1 drop {drop:.2f} points > 0.0"
    fp32 = next(c for c in labelled.candidates if c.config.label == "resnet18_cifar.onnx [ort, 2 threads]"
                or (c.config.backend, c.config.precision) == ("ort", "fp32"))
    assert fp32.passed and fp32.accuracy["top1_drop"] == 0.0
    holdout = tune(artifact, max_drop=100.0, budget_s=86400, duration=0.2, batch_sizes=[1], write=False)
    assert "holdout" in holdout.inputs["kind"]
    assert all(c.accuracy["top1_drop"] is not None and c.passed for c in holdout.candidates)
