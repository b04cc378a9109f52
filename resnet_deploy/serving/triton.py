"""Write an artifact into a Triton Inference Server model repository.

    REPO/NAME/config.pbtxt
    REPO/NAME/VERSION/model.onnx   (platform onnxruntime_onnx)   or model.plan (tensorrt_plan)
    REPO/NAME/imagenet_labels.txt  (classifiers with 1000 classes: Triton's label file for classification)

Dims leave out the batch axis (Triton adds it up to ``max_batch_size``). Every file is written
atomically, and nothing is destroyed: ``REPO/NAME/resnet_deploy.json`` records which artifact each
version holds, so a new artifact of the same model becomes a new version, the same artifact updates
its own, a model of another export (or one this toolkit did not write) is refused unless ``force``,
and a config that could not serve a version already there (another platform, other inputs or
outputs) is refused with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..artifacts import LOGITS, Manifest, TensorSpec, check_stem, manifest_for
from ..backends import detect
from ..backends.registry import BACKENDS, Backend, artifact_format, backend_for
from ..data import imagenet_classes
from ..environment import physical_cores
from ..errors import DeployError, within
from ..fileio import Staging, atomic_open, locked, sha256_file, special_file
from ..precisions import PRECISIONS
from .codec import OIP_DATATYPES

MODEL_FILES = {"onnx": "model.onnx", "engine": "model.plan"}  # artifact format -> Triton's default model file
LABELS_FILE = "imagenet_labels.txt"
PREPROCESS_SUFFIX, ENSEMBLE_SUFFIX = "_preprocess", "_ensemble"  # the models --ensemble adds beside NAME
RECORD_FILE = "resnet_deploy.json"  # which artifact each version holds
KINDS = ("auto", "gpu", "cpu")  # Triton instance group kinds; auto: cpu for ONNX where no GPU is visible
# The Triton the written repositories are tested against (the suite's real server: nvidia-pytriton 0.7.0's
# tritonserver, which reports this version), and NVIDIA's container of that release: KServe's runtimeVersion
TESTED_TRITON_VERSION = "2.51.0"
TESTED_TRITON_CONTAINER = "24.10-py3"
MAX_INSTANCES = 64
MAX_QUEUE_DELAY_US = 10_000_000


@dataclass(frozen=True)
class TritonOptions:
    model_name: str | None = None
    max_batch: int | None = None  # default: the artifact profile's MAX
    preferred: tuple[int, ...] = ()
    queue_delay_us: int = 100
    instances: int = 1
    kind: str = "auto"  # one of KINDS
    version: int | None = None  # None: the version holding this artifact, else the next free one
    backend: str = "auto"  # the registry's backend whose Triton backend serves it; auto: tune's plan, else the file's own
    ensemble: bool = False  # also NAME_preprocess (encoded images in) and NAME_ensemble chaining it to NAME
    threads: int | None = None  # CPU threads of the backend (default: the physical cores shared by the instances)
    throughput: bool = False  # OpenVINO's throughput hint (its streams) instead of one stream per instance


@dataclass(frozen=True)
class ModelWritten:
    """What ``write_model_repository`` wrote: the model's folder, the version, the file and backend it serves,
    what that backend computes there, and how ``--backend auto`` chose them (None: not asked)."""

    folder: Path
    version: int
    artifact: Path
    backend: str
    computes: str
    selection: str | None = None
    ensemble: bool = False  # NAME_preprocess and NAME_ensemble written beside it

    def to_text(self) -> str:
        """What was written where, and what the model computes there."""
        lines = [f"wrote {self.folder}/config.pbtxt and {self.folder}/{self.version}/",
                 f"  {self.artifact.name} on Triton's {self.backend} backend, computing {self.computes}"]
        if self.ensemble:
            lines += [f"wrote {self.folder}{suffix}/config.pbtxt and {self.folder}{suffix}/1/"
                      for suffix in (PREPROCESS_SUFFIX, ENSEMBLE_SUFFIX)]
        return "\n".join(lines)


def _triton_type(dtype: str) -> str:
    """A model config's data type for a numpy dtype: ``TYPE_`` and the protocol's name (``TYPE_FP32``)."""
    return "TYPE_" + OIP_DATATYPES[dtype]


def _dims(shape: list) -> list[int]:
    """Dims without the batch axis; symbolic dims become -1."""
    return [d if isinstance(d, int) else -1 for d in shape[1:]]


class Enum(str):
    """A protobuf enum value: written bare (``TYPE_FP32``), not quoted."""


def to_pbtxt(message: dict[str, Any], indent: int = 0) -> str:
    """``message`` in protobuf text format: dicts are messages, lists of dicts repeated messages (and map
    entries), other lists repeated scalars; strings are quoted and escaped."""
    pad, lines = "  " * indent, []
    for key, value in message.items():
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", to_pbtxt(value, indent + 1), f"{pad}}}"]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{pad}{key} [")
            for index, item in enumerate(value):
                lines += [f"{pad}  {{", to_pbtxt(item, indent + 2), f"{pad}  }}" + (", " if index < len(value) - 1 else "")]
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(map(_scalar, value))} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(line.rstrip() for line in lines if line)


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _string_parameters(values: dict[str, str]) -> list[dict[str, Any]]:
    return [{"key": key, "value": {"string_value": value}} for key, value in values.items()]


def _batching(options: TritonOptions, *, preferred: bool = True) -> dict[str, Any]:
    batching: dict[str, Any] = {}
    if preferred and options.preferred:
        batching["preferred_batch_size"] = list(options.preferred)
    batching["max_queue_delay_microseconds"] = options.queue_delay_us
    return batching


def _instances(options: TritonOptions, kind: str | None = None) -> list[dict[str, Any]]:
    return [{"count": options.instances, "kind": Enum("KIND_GPU" if (kind or options.kind) == "gpu" else "KIND_CPU")}]


def _tensor(name: str, dtype: str, dims: list[int], **extra: Any) -> dict[str, Any]:
    return {"name": name, "data_type": Enum(dtype), **extra, "dims": dims}


def _outputs(outputs: list[TensorSpec], labels: bool) -> list[dict[str, Any]]:
    """The network's outputs; with ``labels``, ImageNet's class names on the logits (the classification extension)."""
    return [_tensor(o.name, _triton_type(o.dtype), _dims(o.shape),
                    **({"label_filename": LABELS_FILE} if labels and o.name == LOGITS else {}))
            for o in outputs]


def _labels_text() -> str:
    return "\n".join(imagenet_classes()) + "\n"


def config_message(name: str, backend: Backend | None, tensors: tuple[TensorSpec, list[TensorSpec]],
                   options: TritonOptions, *, nhwc: bool, labels: bool) -> dict[str, Any]:
    """Triton's ModelConfig for a model of one input, as nested dicts (:class:`Enum` for enum values, lists of
    ``{"key", "value"}`` for map fields): what the repository writer renders as config.pbtxt and ``serve``
    answers on ``/v2/models/NAME/config`` as JSON (:func:`to_json`), one description in both forms.

    Args:
        name: the model's name.
        backend: the registry's backend that runs it (None: a runner of no registered backend).
        tensors: the input and the outputs, with the batch axis.
        options: max batch (resolved), preferred sizes, queue delay, instances and their kind.
        nhwc: the input is pixels in NHWC (preprocessing embedded), else NCHW.
        labels: ImageNet's label file on the logits (the classification extension).

    Returns:
        The message, without the per-backend CPU settings (the writer adds Triton's own).
    """
    input_spec, outputs = tensors
    config: dict[str, Any] = {"name": name}
    if backend is None:
        config["platform"] = "unknown"
    else:
        config[backend.triton_key] = backend.platform
        if backend.triton_key == "backend":  # a backend that reads several formats is told which file to load
            config["default_model_filename"] = MODEL_FILES[backend.runs]
    config["max_batch_size"] = options.max_batch
    config["input"] = [_tensor(input_spec.name, _triton_type(input_spec.dtype), _dims(input_spec.shape),
                               format=Enum("FORMAT_NHWC" if nhwc else "FORMAT_NCHW"))]
    config["output"] = _outputs(outputs, labels)
    config["dynamic_batching"] = _batching(options)
    config["instance_group"] = _instances(options)
    return config


def model_config(manifest: Manifest, backend: Backend, name: str, options: TritonOptions, *, labels: bool) -> str:
    """config.pbtxt for the artifact, in protobuf text format (Triton's ModelConfig), with the backend's CPU
    settings on CPU instances."""
    config = config_message(name, backend, (manifest.input, manifest.outputs), options,
                            nhwc=manifest.embedded_preprocess, labels=labels)
    if options.kind == "cpu" and backend.name in CPU_SETTINGS:
        config.update(CPU_SETTINGS[backend.name](options))
    return to_pbtxt(config) + "\n"


def to_json(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` (:func:`config_message`) in Triton's JSON form, as its ``/config`` endpoint answers and
    ``google.protobuf.json_format`` reads: map fields as objects, enum values as their names, and the names
    Triton gives instance groups it loads (``NAME_0``)."""
    def convert(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, list) and value and all(isinstance(i, dict) and i.keys() == {"key", "value"}
                                                     for i in value):
            return {item["key"]: convert(item["value"]) for item in value}
        if isinstance(value, list):
            return [convert(item) for item in value]
        return str(value) if isinstance(value, Enum) else value

    config = convert(message)
    for index, group in enumerate(config.get("instance_group", [])):
        group.setdefault("name", f"{config['name']}_{index}")
    return config


def _threads_per_instance(options: TritonOptions) -> int:
    """The threads given (a plan's) or the physical cores, shared by the instances."""
    return max(1, (options.threads or physical_cores()) // options.instances)


def _onnxruntime_cpu_settings(options: TritonOptions) -> dict[str, Any]:
    """What decides ONNX Runtime's CPU speed under Triton: intra-op threads (the physical cores shared by
    the instances, as `runtime.load` uses them; left unset, every instance takes all of them and they
    contend), one inter-op thread, and every graph optimisation (level 0 in the onnxruntime backend)."""
    threads = _threads_per_instance(options)
    return {"parameters": _string_parameters({"intra_op_thread_count": str(threads), "inter_op_thread_count": "1"}),
            "optimization": {"graph": {"level": 0}}}


def _openvino_cpu_settings(options: TritonOptions) -> dict[str, Any]:
    """OpenVINO's under Triton: the threads shared by the instances; one stream each and the latency hint
    (Triton's instances are the parallelism), or the throughput hint with OpenVINO's own streams."""
    parameters = {"INFERENCE_NUM_THREADS": str(_threads_per_instance(options))}
    parameters.update({"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": "AUTO"} if options.throughput
                      else {"NUM_STREAMS": "1", "PERFORMANCE_HINT": "LATENCY"})
    return {"parameters": _string_parameters(parameters)}


def triton_computes(manifest: Manifest, precision: str, backend: Backend) -> str:
    """What Triton's backend computes for a file of ``precision``, refused where that was not verified.

    Triton's OpenVINO backend has no key to pin f32 inference (its one precision key, HINT_BF16, asks for
    bf16), so on a CPU with native bf16 OpenVINO computes the float parts of any file in bf16, which the
    toolkit's own runner avoids by pinning f32. That is served only for the fp32 file whose bf16 run passed
    the export's bf16 gate (``export --bf16`` on such a CPU).

    Raises:
        DeployError: the OpenVINO backend on a file whose bf16 computation was not verified.
    """
    if backend.name != "openvino":
        return precision
    fp32_file = PRECISIONS["bf16"].runs_file
    if precision == fp32_file and (manifest.precision_options.get("bf16") or {}).get("verified"):
        return f"{fp32_file}, and bf16 on CPUs with native bf16 (verified by export --bf16)"
    how = ("export --bf16 on a CPU with native bf16 verifies it" if precision == fp32_file else
           f"give the {fp32_file} file with a verified bf16 (export --bf16)")
    raise DeployError(f"Triton's OpenVINO backend cannot pin f32 inference (its one precision key is HINT_BF16): on "
                      f"CPUs with native bf16 it computes this {precision} file in bf16, which this export has not "
                      f"verified; {how}, or use --backend ort (computes the file as written)")


# backend -> the config fields that decide its speed on Triton's CPU instances
CPU_SETTINGS = {"ort": _onnxruntime_cpu_settings, "openvino": _openvino_cpu_settings}


def _check(options: TritonOptions, manifest: Manifest, backend: Backend) -> TritonOptions:
    if options.kind not in KINDS:
        raise DeployError(f"--kind must be one of {', '.join(KINDS)}, not {options.kind!r}")
    gpu_only, cpu_only = not backend.on_cpu(backend.options()), backend.gpu is None
    if gpu_only and options.kind == "cpu":
        raise DeployError(f"a {backend.title} model runs on a GPU: use --kind gpu, or serve the ONNX on CPU")
    if cpu_only and options.kind == "gpu":
        raise DeployError(f"Triton's {backend.title} backend runs on CPU instances only: use --kind cpu")
    kind = options.kind
    if kind == "auto":  # a KIND_GPU model does not load on a Triton without GPUs ("no GPUs are available")
        kind = "gpu" if gpu_only or (not cpu_only and detect.cuda_gpu()) else "cpu"
    max_batch = manifest.batch.max if options.max_batch is None else options.max_batch
    if not 1 <= max_batch <= manifest.batch.max:
        raise DeployError(f"--max-batch {max_batch} is outside the artifact's profile (1 to {manifest.batch.max}): "
                          "re-export with a larger --batch MAX")
    bad = [b for b in options.preferred if not 1 <= b <= max_batch]
    if bad:
        raise DeployError(f"--preferred sizes {bad} must lie between 1 and the max batch {max_batch}")
    within("--instances", options.instances, 1, MAX_INSTANCES, "per device")
    if options.threads is not None:
        within("--threads", options.threads, options.instances, 4096, "at least one per instance")
    if options.version is not None:
        within("--version", options.version, 1, 2**31 - 1)
    within("--queue-delay-us", options.queue_delay_us, 0, MAX_QUEUE_DELAY_US)
    return replace(options, max_batch=max_batch, preferred=tuple(sorted(set(options.preferred))), kind=kind)


def _auto(artifact: Path, manifest: Manifest, precision: str,
          options: TritonOptions) -> tuple[Path, Manifest, str, TritonOptions, str]:
    """``--backend auto``: tune's choice for the export on this kind of CPU (its file, backend, threads and
    hint), else the file's own backend; a choice whose computation Triton's backend would change (OpenVINO
    on a bf16 CPU) is served by ONNX Runtime instead, which computes that file as it was verified.
    Returns the file served, its manifest and precision, the options, and how it was chosen."""
    from ..target.runtime import tuned_configuration

    chosen, selection = tuned_configuration(artifact, manifest, precision)
    if chosen is None:
        own = backend_for("auto", artifact_format(precision), artifact.name).name
        return artifact, manifest, precision, replace(options, backend=own), selection
    path = artifact.parent / chosen.artifact
    if path != artifact:
        manifest, precision = manifest_for(path)
    computed = PRECISIONS["bf16"].runs_file if chosen.own.get("bf16") else precision
    try:
        triton_computes(manifest, computed, BACKENDS[chosen.backend])
    except DeployError as exc:
        return path, manifest, precision, replace(options, backend="ort", threads=options.threads or chosen.threads), (
            f"{selection}; served by ONNX Runtime, not OpenVINO: {exc}")
    return path, manifest, precision, replace(options, backend=chosen.backend, threads=options.threads or chosen.threads,
                                              throughput=options.throughput or bool(chosen.own.get("throughput"))), selection


def write_model_repository(artifact: str | os.PathLike[str], repo: str | os.PathLike[str],
                           options: TritonOptions = TritonOptions(), *, force: bool = False) -> ModelWritten:
    """Add ``artifact`` to the repository ``repo`` as a version of its model.

    Args:
        artifact: an artifact file (its manifest beside it).
        repo: the model repository folder (created or updated).
        options: the model's name, batching, instances, backend (``auto``: tune's plan for the export on this
            kind of CPU, which may name another file of the export), CPU settings.
        force: replace a model of another export (or one not written here).

    Returns:
        The :class:`ModelWritten`: folder, version, the file and backend served, what it computes, and how
        ``auto`` chose.

    Raises:
        DeployError: bad options, a backend that cannot serve the file as verified, or a model there that
            this write would destroy.
    """
    artifact, selection = Path(artifact), None
    manifest, precision = manifest_for(artifact)
    if options.backend == "auto":
        artifact, manifest, precision, options, selection = _auto(artifact, manifest, precision, options)
    kind = artifact_format(precision)
    backend = backend_for(options.backend, kind, artifact.name)
    if backend.runs not in MODEL_FILES:
        raise DeployError(f"Triton serves artifacts, not the {backend.title} model: use --backend "
                          f"{' or '.join(b.name for b in BACKENDS.values() if b.runs == kind)}")
    computes = triton_computes(manifest, precision, backend)
    options = _check(options, manifest, backend)
    name = check_stem(options.model_name or manifest.stem)
    model_dir = Path(repo) / name
    entry = {"artifact": artifact.name, "sha256": manifest.artifact(precision).sha256, "model": _model(manifest),
             "interface": _interface(manifest, backend.platform), "computes": computes}
    try:
        Path(repo).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeployError(f"cannot create {repo}: {exc.strerror}") from None
    with locked(Path(repo) / f".{name}.resnet_deploy"):  # two writers of a model: one record, a version each
        version = _write_model(artifact, model_dir, entry, manifest, backend, options, force)
    return ModelWritten(model_dir, version, artifact, backend.name, computes, selection, options.ensemble)


def _write_model(artifact: Path, model_dir: Path, entry: dict[str, Any], manifest: Manifest, backend: Backend,
                 options: TritonOptions, force: bool) -> int:
    """The version folder, the label file, the record and the config (last), under the model's lock."""
    name, filename = model_dir.name, MODEL_FILES[backend.runs]
    with Staging(model_dir.parent) as staging:
        copied = _verified_copy(artifact, staging, entry["sha256"])  # before anything there changes
        record = _read_record(model_dir)
        replaced = _replaced_model(model_dir, record, entry)
        if replaced is not None:
            if not force:
                raise DeployError(f"{model_dir} {replaced}: choose another --model-name, or --force to replace it")
            _remove_model(model_dir)
            record = {"versions": {}}
        version = _choose_version(model_dir, record, entry, options.version, force)
        version_dir = model_dir / str(version)
        try:
            version_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DeployError(f"cannot create {version_dir}: {exc.strerror}") from None
        staging.commit(copied, version_dir / filename)
    labels = manifest.num_classes == 1000 and any(o.name == LOGITS for o in manifest.outputs)
    if labels:
        with atomic_open(model_dir / LABELS_FILE) as handle:
            handle.write(_labels_text())
    record["versions"][str(version)] = entry
    with atomic_open(model_dir / RECORD_FILE) as handle:
        json.dump(record, handle, indent=2)
    with atomic_open(model_dir / "config.pbtxt") as handle:  # last: Triton never sees a config without its model
        handle.write(model_config(manifest, backend, name, options, labels=labels))
    if options.ensemble:
        write_ensemble(model_dir.parent, name, manifest, options, labels=labels, force=force)
    return version


def _verified_copy(artifact: Path, staging: Staging, sha256: str) -> Path:
    """``artifact`` copied to a staged file whose bytes are those verified (``sha256``): the file served is the
    one checked, even if the source changed since; on a mismatch nothing is written (the staging removes it)."""
    copied = staging.file(artifact.suffix)
    shutil.copyfile(artifact, copied)
    if sha256_file(copied) != sha256:
        raise DeployError(f"{artifact.name} changed since it was checked against its manifest: nothing written "
                          "(re-export it, or verify it)")
    return copied


def _model(manifest: Manifest) -> dict[str, Any]:
    """What makes two artifacts versions of one model: the export's arch, weights and classes."""
    return {"arch": manifest.arch, "weights": manifest.weights, "num_classes": manifest.num_classes}


def _interface(manifest: Manifest, platform: str) -> dict[str, Any]:
    """What one config.pbtxt fixes for every version: the platform and the tensors."""
    def text(shape: list) -> str:  # as records written before have them
        return "[ " + ", ".join(map(str, _dims(shape))) + " ]"

    return {"platform": platform, "input": [manifest.input.name, manifest.input.dtype, text(manifest.input.shape)],
            "outputs": [[o.name, o.dtype, text(o.shape)] for o in manifest.outputs]}


def _read_record(model_dir: Path) -> dict[str, Any] | None:
    """The folder's record of its versions: empty where there is no model yet, None where the model
    there was not written by this toolkit."""
    path = model_dir / RECORD_FILE
    kind = special_file(path)
    if kind is not None:
        raise DeployError(f"{path} is {kind}, not the record this toolkit writes: remove it")
    if path.is_file():
        try:
            record = json.loads(path.read_text())
            if isinstance(record, dict) and isinstance(record.get("versions"), dict):
                return record
        except (OSError, ValueError):
            pass
        raise DeployError(f"{path} is damaged: repair or remove it (it records which artifact each version holds)")
    return None if (model_dir / "config.pbtxt").exists() else {"versions": {}}


def _replaced_model(model_dir: Path, record: dict[str, Any] | None, entry: dict[str, Any]) -> str | None:
    """Why writing ``entry`` would replace the model in ``model_dir`` (another export's, or one not
    written here), or None."""
    if record is None:
        return "holds a model resnet-deploy did not write"
    model = next(iter(record["versions"].values()), {}).get("model")
    if model is not None and model != entry["model"]:
        return f"serves another model ({model['arch']}, weights {model['weights']})"
    return None


def _remove_model(model_dir: Path) -> None:
    """--force: the replaced model's config, record and version folders go (nothing else of the folder)."""
    for path in model_dir.iterdir():
        if path.is_dir() and path.name.isdigit():
            shutil.rmtree(path)
        elif path.name in ("config.pbtxt", RECORD_FILE, LABELS_FILE):
            path.unlink()


def _choose_version(model_dir: Path, record: dict[str, Any], entry: dict[str, Any], asked: int | None,
                    force: bool) -> int:
    """The version to write ``entry`` as, after refusing what would destroy or orphan another."""
    others = {int(v): e for v, e in record["versions"].items()}
    on_disk = {int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()} if model_dir.is_dir() else set()
    holding = [v for v, e in others.items() if e["sha256"] == entry["sha256"]]
    version = asked if asked is not None else (holding[0] if holding else max(on_disk | set(others), default=0) + 1)
    held = others.get(version)
    if held is not None and held["sha256"] != entry["sha256"] and not force:
        raise DeployError(f"version {version} of {model_dir.name} holds {held['artifact']} (another artifact): leave "
                          "out --version to add it as a new version, or --force to replace it")
    if version in on_disk - set(others) and not force:
        raise DeployError(f"{model_dir / str(version)} holds files resnet-deploy did not write: choose another "
                          "--version, or --force")
    for number, other in sorted(others.items()):
        if number != version and other["interface"] != entry["interface"]:
            raise DeployError(
                f"version {number} of {model_dir.name} holds {other['artifact']} ({other['interface']['platform']}, "
                f"input {other['interface']['input']}), which the new config ({entry['interface']['platform']}, "
                f"input {entry['interface']['input']}) could not serve: use another --model-name")
    return version


IMAGE_INPUT = "image"  # the ensemble's input: one encoded image (JPEG, PNG, WebP...) per batch item


def preprocess_model_source() -> str:
    """The preprocessing model's model.py: :mod:`resnet_deploy.imageprep` verbatim, then the model class of
    :mod:`.triton_preprocess` (its docstring and its import of imageprep dropped: the names are defined
    above), so it needs numpy and Pillow alone and computes what `predict` computes."""
    here = Path(__file__).resolve().parent
    template = [line for line in (here / "triton_preprocess.py").read_text().splitlines()[1:]
                if not line.startswith("from ..imageprep import")]
    return (here.parent / "imageprep.py").read_text().rstrip("\n") + "\n\n" + "\n".join(template) + "\n"


def write_ensemble(repo: Path, name: str, manifest: Manifest, options: TritonOptions, *, labels: bool,
                   force: bool) -> tuple[Path, Path]:
    """``NAME_preprocess`` (Triton's python backend: encoded images in, the network's input out, by the
    manifest's preprocessing) and ``NAME_ensemble`` (it, then ``NAME``), each with dynamic batching.
    Both are derived from the export, so they are rewritten; a folder resnet-deploy did not write for
    ``NAME`` is refused unless ``force``. Returns the two folders."""
    folders = repo / f"{name}{PREPROCESS_SUFFIX}", repo / f"{name}{ENSEMBLE_SUFFIX}"
    owner = {"ensemble_of": name}
    for folder in folders:
        if (folder / "config.pbtxt").exists() and not force and _ensemble_owner(folder) != owner:
            raise DeployError(f"{folder} holds a model resnet-deploy did not write for {name}: choose another "
                              "--model-name, or --force to replace it")
    preprocess_dir, ensemble_dir = folders
    network_input = manifest.input.name
    image = [_tensor(IMAGE_INPUT, "TYPE_STRING", [1])]
    preprocess = {
        "name": preprocess_dir.name, "backend": "python", "max_batch_size": options.max_batch, "input": image,
        # the network's input: normalised images, or the resized pixels where the network normalises them
        "output": [_tensor(network_input, _triton_type(manifest.input.dtype), list(manifest.example_shape))],
        "dynamic_batching": _batching(options, preferred=False), "instance_group": _instances(options, "cpu"),
        "parameters": _string_parameters({"preprocess": json.dumps(manifest.preprocess.to_dict())}),
    }
    ensemble = {
        "name": ensemble_dir.name, "platform": "ensemble", "max_batch_size": options.max_batch, "input": image,
        "output": _outputs(manifest.outputs, labels),
        "ensemble_scheduling": {"step": [
            {"model_name": preprocess_dir.name, "model_version": -1,
             "input_map": [{"key": IMAGE_INPUT, "value": IMAGE_INPUT}],
             "output_map": [{"key": network_input, "value": "preprocessed"}]},
            {"model_name": name, "model_version": -1, "input_map": [{"key": network_input, "value": "preprocessed"}],
             "output_map": [{"key": o.name, "value": o.name} for o in manifest.outputs]},
        ]},
    }
    for folder, config, files in ((preprocess_dir, preprocess, {"1/model.py": preprocess_model_source()}),
                                  (ensemble_dir, ensemble, {LABELS_FILE: _labels_text()}
                                   if labels else {})):
        try:
            (folder / "1").mkdir(parents=True, exist_ok=True)  # an ensemble has an empty version folder too
        except OSError as exc:
            raise DeployError(f"cannot create {folder / '1'}: {exc.strerror}") from None
        for relative, text in {**files, RECORD_FILE: json.dumps(owner, indent=2)}.items():
            with atomic_open(folder / relative) as handle:
                handle.write(text)
        with atomic_open(folder / "config.pbtxt") as handle:  # last, as for the network
            handle.write(to_pbtxt(config) + "\n")
    return folders


def _ensemble_owner(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
