"""A Triton model repository read back as Triton loads it: each model folder's config.pbtxt parsed into Triton's
own ``ModelConfig`` message (tritonclient's), its versions, its instances and threads, and what it needs from the
serving image. What ``kserve`` checks before a repository reaches a cluster: Triton loads the folder that
``storageUri`` names as the repository root (a model folder there gives ``/mnt/models/1/config.pbtxt: No such
file``, kserve#1075), and the model's name in every URL is its folder's name (kserve#2755).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DeployError
from ..fileio import special_file
from .codec import OIP_DATATYPES
from .triton import MODEL_FILES

TRITON_CONFIG = "config.pbtxt"
THREAD_PARAMETERS = {"onnxruntime": "intra_op_thread_count", "openvino": "INFERENCE_NUM_THREADS"}
PLATFORM_BACKENDS = {"onnxruntime_onnx": "onnxruntime", "tensorrt_plan": "tensorrt", "ensemble": "ensemble"}


@dataclass(frozen=True)
class RepositoryModel:
    """One model of a repository: its name (the folder's), Triton backend, largest batch, instances by kind, the
    threads each CPU instance computes with, the file of the version Triton loads (the latest: Triton's default
    policy), the models an ensemble calls, and the input it takes."""

    name: str
    backend: str
    max_batch: int
    instances: dict[str, int]
    threads: int
    model_file: Path | None
    steps: tuple[str, ...] = ()
    input_dims: tuple[int, ...] = ()
    input_type: str = ""

    @property
    def on_gpu(self) -> bool:
        return self.instances.get("KIND_GPU", 0) > 0

    @property
    def cpu_threads(self) -> int:
        """Threads its CPU instances compute with at once (each instance its own)."""
        return self.instances.get("KIND_CPU", 0) * self.threads

    @property
    def takes_images(self) -> bool:
        return self.input_type == "TYPE_STRING"

    @property
    def input_dtype(self) -> str:
        """The input's numpy dtype (``float32``, ``uint8``)."""
        return next((dtype for dtype, name in OIP_DATATYPES.items() if self.input_type == "TYPE_" + name), "object")


@dataclass
class Repository:
    """The models of a repository root, by name."""

    root: Path
    models: dict[str, RepositoryModel] = field(default_factory=dict)

    @property
    def python_models(self) -> list[str]:
        """Models on Triton's python backend (the ensemble's preprocessing: numpy and Pillow in the image)."""
        return [m.name for m in self.models.values() if m.backend == "python"]


def _model_config() -> Any:
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise DeployError("reading a Triton repository needs Triton's ModelConfig message (tritonclient[grpc]): "
                          "pip install 'resnet-deploy[kserve]'") from None
    return model_config_pb2


def read_repository(root: str | Path) -> Repository:
    """Every model folder of the repository at ``root``, read and checked as Triton would load it.

    Raises:
        DeployError: ``root`` is a model folder rather than the root, holds no model, or a model Triton would
            refuse (a config that does not parse, a name other than its folder's, no version with its file, an
            ensemble step naming a model that is not there).
    """
    root = Path(root)
    if not root.is_dir():
        raise DeployError(f"{root} is not a folder: give the Triton repository root (written by `resnet-deploy "
                          "triton --repo`)")
    if (root / TRITON_CONFIG).exists():
        raise DeployError(f"{root} is a model folder (it holds {TRITON_CONFIG}), not the repository root: Triton "
                          f"would look for {root.name}/1/{TRITON_CONFIG} (kserve#1075); give {root.parent}")
    repository = Repository(root)
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        repository.models[folder.name] = _read_model(folder)
    if not repository.models:
        raise DeployError(f"{root} holds no model folder: write one with `resnet-deploy triton ARTIFACT --repo {root}`")
    for model in repository.models.values():
        missing = [step for step in model.steps if step not in repository.models]
        if missing:
            raise DeployError(f"the ensemble {model.name} calls {', '.join(missing)}, which {root} does not hold")
    return repository


def _threads(path: Path, config: Any, backend: str) -> int:
    """The threads each CPU instance computes with: the backend's parameter (python models: one).

    Raises:
        DeployError: the parameter missing or 0, which the backend reads as every core of the node (no count
            of CPUs can be checked against that), or not a number.
    """
    parameter = THREAD_PARAMETERS.get(backend)
    if parameter is None:
        return 1
    value = config.parameters[parameter].string_value if parameter in config.parameters else "0"
    if not value.isdigit():
        raise DeployError(f"{path}: {parameter} is {value!r}, not a thread count")
    if int(value) == 0:
        raise DeployError(f"{path} leaves {parameter} to {backend} (every core of the node, whatever the pod "
                          "requests): write the repository with `triton --threads N` for a pod of N CPUs")
    return int(value)


def _read_model(folder: Path) -> RepositoryModel:
    from google.protobuf import text_format

    messages = _model_config()
    path = folder / TRITON_CONFIG
    kind = special_file(path)
    if kind is not None or not path.is_file():
        raise DeployError(f"{folder} is not a model folder Triton loads: {path} is {kind or 'missing'}")
    try:
        config = text_format.Parse(path.read_text(), messages.ModelConfig())
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise DeployError(f"{path} does not parse as Triton's ModelConfig: {str(exc).splitlines()[0]}") from None
    if config.name and config.name != folder.name:
        raise DeployError(f"{path} names the model {config.name!r} but its folder is {folder.name!r}: Triton serves "
                          "it under the folder's name, which clients must call; rename one to match")
    backend = config.backend or PLATFORM_BACKENDS.get(config.platform, config.platform)
    kinds = messages.ModelInstanceGroup.Kind
    instances: dict[str, int] = {}
    for group in config.instance_group:
        name = kinds.Name(group.kind)
        instances[name] = instances.get(name, 0) + max(1, group.count)
    if backend != "ensemble" and set(instances) - {"KIND_CPU", "KIND_GPU"} or not (instances or backend == "ensemble"):
        raise DeployError(f"{path} leaves its instances' kind to Triton (on a GPU where the pod has one, else on "
                          "CPU), which decides the resources it needs: write it with `triton --kind cpu|gpu`")
    threads = _threads(path, config, backend) if "KIND_CPU" in instances else 1
    steps = tuple(step.model_name for step in config.ensemble_scheduling.step)
    data_types = messages.DataType
    if backend == "ensemble":
        _latest_version(folder)  # an ensemble needs a version folder too (empty): checked, no file in it
        model_file = None
    else:
        model_file = _latest_file(folder, backend, config.default_model_filename)
    return RepositoryModel(folder.name, backend, config.max_batch_size, instances, threads, model_file, steps,
                           tuple(config.input[0].dims) if config.input else (),
                           data_types.Name(config.input[0].data_type) if config.input else "")


VERSION_FOLDER = re.compile(r"[1-9][0-9]*")  # Triton ignores version folders that start with 0


def _latest_version(folder: Path) -> Path:
    """The highest version folder (Triton's default version policy loads the latest one).

    Raises:
        DeployError: none (an ensemble needs one too, empty).
    """
    versions = sorted((int(p.name), p) for p in folder.iterdir() if p.is_dir() and VERSION_FOLDER.fullmatch(p.name))
    if not versions:
        raise DeployError(f"{folder} has no version folder (1/, 2/...; Triton ignores names starting with 0): "
                          "Triton loads no version of it")
    return versions[-1][1]


def _latest_file(folder: Path, backend: str, filename: str) -> Path:
    """The file of the version Triton loads: ``filename`` where the config names it, else the backend's default."""
    latest = _latest_version(folder)
    names = {"python": "model.py", "tensorrt": MODEL_FILES["engine"]}
    wanted = latest / (filename or names.get(backend, MODEL_FILES["onnx"]))
    if not wanted.is_file():
        raise DeployError(f"version {latest.name} of {folder.name} has no {wanted.name}: Triton fails to load it")
    return wanted
