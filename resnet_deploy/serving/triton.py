"""Write an artifact into a Triton Inference Server model repository.

    REPO/NAME/config.pbtxt
    REPO/NAME/VERSION/model.onnx   (platform onnxruntime_onnx)   or model.plan (tensorrt_plan)
    REPO/NAME/imagenet_labels.txt  (classifiers with 1000 classes: Triton's label file for classification)

Dims leave out the batch axis (Triton adds it up to ``max_batch_size``). Every file is written
atomically; other models and other versions already in the repository are left alone.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import Manifest, check_stem, manifest_for
from ..backends.registry import BACKENDS, NATIVE, artifact_format
from ..data import imagenet_classes
from ..errors import DeployError, within
from ..fileio import atomic_open, atomic_path

MODEL_FILES = {"onnx": "model.onnx", "engine": "model.plan"}  # artifact format -> Triton's default model file
LABELS_FILE = "imagenet_labels.txt"
KINDS = ("gpu", "cpu")  # Triton instance group kinds
MAX_INSTANCES = 64
MAX_QUEUE_DELAY_US = 10_000_000
_DATATYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}


@dataclass(frozen=True)
class TritonOptions:
    model_name: str | None = None
    max_batch: int | None = None  # default: the artifact profile's MAX
    preferred: tuple[int, ...] = ()
    queue_delay_us: int = 100
    instances: int = 1
    kind: str = "gpu"  # one of KINDS
    version: int = 1


def _dims(shape: list) -> str:
    """Dims without the batch axis; symbolic dims become -1."""
    return "[ " + ", ".join(str(d) if isinstance(d, int) else "-1" for d in shape[1:]) + " ]"


def model_config(manifest: Manifest, platform: str, name: str, options: TritonOptions, *, labels: bool) -> str:
    """config.pbtxt for the artifact, in protobuf text format (Triton's ModelConfig)."""
    lines = [
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {options.max_batch}",
        "input [",
        "  {",
        f'    name: "{manifest.input.name}"',
        f"    data_type: {_DATATYPES[manifest.input.dtype]}",
        "    format: FORMAT_NCHW",
        f"    dims: {_dims(manifest.input.shape)}",
        "  }",
        "]",
        "output [",
    ]
    for index, output in enumerate(manifest.outputs):
        lines += ["  {", f'    name: "{output.name}"', f"    data_type: {_DATATYPES[output.dtype]}",
                  f"    dims: {_dims(output.shape)}"]
        if labels and output.name == "logits":
            lines.append(f'    label_filename: "{LABELS_FILE}"')
        lines.append("  }" + ("," if index < len(manifest.outputs) - 1 else ""))
    lines += ["]", "dynamic_batching {"]
    if options.preferred:
        lines.append(f"  preferred_batch_size: [ {', '.join(map(str, options.preferred))} ]")
    lines += [f"  max_queue_delay_microseconds: {options.queue_delay_us}", "}",
              "instance_group [", "  {", f"    count: {options.instances}",
              f"    kind: {'KIND_GPU' if options.kind == 'gpu' else 'KIND_CPU'}", "  }", "]"]
    return "\n".join(lines) + "\n"


def _check(options: TritonOptions, manifest: Manifest, platform: str) -> TritonOptions:
    if options.kind not in KINDS:
        raise DeployError(f"--kind must be gpu or cpu, not {options.kind!r}")
    if platform == "tensorrt_plan" and options.kind == "cpu":
        raise DeployError("a TensorRT plan runs on a GPU: use --kind gpu, or serve the ONNX on CPU")
    max_batch = manifest.batch.max if options.max_batch is None else options.max_batch
    if not 1 <= max_batch <= manifest.batch.max:
        raise DeployError(f"--max-batch {max_batch} is outside the artifact's profile (1 to {manifest.batch.max}): "
                          "re-export with a larger --batch MAX")
    bad = [b for b in options.preferred if not 1 <= b <= max_batch]
    if bad:
        raise DeployError(f"--preferred sizes {bad} must lie between 1 and the max batch {max_batch}")
    within("--instances", options.instances, 1, MAX_INSTANCES, "per device")
    within("--version", options.version, 1, 2**31 - 1)
    within("--queue-delay-us", options.queue_delay_us, 0, MAX_QUEUE_DELAY_US)
    return TritonOptions(options.model_name, max_batch, tuple(sorted(set(options.preferred))), options.queue_delay_us,
                         options.instances, options.kind, options.version)


def write_model_repository(artifact: str | os.PathLike[str], repo: str | os.PathLike[str],
                           options: TritonOptions = TritonOptions()) -> Path:
    """Add (or update) ``artifact`` as a model of the repository ``repo``; returns the model's folder."""
    artifact = Path(artifact)
    manifest, precision = manifest_for(artifact)
    kind = artifact_format(precision)
    platform, filename = BACKENDS[NATIVE[kind]].platform, MODEL_FILES[kind]
    options = _check(options, manifest, platform)
    name = check_stem(options.model_name or manifest.stem)
    model_dir = Path(repo) / name
    version_dir = model_dir / str(options.version)
    try:
        version_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeployError(f"cannot create {version_dir}: {exc.strerror}") from None
    labels = manifest.num_classes == 1000 and any(o.name == "logits" for o in manifest.outputs)
    with atomic_path(version_dir / filename) as tmp:
        shutil.copyfile(artifact, tmp)
    if labels:
        with atomic_open(model_dir / LABELS_FILE) as handle:
            handle.write("\n".join(imagenet_classes()) + "\n")
    with atomic_open(model_dir / "config.pbtxt") as handle:  # last: Triton never sees a config without its model
        handle.write(model_config(manifest, platform, name, options, labels=labels))
    return model_dir
