"""`resnet-deploy kserve`: the manifests for a Triton repository (GPU instances; CPU instances with the image
ensemble) and for `serve` in a ServingRuntime, read back through the KServe SDK's and the Kubernetes client's
models with nothing lost or renamed, and every combination KServe or the pod would fail on refused with the
reason. The repository Triton itself loads is checked against the URLs printed in test_triton_server."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

if importlib.util.find_spec("kserve") is None:  # not imported here: its __init__ collides with tritonclient's gRPC
    pytest.skip("the kserve extra builds the manifests", allow_module_level=True)
yaml = pytest.importorskip("yaml")

from resnet_deploy.errors import DeployError  # noqa: E402
from resnet_deploy.serving.kserve import from_document, memory_bytes, round_trip  # noqa: E402
from resnet_deploy.serving.triton import TESTED_TRITON_CONTAINER, TritonOptions, write_model_repository  # noqa: E402
from tests.conftest import assert_one_line_error  # noqa: E402

IMAGE = "registry.example.com/team/resnet-deploy:1"


@pytest.fixture(scope="module")
def repositories(small_export, tmp_path_factory):
    """A repository with the small export on GPU instances, and one on CPU instances (2 threads) with its ensemble."""
    gpu, cpu = tmp_path_factory.mktemp("gpu-repo"), tmp_path_factory.mktemp("cpu-repo")
    write_model_repository(small_export.onnx_path, gpu, TritonOptions(kind="gpu"))
    write_model_repository(small_export.onnx_path, cpu, TritonOptions(kind="cpu", ensemble=True, threads=2))
    return gpu, cpu


def _documents(path: Path) -> list[dict]:
    return list(yaml.safe_load_all(path.read_text()))


def _kserve(cli, source, out, *args):
    return cli("kserve", str(source), "--name", "classifier", "--out", str(out), *args)


def test_gpu_repository_manifest(cli, repositories, tmp_path):
    gpu, _ = repositories
    unmeasured = _kserve(cli, gpu, tmp_path, "--storage-uri", "s3://models/repo", "--gpus", "1")
    assert_one_line_error(unmeasured, contains="resnet18 (GPU instances) cannot be measured here: give --memory")
    result = _kserve(cli, gpu, tmp_path, "--storage-uri", "s3://models/repo", "--gpus", "1", "--min-replicas", "1",
                     "--max-replicas", "4", "--scale-metric", "concurrency", "--scale-target", "8", "--memory", "4Gi",
                     "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    [service] = _documents(tmp_path / "classifier.yaml")
    round_trip(service, "V1beta1InferenceService")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "triton", "version": "2"} and model["runtime"] == "kserve-tritonserver"
    assert model["protocolVersion"] == "v2" and model["storageUri"] == "s3://models/repo"
    assert model["runtimeVersion"] == TESTED_TRITON_CONTAINER
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1" == model["resources"]["requests"]["nvidia.com/gpu"]
    assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleMetric"], predictor["scaleTarget"]) == (
        1, 4, "concurrency", 8)
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    # the URL's model name is the repository folder's (kserve#2755)
    assert summary["urls"] == {
        "http://classifier-predictor.default.svc.cluster.local/v2/models/resnet18/infer": "tensors [3, 64, 64]"}
    assert summary["dockerfile"] is None and model["resources"]["limits"]["memory"] == "4096Mi"
    assert "not measured: resnet18 (GPU instances)" in " ".join(summary["how"])

    refused = _kserve(cli, gpu, tmp_path / "x", "--storage-uri", "s3://models/repo")
    assert_one_line_error(refused, contains="--gpus 1")
    assert not (tmp_path / "x").exists()


def test_cpu_repository_with_the_image_ensemble(cli, repositories, tmp_path):
    _, cpu = repositories
    refused = _kserve(cli, cpu, tmp_path / "no-image", "--storage-uri", "gs://bucket/triton")
    assert_one_line_error(refused, contains="Pillow")
    unmeasured = _kserve(cli, cpu, tmp_path / "no-memory", "--storage-uri", "gs://bucket/triton", "--image", IMAGE)
    assert_one_line_error(unmeasured, contains="resnet18_preprocess (Triton's python backend")
    (tmp_path / "classifier.Dockerfile").write_text("an earlier run's")
    result = _kserve(cli, cpu, tmp_path, "--storage-uri", "gs://bucket/triton", "--image", IMAGE, "--mode",
                     "standard", "--scale-metric", "cpu", "--scale-target", "70", "--memory", "1Gi", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    [service] = _documents(tmp_path / "classifier.yaml")
    round_trip(service, "V1beta1InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["image"] == IMAGE and "runtimeVersion" not in model  # the image given is the whole image
    assert "pillow" in (tmp_path / "classifier.Dockerfile").read_text()
    assert f"tritonserver:{TESTED_TRITON_CONTAINER}" in (tmp_path / "classifier.Dockerfile").read_text()
    # 2 threads for the network's instance, 1 for the python preprocessing instance
    assert model["resources"]["requests"]["cpu"] == "3" == model["resources"]["limits"]["cpu"]
    assert memory_bytes(model["resources"]["requests"]["memory"]) == 1 << 30
    how = " ".join(summary["how"])
    floor = int(how.split("floor ")[1].split("Mi")[0]) << 20  # measured: a process holding ONNX Runtime and the model
    assert 64 << 20 < floor < 1 << 30 and "measured in a fresh process" in how
    urls = {url.rsplit("/v2/models/", 1)[1]: takes for url, takes in summary["urls"].items()}
    assert urls == {"resnet18/infer": "tensors [3, 64, 64]", "resnet18_ensemble/infer": "encoded images (BYTES)"}
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


def test_refusals_name_the_reason(cli, repositories, small_export, tmp_path):
    gpu, cpu = repositories
    cpu_args = ["--storage-uri", "s3://models/repo", "--image", IMAGE, "--memory", "2Gi"]
    cases = [
        ([cpu, *cpu_args, "--cpus", "2"], "compute with 3 threads"),
        ([cpu, *cpu_args, "--memory", "16Mi"], "OOMKilled"),
        ([cpu, *cpu_args, "--memory", "lots"], "not a memory quantity"),
        ([cpu, "--storage-uri", "s3://models/repo/resnet18", "--image", IMAGE, "--memory", "2Gi"], "kserve#1075"),
        ([cpu, *cpu_args[:-1], "64Ti"], "no node holds it"),
        ([cpu, "--storage-uri", "s3://models/repo?version=2", *cpu_args[2:]], "query"),
        ([cpu, *cpu_args, "--runtime-version", "24.12-py3"], "the image is yours"),
        ([small_export.onnx_path, "--runtime", "serve", "--image", IMAGE, "--storage-uri", "s3://m/a",
          "--model-name", "resnet 18"], "a model name is"),
        ([small_export.onnx_path, "--runtime", "serve", "--image", IMAGE, "--storage-uri", "s3://m/a",
          "--namespace", "n" * 50], "over DNS's 63"),
        ([cpu / "resnet18", *cpu_args], "a model folder"),
        ([cpu, *cpu_args, "--gpus", "1"], "hold GPUs idle"),
        ([cpu, *cpu_args, "--scale-metric", "rps", "--scale-target", "5", "--mode", "standard"], "Knative"),
        ([cpu, *cpu_args, "--scale-metric", "cpu"], "go together"),
        ([cpu, *cpu_args, "--canary", "10", "--mode", "standard"], "Knative mode"),
        ([cpu, *cpu_args, "--min-replicas", "0", "--mode", "standard"], "scales to zero"),
        ([cpu, *cpu_args, "--max-replicas", "2", "--min-replicas", "3"], "--max-replicas"),
        ([cpu, "--storage-uri", "ftp://host/repo", *cpu_args[2:]], "storage initializer"),
        ([cpu, *cpu_args, "--model-name", "x"], "folder's name"),
        ([small_export.onnx_path, "--runtime", "serve", "--storage-uri", "s3://m/a"], "--image"),
        ([cpu, "--runtime", "serve", *cpu_args], "artifact file"),
        ([small_export.onnx_path, "--runtime", "serve", "--image", IMAGE,
          "--storage-uri", f"s3://m/a/{small_export.onnx_path.name}"], "the folder holding it"),
    ]
    for args, reason in cases:
        result = _kserve(cli, args[0], tmp_path / "out", *map(str, args[1:]))
        assert_one_line_error(result, contains=reason)
    bad_name = cli("kserve", str(cpu), "--name", "Classifier_1", "--out", str(tmp_path / "out"), *cpu_args)
    assert_one_line_error(bad_name, contains="InferenceService name")
    assert not (tmp_path / "out").exists()


def _edited_copy(source: Path, target: Path, edit) -> Path:
    import shutil

    shutil.copytree(source, target)
    edit(target)
    return target


def test_repositories_triton_would_not_load_as_written_are_refused(cli, repositories, tmp_path):
    _, cpu = repositories
    args = ["--storage-uri", "s3://models/repo", "--image", IMAGE, "--memory", "2Gi"]

    def config_edit(old: str, new: str):
        def edit(root: Path) -> None:
            config = root / "resnet18" / "config.pbtxt"
            config.write_text(config.read_text().replace(old, new))
        return edit

    cases = [
        (lambda root: (root / "resnet18" / "1").rename(root / "resnet18" / "01"), "no version folder"),
        (lambda root: (root / "resnet18_ensemble" / "1").rmdir(), "no version folder"),
        (config_edit('string_value: "2"', 'string_value: "0"'), "every core of the node"),
        (config_edit("KIND_CPU", "KIND_AUTO"), "--kind cpu|gpu"),
        (config_edit('name: "resnet18"', 'name: "resnet-18"'), "its folder is"),
    ]
    for index, (edit, reason) in enumerate(cases):
        repo = _edited_copy(cpu, tmp_path / f"repo{index}", edit)
        assert_one_line_error(_kserve(cli, repo, tmp_path / "out", *args), contains=reason)
    # a repository folder named like its model: the URI's last segment is the root's name, not a model folder
    named = _edited_copy(cpu, tmp_path / "named" / "resnet18", lambda root: None)
    result = _kserve(cli, named, tmp_path / "ok", "--storage-uri", "s3://models/resnet18", *args[2:])
    assert result.exit_code == 0, result.stderr


def test_serve_runtime_manifests(cli, small_export, tmp_path):
    result = _kserve(cli, small_export.onnx_path, tmp_path, "--runtime", "serve", "--image", IMAGE, "--storage-uri",
                     "pvc://models/resnet18", "--cpus", "2", "--namespace", "vision", "--canary", "20", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    runtime, service = _documents(tmp_path / "classifier.yaml")
    round_trip(runtime, "V1alpha1ServingRuntime")
    round_trip(service, "V1beta1InferenceService")
    assert runtime["kind"] == "ServingRuntime" and runtime["metadata"]["name"] == "classifier-runtime"
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    [container] = runtime["spec"]["containers"]
    assert container["image"] == IMAGE and container["command"] == ["resnet-deploy"]
    assert container["args"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == "classifier-runtime"
    [declared] = runtime["spec"]["supportedModelFormats"]
    assert model["modelFormat"] == {"name": declared["name"], "version": declared["version"]}
    # the pod runs the file and backend resolved here, its threads the CPUs requested
    assert model["args"] == ["/mnt/models/resnet18.onnx", "--model-name", "resnet18", "--backend", "ort",
                             "--threads", "2"]
    assert model["resources"]["requests"]["cpu"] == "2"
    assert service["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert service["metadata"]["namespace"] == "vision" == runtime["metadata"]["namespace"]
    assert list(summary["urls"]) == ["http://classifier-predictor.vision.svc.cluster.local/v2/models/resnet18/infer"]
    assert "resnet-deploy[serve]" in (tmp_path / "classifier.Dockerfile").read_text()


def test_round_trip_catches_a_renamed_or_unknown_field(cli, small_export, tmp_path):
    result = _kserve(cli, small_export.onnx_path, tmp_path, "--runtime", "serve", "--image", IMAGE, "--storage-uri",
                     "s3://m/a")
    assert result.exit_code == 0, result.stderr
    _, service = _documents(tmp_path / "classifier.yaml")
    renamed = copy.deepcopy(service)
    renamed["spec"]["predictor"]["model"]["storageURI"] = renamed["spec"]["predictor"]["model"].pop("storageUri")
    with pytest.raises(DeployError, match="storageURI"):
        round_trip(renamed, "V1beta1InferenceService")
    made_up = copy.deepcopy(service)
    made_up["spec"]["predictor"]["replicas"] = 2  # a Deployment's field, not the predictor's
    with pytest.raises(DeployError, match="replicas"):
        round_trip(made_up, "V1beta1InferenceService")
    round_trip(service, "V1beta1InferenceService")


def test_the_measured_peak_is_the_models_not_the_callers(repositories):
    """The measuring process's own peak: not inflated by what the caller holds (an exec keeps the forked
    parent's ru_maxrss, which made a 1.3 GB test process read a 200 MB model as 1.4 GB)."""
    from resnet_deploy.target.memory import MemorySpec, measure_peak

    _, cpu = repositories
    held = bytearray(1 << 30)
    held[::4096] = b"\x01" * len(held[::4096])  # touched: resident in this process
    peak = measure_peak(MemorySpec(batch=8, threads=1, model_file=str(cpu / "resnet18" / "1" / "model.onnx"),
                                   input_dims=(3, 64, 64)))
    assert peak.baseline_bytes < peak.peak_bytes < len(held) // 2, peak
