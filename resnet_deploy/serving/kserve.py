"""``resnet-deploy kserve``: the manifests that put a Triton repository (KServe's ``kserve-tritonserver`` runtime)
or an artifact under ``resnet-deploy serve`` (a ``ServingRuntime`` of its own) on a Kubernetes cluster running
KServe, built with the KServe SDK's and the Kubernetes client's own models, so field names and types are theirs.

What is checked before anything reaches a cluster, each a known way these deployments fail: the repository read
as Triton loads it from ``storageUri``'s root (:mod:`.triton_layout`; kserve#1075, #2287), the URLs' model names
(the folders', kserve#2755), ``protocolVersion: v2`` (ONNX: "no runtime found" without it), GPU instance groups
only with ``nvidia.com/gpu`` requested and the reverse, the runtimes' threads within the CPUs requested, memory at
least the model's measured peak (OOMKilled under default limits, kserve#2361), and the Triton release the
repository was tested with as ``runtimeVersion`` (the stock runtime pins an old image).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ArgumentError, DeployError, within
from .limits import MODEL_NAME
from ..fileio import atomic_open
from .triton import TESTED_TRITON_CONTAINER

RUNTIMES = ("triton", "serve")
SCALE_METRICS = ("concurrency", "rps", "cpu")  # concurrency and rps: Knative's autoscaler; cpu: an HPA
KNATIVE_METRICS = ("concurrency", "rps")
MODES = {"knative": "Serverless", "standard": "RawDeployment"}  # serving.kserve.io/deploymentMode values
KSERVE_GROUP = "serving.kserve.io"
MODE_ANNOTATION = f"{KSERVE_GROUP}/deploymentMode"
STORAGE_SCHEMES = ("s3", "gs", "pvc", "hdfs", "webhdfs", "https", "http", "oci", "hf")  # KServe's storage initializer
TRITON_RUNTIME = "kserve-tritonserver"
SERVE_FORMAT = ("resnet-deploy", "1")  # the model format the ServingRuntime declares and the service asks for
MODEL_ROOT = "/mnt/models"  # where KServe's storage initializer puts what storageUri names
HTTP_PORT = 8080  # KServe's predictor port
CONTAINER = "kserve-container"  # the predictor container's name in KServe's runtimes, which the model spec merges into
MAX_CPUS = 1024
MEMORY_HEADROOM = 1.5  # default memory request: the measured peak with room for requests in flight
MEMORY_STEP = 256 << 20  # requests rounded up to 256 MiB
NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")  # a DNS-1035 label: the service's name is part of its hosts
NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # a DNS-1123 label
PREDICTOR_SUFFIX = "-predictor"  # KServe's predictor service: NAME-predictor, NAME-predictor-NAMESPACE as a host label
DNS_LABEL = 63
MAX_MEMORY = 16 << 40


@dataclass(frozen=True)
class KServeOptions:
    """The InferenceService asked for: its name, where the storage initializer fetches the model from, the
    runtime (Triton on a repository, or ``resnet-deploy serve`` on an artifact from ``image``), resources (None:
    what the models need, measured), replicas and autoscaling, canary traffic, the Triton image's tag, and
    KServe's deployment mode (Knative, or a plain Deployment)."""

    name: str
    storage_uri: str
    runtime: str = "triton"
    namespace: str = "default"
    gpus: int = 0
    cpus: float | None = None
    memory: str | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    scale_metric: str | None = None
    scale_target: int | None = None
    canary: int | None = None
    runtime_version: str | None = None
    mode: str = "knative"
    image: str | None = None
    model_name: str | None = None

    def check(self) -> KServeOptions:
        """These options, refused with the reason where KServe or Kubernetes would refuse them or they cannot
        work together."""
        if not NAME.fullmatch(self.name):
            raise ArgumentError(f"--name {self.name!r}: an InferenceService name is lowercase letters, digits and "
                                "'-', starting with a letter (it is part of the service's hosts)")
        if not NAMESPACE.fullmatch(self.namespace):
            raise ArgumentError(f"--namespace {self.namespace!r} is not a Kubernetes namespace name")
        label = f"{self.name}{PREDICTOR_SUFFIX}-{self.namespace}"
        if len(label) > DNS_LABEL:
            raise ArgumentError(f"--name {self.name!r} with --namespace {self.namespace!r}: KServe builds the host "
                                f"label {label!r}, {len(label)} characters, over DNS's {DNS_LABEL}: a shorter name")
        _choice("--runtime", self.runtime, RUNTIMES)
        _choice("--mode", self.mode, tuple(MODES))
        _check_storage_uri(self.storage_uri)
        within("--gpus", self.gpus, 0, 64)
        if self.cpus is not None:
            within("--cpus", self.cpus, 0.001, MAX_CPUS)
        if self.memory is not None:
            memory_bytes(self.memory)
        self._check_scaling()
        if self.canary is not None:
            within("--canary", self.canary, 0, 100, "percent of traffic")
            if self.mode != "knative":
                raise ArgumentError("--canary splits traffic between revisions, which only Knative mode has: "
                                    "use --mode knative")
        if self.runtime == "serve" and not self.image:
            raise ArgumentError("--runtime serve runs `resnet-deploy serve` from an image of yours: give --image "
                                "(what it must contain is written beside the manifests)")
        if self.runtime == "triton" and self.model_name:
            raise ArgumentError("--model-name is for --runtime serve: Triton serves each model under its "
                                "repository folder's name")
        if self.model_name is not None and not MODEL_NAME.fullmatch(self.model_name):
            raise ArgumentError(f"--model-name {self.model_name!r}: a model name is letters, digits, '_', '.' and "
                                "'-' (serve refuses others, and the pod would restart for ever)")
        if self.runtime_version and (self.runtime == "serve" or self.image):
            raise ArgumentError("--runtime-version is the tag of KServe's tritonserver image; with "
                                f"{'--runtime serve' if self.runtime == 'serve' else '--image'} the image is yours: "
                                "put the tag in --image")
        return self

    def _check_scaling(self) -> None:
        low = self.min_replicas if self.min_replicas is not None else 1
        within("--min-replicas", low, 0 if self.mode == "knative" else 1, 1000,
               "0 scales to zero, which Knative mode alone does")
        if self.max_replicas is not None:
            within("--max-replicas", self.max_replicas, max(1, low), 1000, "at least --min-replicas")
        if (self.scale_metric is None) != (self.scale_target is None):
            raise ArgumentError("--scale-metric and --scale-target go together: the metric and its target per replica")
        if self.scale_metric is None:
            return
        _choice("--scale-metric", self.scale_metric, SCALE_METRICS)
        if self.scale_metric in KNATIVE_METRICS and self.mode != "knative":
            raise ArgumentError(f"--scale-metric {self.scale_metric} is Knative's autoscaler's: use --mode knative, "
                                "or --scale-metric cpu (an HPA)")
        high = 100 if self.scale_metric == "cpu" else 100_000
        within("--scale-target", self.scale_target, 1, high, "percent of the CPUs requested"
               if self.scale_metric == "cpu" else "per replica")


KSERVE_MISSING = "kserve needs the KServe SDK and the Kubernetes client: pip install 'resnet-deploy[kserve]'"


def kserve_models() -> Any:
    """The KServe SDK's generated models (``kserve.models``), without its package's ``__init__``: that one
    starts its model server's imports, whose gRPC messages (``inference.*``) collide with tritonclient's in
    protobuf's default pool, so a process that serves over gRPC or reads Triton configs could not hold both.
    The package is imported as a bare namespace while its models load, then dropped from ``sys.modules``, so a
    later ``import kserve`` runs its ``__init__`` as usual.

    Raises:
        DeployError: the SDK (or the Kubernetes client) is not installed.
    """
    import importlib
    import importlib.util
    import sys

    try:
        import kubernetes.client  # noqa: F401  (the models' Kubernetes types)

        if "kserve" in sys.modules:
            return importlib.import_module("kserve.models")
        spec = importlib.util.find_spec("kserve")
        if spec is None:
            raise ImportError("kserve")
        sys.modules["kserve"] = importlib.util.module_from_spec(spec)
        try:
            return importlib.import_module("kserve.models")
        finally:
            del sys.modules["kserve"]
    except ImportError:
        raise DeployError(KSERVE_MISSING) from None


def _choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ArgumentError(f"{option} must be one of {', '.join(choices)}, not {value!r}")


def _check_storage_uri(uri: str) -> None:
    scheme, _, rest = uri.partition("://")
    if any(c.isspace() or c in "?#" for c in uri):
        raise ArgumentError(f"--storage-uri {uri!r}: a URI without spaces, query or fragment (the storage "
                            "initializer takes the path as it is)")
    if scheme not in STORAGE_SCHEMES or not rest.strip("/"):
        raise ArgumentError(f"--storage-uri {uri!r}: KServe's storage initializer fetches "
                            f"{', '.join(s + '://' for s in STORAGE_SCHEMES)} URIs, with a path")


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (``4Gi``, ``512Mi``, ``2G``, bytes) in bytes.

    Raises:
        ArgumentError: not a quantity, or not positive.
    """
    from kubernetes.utils import parse_quantity

    try:
        value = int(parse_quantity(quantity))
    except (ValueError, TypeError, ArithmeticError):
        value = 0
    if value <= 0:
        raise ArgumentError(f"--memory {quantity!r} is not a memory quantity such as 4Gi or 512Mi")
    if value > MAX_MEMORY:
        raise ArgumentError(f"--memory {quantity} is more than {MAX_MEMORY >> 40}Ti: no node holds it")
    return value


def _mebibytes(count: float) -> str:
    return f"{-(-int(count) // 2**20)}Mi"


def _cpu_quantity(cpus: float) -> str:
    return str(int(cpus)) if float(cpus).is_integer() else f"{math.ceil(cpus * 1000)}m"


@dataclass
class PredictorPlan:
    """What the InferenceService's predictor runs: the model spec's fields, the resources the models need
    (threads, GPUs, the memory floor and how it was found), the URLs clients call (path -> what it takes),
    the ServingRuntime where one is written, and what the serving image must contain."""

    model: dict[str, Any]
    threads: int
    gpus: int
    memory_floor: int
    memory_basis: str
    urls: dict[str, str]
    serving_runtime: dict[str, Any] | None = None
    dockerfile: str | None = None
    unmeasured: list[str] = field(default_factory=list)  # what needs memory the floor does not count


def _model_urls(models: dict[str, str]) -> dict[str, str]:
    return {f"/v2/models/{name}/infer": takes for name, takes in models.items()}


def triton_plan(repo: str | Path, options: KServeOptions) -> PredictorPlan:
    """The predictor for a Triton repository: read and checked as Triton loads it (:func:`read_repository`),
    its GPU and CPU needs from the configs, the memory of its CPU models measured."""
    from .triton_layout import read_repository

    repository = read_repository(repo)
    last = options.storage_uri.rstrip("/").rsplit("/", 1)[-1]
    if last in repository.models and last != Path(repo).resolve().name:
        raise ArgumentError(f"--storage-uri ends in {last}/, a model folder: Triton reads the folder it names as the "
                            f"repository root and would look for {last}/1/config.pbtxt (kserve#1075); give the "
                            "repository's own URI")
    on_gpu = [m.name for m in repository.models.values() if m.on_gpu]
    if on_gpu and not options.gpus:
        raise ArgumentError(f"{', '.join(on_gpu)} run on GPU instances (KIND_GPU): give --gpus 1, or the pod lands on "
                            "a node without a GPU and Triton fails to load them; or write the repository with "
                            "`triton --kind cpu`")
    if options.gpus and not on_gpu:
        raise ArgumentError(f"no model of {repo} has GPU instances: --gpus {options.gpus} would hold GPUs idle (and "
                            "the pod waits for `Insufficient nvidia.com/gpu`); write it with `triton --kind gpu`")
    model = {"model_format": ("triton", "2"), "runtime": TRITON_RUNTIME, "protocol_version": "v2",
             "storage_uri": options.storage_uri, "runtime_version": options.runtime_version or TESTED_TRITON_CONTAINER}
    dockerfile = _triton_image(model, repository.python_models, options) if repository.python_models else None
    floor, basis, unmeasured = _repository_memory(repository)  # last: seconds per model, after every refusal
    return PredictorPlan(
        model=model, threads=sum(m.cpu_threads for m in repository.models.values()), gpus=options.gpus,
        memory_floor=floor, memory_basis=basis, unmeasured=unmeasured, dockerfile=dockerfile,
        urls=_model_urls({m.name: "encoded images (BYTES)" if m.takes_images else f"tensors {list(m.input_dims)}"
                          for m in repository.models.values() if m.backend != "python"}))


def _triton_image(model: dict[str, Any], python_models: list[str], options: KServeOptions) -> str:
    """Models on Triton's python backend need numpy and Pillow, which NVIDIA's tritonserver image lacks: the
    service pointed at the image given (``model``'s fields), and the Dockerfile of what it must contain."""
    tag = options.runtime_version or TESTED_TRITON_CONTAINER
    if not options.image:
        raise ArgumentError(f"{', '.join(python_models)} run on Triton's python backend with Pillow, which "
                            f"nvcr.io/nvidia/tritonserver:{tag} lacks: build FROM it with `pip install numpy "
                            "pillow`, push it and give --image")
    model.pop("runtime_version")  # the image given is the whole image, its tag included
    model["image"] = options.image
    return (f"# {', '.join(python_models)}: Triton's python backend decoding images with Pillow\n"
            f"FROM nvcr.io/nvidia/tritonserver:{tag}\nRUN pip install --no-cache-dir numpy pillow\n")


def _repository_memory(repository: Any) -> tuple[int, str, list[str]]:
    """The memory the repository's models take, measured: each model with CPU instances in a fresh process
    (its config's threads, a session per instance, a batch of its max_batch_size), the peaks above the
    process's baseline summed, plus one baseline. Returns the floor, how it was found, and the models that
    could not be measured here (GPU instances, Triton's python stubs, symbolic dims)."""
    from ..target.memory import MemorySpec, measure_peak

    measured, baseline, notes, unmeasured = 0, 0, [], []
    for model in repository.models.values():
        cpu = model.instances.get("KIND_CPU", 0)
        if model.backend == "ensemble":
            continue
        if model.backend not in ("onnxruntime", "openvino") or not cpu or model.on_gpu or min(model.input_dims) < 0:
            unmeasured.append(f"{model.name} ({_why_unmeasured(model)})")
            continue
        peak = measure_peak(MemorySpec(batch=model.max_batch, threads=model.threads, sessions=cpu, model_file=str(model.model_file),
                                       engine=model.backend, input_dims=model.input_dims, input_dtype=model.input_dtype))
        measured += peak.peak_bytes - peak.baseline_bytes
        baseline = max(baseline, peak.baseline_bytes)
        notes.append(f"{model.name}: {peak.describe()}")
    return measured + baseline, "; ".join(notes) or "nothing measured", unmeasured


def _why_unmeasured(model: Any) -> str:
    if model.on_gpu:
        return "GPU instances"
    if model.backend == "python":
        return "Triton's python backend, a stub process of its own"
    if min(model.input_dims, default=0) < 0:
        return "symbolic input dims"
    return f"Triton's {model.backend} backend"


def serve_plan(artifact: str | Path, options: KServeOptions) -> PredictorPlan:
    """The predictor for an artifact under ``resnet-deploy serve``: the storage URI is the folder holding it and
    its manifest (mounted at /mnt/models), its threads the CPUs requested, its memory measured at the batcher's
    largest batch."""
    from ..artifacts import manifest_for, split_artifact_name
    from ..backends.registry import artifact_format

    path = Path(artifact)
    if path.is_dir():
        raise ArgumentError(f"{path} is a folder: --runtime serve takes an artifact file (a Triton repository is "
                            "--runtime triton's)")
    manifest, precision = manifest_for(path)
    if options.storage_uri.rstrip("/").endswith("/" + path.name):
        raise ArgumentError(f"--storage-uri names the file {path.name}: give the folder holding it and its manifest "
                            f"{manifest.stem}.json (KServe mounts that folder at {MODEL_ROOT})")
    if artifact_format(precision) == "engine" and not options.gpus:
        raise ArgumentError(f"{path.name} is a TensorRT engine, which runs on a GPU: give --gpus 1")
    threads = max(1, math.floor(options.cpus or 1))
    here = min(threads, os.cpu_count() or 1)  # loaded and measured with the threads this machine has
    served, backend, max_batch = _served_configuration(path, manifest, precision, here, on_gpu=bool(options.gpus))
    name = options.model_name or split_artifact_name(path)[0]
    floor, basis, unmeasured = _artifact_memory(served, backend, here, max_batch, on_gpu=bool(options.gpus))
    args = [f"{MODEL_ROOT}/{served.name}", "--model-name", name, "--backend", backend, "--threads", str(threads)]
    return PredictorPlan(
        model={"model_format": SERVE_FORMAT, "runtime": options.name + "-runtime", "protocol_version": "v2",
               "storage_uri": options.storage_uri, "args": args},
        threads=threads, gpus=options.gpus, memory_floor=floor, memory_basis=basis, unmeasured=unmeasured,
        urls=_model_urls({name: f"tensors {list(manifest.example_shape)}"}),
        serving_runtime=_serving_runtime(options),
        dockerfile=_serve_dockerfile(backend, bool(options.gpus)))


def _served_configuration(path: Path, manifest: Any, precision: str, threads: int, *,
                          on_gpu: bool) -> tuple[Path, str, int]:
    """(the file the pod serves, its backend, the batcher's largest batch), resolved here and written into the
    pod's arguments, so the pod runs what was checked: on CPU, loaded as ``serve`` loads it (``auto``: tune's
    plan, which may name another file of the export); on GPU (not here), the file's own backend."""
    from ..backends.registry import artifact_format, backend_for
    from ..target.runtime import load
    from .limits import SERVE_MAX_BATCH, ServeLimits

    if on_gpu:
        backend = backend_for("auto", artifact_format(precision), path.name).name
        return path, backend, min(manifest.batch.max, SERVE_MAX_BATCH)
    with load(path, threads=threads) as runner:
        return Path(runner.artifact), runner.backend, ServeLimits().for_runner(runner).max_batch


def _artifact_memory(path: Path, backend: str, threads: int, batch: int, *,
                     on_gpu: bool) -> tuple[int, str, list[str]]:
    """(floor, how it was found, what could not be measured): the artifact run as serve runs it, on CPU."""
    from ..target.memory import MemorySpec, measure_peak

    if on_gpu:
        return 0, "nothing measured", [f"{path.name} (it runs on a GPU)"]
    peak = measure_peak(MemorySpec(batch=batch, threads=threads, artifact=str(path), backend=backend))
    return peak.peak_bytes, peak.describe(), []


def _serve_dockerfile(backend: str, gpu: bool) -> str:
    from ..environment import package_version

    extras = ["serve"] + (["openvino"] if backend == "openvino" else []) + (["gpu"] if gpu else [])
    return ("# what the ServingRuntime's image must contain: resnet-deploy with the serve extra (and the backend's)\n"
            "FROM python:3.11-slim\n"
            f"RUN pip install --no-cache-dir 'resnet-deploy[{','.join(extras)}]=={package_version('resnet-deploy')}'\n")


def _serving_runtime(options: KServeOptions) -> dict[str, Any]:
    """The ServingRuntime running ``resnet-deploy serve`` from ``options.image`` on KServe's port, ready and
    live by the protocol's health routes; the service's own arguments (the file, threads) follow its."""
    from kubernetes import client

    def probe(path: str, period: int, failures: int) -> Any:
        return client.V1Probe(http_get=client.V1HTTPGetAction(path=path, port=HTTP_PORT), period_seconds=period,
                              failure_threshold=failures)

    container = client.V1Container(
        name=CONTAINER, image=options.image, command=["resnet-deploy"],
        args=["serve", "--host", "0.0.0.0", "--port", str(HTTP_PORT)],
        ports=[client.V1ContainerPort(container_port=HTTP_PORT, name="http1", protocol="TCP")],
        readiness_probe=probe("/v2/health/ready", 5, 3), liveness_probe=probe("/v2/health/live", 10, 6))
    return {"containers": [container], "format": SERVE_FORMAT}


def _resources(plan: PredictorPlan, options: KServeOptions) -> tuple[dict[str, str], list[str]]:
    """The container's requests, equal to its limits (the runtimes' threads get the CPUs they count on, and
    the memory is what the scheduler reserves), and the lines saying how each was chosen.

    Raises:
        ArgumentError: fewer CPUs than the runtimes' threads; less memory than the measured floor; no
            ``--memory`` where part of what runs could not be measured here.
    """
    cpus = options.cpus if options.cpus is not None else max(1, plan.threads)
    if cpus < plan.threads:
        fewer = "a smaller --cpus for the pod is --cpus itself" if options.runtime == "serve" else (
            "or write the repository with fewer `triton --threads` or `--instances`")
        raise ArgumentError(f"the models compute with {plan.threads} threads at once but --cpus is {cpus:g}: they "
                            f"would contend for {cpus:g} CPUs; give --cpus {plan.threads} or more, {fewer}")
    if plan.unmeasured and not options.memory:
        rest = f" (at least {_mebibytes(plan.memory_floor)} measured for the rest)" if plan.memory_floor else ""
        raise ArgumentError(f"the memory of {', '.join(plan.unmeasured)} cannot be measured here: give --memory{rest}")
    floor = plan.memory_floor
    memory = memory_bytes(options.memory) if options.memory else -(-int(floor * MEMORY_HEADROOM) // MEMORY_STEP) * MEMORY_STEP
    if memory < floor:
        raise ArgumentError(f"--memory {options.memory} is below the models' {_mebibytes(floor)} ({plan.memory_basis}): "
                            f"the pod would be OOMKilled (kserve#2361); give --memory {_mebibytes(floor * MEMORY_HEADROOM)}"
                            " or more")
    resources = {"cpu": _cpu_quantity(cpus), "memory": _mebibytes(memory)}
    if plan.gpus:
        resources["nvidia.com/gpu"] = str(plan.gpus)
    threads = (f"{plan.threads} thread{'s' if plan.threads != 1 else ''} compute at once" if plan.threads
               else "no CPU instance computes: the server's own")
    measured = f"floor {_mebibytes(floor)}: {plan.memory_basis}" + (
        f"; not measured: {', '.join(plan.unmeasured)}" if plan.unmeasured else "")
    how = [f"cpu {resources['cpu']}: " + ("given" if options.cpus is not None else "the models' threads") +
           f" ({threads})",
           f"memory {resources['memory']}: " + ("given" if options.memory else f"{MEMORY_HEADROOM:g} x the floor") +
           f" ({measured})"]
    return resources, how


def inference_service(plan: PredictorPlan, options: KServeOptions, resources: dict[str, str]) -> Any:
    """The ``V1beta1InferenceService`` (the KServe SDK's model) of ``plan``."""
    from kubernetes import client

    kserve = kserve_models()

    model = dict(plan.model)
    model_format = model.pop("model_format")
    spec = kserve.V1beta1ModelSpec(name=CONTAINER, model_format=kserve.V1beta1ModelFormat(name=model_format[0],
                                                                                         version=model_format[1]),
                                   resources=client.V1ResourceRequirements(requests=resources, limits=dict(resources)),
                                   **model)
    predictor = kserve.V1beta1PredictorSpec(model=spec, min_replicas=options.min_replicas,
                                            max_replicas=options.max_replicas, scale_metric=options.scale_metric,
                                            scale_target=options.scale_target,
                                            canary_traffic_percent=options.canary)
    metadata = client.V1ObjectMeta(name=options.name, namespace=options.namespace,
                                   annotations={MODE_ANNOTATION: MODES[options.mode]})
    return kserve.V1beta1InferenceService(api_version=f"{KSERVE_GROUP}/v1beta1", kind="InferenceService",
                                          metadata=metadata,
                                          spec=kserve.V1beta1InferenceServiceSpec(predictor=predictor))


def serving_runtime(plan: PredictorPlan, options: KServeOptions) -> Any:
    """The ``V1alpha1ServingRuntime`` (the KServe SDK's model) that ``--runtime serve``'s service names."""
    from kubernetes import client

    kserve = kserve_models()

    runtime = plan.serving_runtime or {}
    name, version = runtime["format"]
    spec = kserve.V1alpha1ServingRuntimeSpec(
        supported_model_formats=[kserve.V1alpha1SupportedModelFormat(name=name, version=version, auto_select=False)],
        protocol_versions=["v2"], containers=runtime["containers"], multi_model=False)
    return kserve.V1alpha1ServingRuntime(api_version=f"{KSERVE_GROUP}/v1alpha1", kind="ServingRuntime",
                                         metadata=client.V1ObjectMeta(name=plan.model["runtime"],
                                                                      namespace=options.namespace),
                                         spec=spec)


PRIMITIVES = {"str": str, "int": int, "float": float, "bool": bool, "object": object, "date": str, "datetime": str}


def to_document(value: Any) -> Any:
    """A KServe or Kubernetes model as the JSON/YAML object the API server reads: each set field under its
    API name (``attribute_map``), recursively. (The Kubernetes client's own serializer writes the KServe SDK's
    models with their Python names since its pydantic models.)"""
    if isinstance(value, (list, tuple)):
        return [to_document(item) for item in value]
    if isinstance(value, dict):
        return {key: to_document(item) for key, item in value.items()}
    if hasattr(value, "attribute_map") and hasattr(value, "openapi_types"):
        return {value.attribute_map[name]: to_document(getattr(value, name)) for name in value.openapi_types
                if getattr(value, name) is not None}
    return value


def from_document(data: Any, type_name: str) -> Any:
    """``data`` read back into the SDKs' model ``type_name`` (a class of ``kserve.models`` or the Kubernetes
    client's), every field by its API name.

    Raises:
        DeployError: a field the model does not have (a renamed or made-up one: KServe's API server would
            drop or refuse it).
    """
    from kubernetes.client import models as kubernetes_models

    models = kserve_models()

    if type_name.lower().startswith("list["):  # the KServe SDK writes list[T], the Kubernetes client List[T]
        return [from_document(item, type_name[5:-1]) for item in data]
    if type_name.lower().startswith(("dict(", "dict[")):  # dict(str, T) and Dict[str, T]
        value_type = type_name[5:-1].split(", ", 1)[1]
        return {key: from_document(value, value_type) for key, value in data.items()}
    if type_name in PRIMITIVES:
        return data
    cls = getattr(models, type_name, None) or getattr(kubernetes_models, type_name)
    fields = {api: attribute for attribute, api in cls.attribute_map.items()}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise DeployError(f"{type_name} has no field {', '.join(unknown)}")
    return cls(**{fields[key]: from_document(value, cls.openapi_types[fields[key]]) for key, value in data.items()})


def round_trip(document: dict[str, Any], type_name: str) -> None:
    """Check ``document`` reads back into the SDKs' ``type_name`` and writes out the same: no field lost,
    renamed or of another type.

    Raises:
        DeployError: where it does not.
    """
    again = to_document(from_document(document, type_name))
    if again != document:
        raise DeployError(f"the {type_name} written does not read back as itself through the KServe SDK")


@dataclass(frozen=True)
class KServeManifests:
    """What ``kserve`` wrote: the manifest file (a ServingRuntime first where one is written, then the
    InferenceService), the Dockerfile of the image it needs (None: the stock one), the URLs clients call, the
    resources requested and how each was chosen."""

    manifest: Path
    dockerfile: Path | None
    name: str
    namespace: str
    urls: dict[str, str]
    resources: dict[str, str]
    how: list[str]

    def url(self, path: str) -> str:
        """``path`` on the predictor's in-cluster address."""
        return f"http://{self.name}{PREDICTOR_SUFFIX}.{self.namespace}.svc.cluster.local{path}"

    def to_dict(self) -> dict[str, Any]:
        return {"manifest": str(self.manifest), "dockerfile": str(self.dockerfile) if self.dockerfile else None,
                "name": self.name, "namespace": self.namespace, "resources": self.resources, "how": self.how,
                "urls": {self.url(path): takes for path, takes in self.urls.items()}}

    def to_text(self) -> str:
        lines = [f"wrote {self.manifest}" + (f" and {self.dockerfile} (the image it needs)" if self.dockerfile else "")]
        lines += [f"  {line}" for line in self.how]
        lines.append("call, once `kubectl apply -f` made it ready (outside the cluster: the host of "
                     f"`kubectl get inferenceservice {self.name} -n {self.namespace} -o jsonpath='{{.status.url}}'`):")
        lines += [f"  {self.url(path)}  ({takes})" for path, takes in self.urls.items()]
        return "\n".join(lines)


def write_kserve(source: str | Path, out: str | Path, options: KServeOptions) -> KServeManifests:
    """Write the KServe manifests for ``source`` into ``out`` (``NAME.yaml``, and ``NAME.Dockerfile`` where the
    serving image needs more than the stock one), after every check (see the module's docstring).

    Args:
        source: a Triton repository root (``--runtime triton``) or an artifact file (``--runtime serve``).
        out: the folder to write into (created).
        options: the service asked for (:class:`KServeOptions`).

    Returns:
        The :class:`KServeManifests`: files, URLs, resources and how they were chosen.

    Raises:
        ArgumentError: an option KServe would refuse or a combination that cannot work; DeployError: a repository
            or artifact Triton or ``serve`` would not load.
    """
    import yaml

    kserve_models()  # the extra first, before any option is read
    options = options.check()
    plan = triton_plan(source, options) if options.runtime == "triton" else serve_plan(source, options)
    resources, how = _resources(plan, options)
    documents = [(to_document(inference_service(plan, options, resources)), "V1beta1InferenceService")]
    if plan.serving_runtime is not None:
        documents.insert(0, (to_document(serving_runtime(plan, options)), "V1alpha1ServingRuntime"))
    for document, type_name in documents:
        round_trip(document, type_name)
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeployError(f"cannot create {folder}: {exc.strerror}") from None
    manifest, dockerfile = folder / f"{options.name}.yaml", folder / f"{options.name}.Dockerfile"
    if plan.dockerfile:  # the image first, the manifest that needs it last
        with atomic_open(dockerfile) as handle:
            handle.write(plan.dockerfile)
    else:
        if dockerfile.is_file():
            dockerfile.unlink()  # a Dockerfile of an earlier run is not this manifest's
    with atomic_open(manifest) as handle:
        yaml.safe_dump_all([document for document, _ in documents], handle, sort_keys=False)
    dockerfile = dockerfile if plan.dockerfile else None
    return KServeManifests(manifest, dockerfile, options.name, options.namespace, plan.urls, resources, how)
