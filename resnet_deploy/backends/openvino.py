"""OpenVINO: the same ONNX artifacts on edge CPUs, compiled once per machine.

OpenVINO reads the ONNX directly (fp32, fp16 and Q/DQ INT8: its low-precision
transformations turn Q/DQ pairs into INT8 kernels). The inference precision is
pinned to f32: on CPUs with bf16 or AMX, OpenVINO would otherwise run an fp32
artifact in bf16 by default, which is not the model that was verified. With
the cache, the compiled blob is kept in ``.ov-cache/`` beside the artifact
(OpenVINO's own model cache, keyed on the model, the config and the CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from ..artifacts import LOGITS, Manifest, TensorSpec, artifact_filename
from ..environment import bf16_problem
from ..errors import DeployError, DeployWarning, first_line
from ..fileio import atomic_write_bytes, locked, sha256_file, special_file
from ..precisions import PRECISIONS
from .base import Runner
from .load_options import LoadOptions

CACHE_DIR = ".ov-cache"  # beside the artifact


def _spec(port: Any, known: set[str]) -> TensorSpec:
    """The port's shape and dtype, under its name in the ONNX graph: a port can carry several tensor
    names (an fp16 graph's output is also its last Cast's), and ``get_any_name`` picks any of them."""
    names = port.get_names()
    name = next(iter(sorted(names & known)), None) or port.get_any_name()
    shape = [d.get_length() if d.is_static else "?" for d in port.get_partial_shape()]
    return TensorSpec(name, shape, port.get_element_type().to_dtype().name)


BLOB_RECORD = "resnet_deploy.sha256.json"  # in the cache folder: each blob's sha256 as OpenVINO wrote it


def _compile(model: Path, config: dict[str, Any], cache_dir: str | os.PathLike[str] | None) -> tuple[Any, str | None]:
    """The model compiled for the CPU, and the cache folder used: a cache that cannot be made or written (a
    read-only model volume, a full disk) is not used, with a warning, as ONNX Runtime's graph cache is not.
    A model OpenVINO cannot compile is that error alone, not a warning about the cache first."""
    cache_problem = None
    if cache_dir is not None:
        folder = Path(cache_dir)
        try:
            with locked(folder.parent / CACHE_DIR):  # processes compiling at once: one record, whole blobs
                record = _checked_blobs(folder, model.name)
                core = ov.Core()
                core.set_property({"CACHE_DIR": str(folder)})
                compiled = core.compile_model(str(model), "CPU", config)
                _record_blobs(folder, record)
            return compiled, str(folder)
        except (RuntimeError, OSError, DeployError) as exc:
            cache_problem = f"OpenVINO's model cache in {folder.name}/ is not used ({first_line(exc)})"
    try:
        compiled = ov.Core().compile_model(str(model), "CPU", config)
    except RuntimeError as exc:
        raise DeployError(f"OpenVINO cannot compile {model.name}: {first_line(exc)}") from None
    if cache_problem:
        warnings.warn(f"{model.name}: {cache_problem}; compiled without it", DeployWarning, stacklevel=4)
    return compiled, None


def _checked_blobs(folder: Path, model_name: str) -> dict[str, str]:
    """The record of the cache's blobs, after removing every blob whose bytes are not the ones OpenVINO wrote
    (OpenVINO's own checks miss bytes changed inside a blob, which then computes wrong answers) or that is
    not a regular file (a FIFO blocks the read)."""
    path = folder / BLOB_RECORD
    try:
        record = json.loads(path.read_text()) if special_file(path) is None and path.is_file() else {}
    except (OSError, ValueError):
        record = {}
    record = {k: v for k, v in record.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(record, dict) else {}
    for blob in sorted(folder.glob("*.blob")) if folder.is_dir() else []:
        kind = special_file(blob)
        if kind is None and record.get(blob.name) == sha256_file(blob):
            continue
        warnings.warn(f"{model_name}: the compiled blob {folder.name}/{blob.name} is not the one OpenVINO wrote "
                      f"({kind or 'its bytes changed, or it has no record'}): compiling again", DeployWarning,
                      stacklevel=5)
        shutil.rmtree(blob) if blob.is_dir() and not blob.is_symlink() else blob.unlink()
        record.pop(blob.name, None)
    return record


def _record_blobs(folder: Path, record: dict[str, str]) -> None:
    """Record the sha256 of the blobs OpenVINO has just written (those not recorded yet)."""
    blobs = {blob.name: blob for blob in folder.glob("*.blob") if special_file(blob) is None}
    updated = {name: record.get(name) or sha256_file(blob) for name, blob in blobs.items()}
    if updated != record:
        atomic_write_bytes(folder / BLOB_RECORD, json.dumps(updated, indent=1).encode())


class OpenVINORunner(Runner):
    """Runs an ONNX model on OpenVINO's CPU plugin: f32 inference precision (``bf16``: bf16, where the CPU has
    it natively); the latency hint, or (``throughput``) the throughput hint and a queue of OpenVINO's optimal
    number of requests, a batch split across them. ``tensor_names``: the ONNX graph's input and output names,
    which name the runner's tensors.

    ``lanes``: threads that call at once (each at ``threads`` CPU threads), a stream compiled for each: the
    requests of one stream run one at a time, so two callers on the latency hint's single stream took turns.
    ``pin``: OpenVINO's pinning of its threads to cores (off where other processes share the cores).

    Safe across threads: an ``InferRequest`` is not (one shared by threads mixes answers), so each call takes
    an idle request of its own from a pool (made on demand), and the throughput queue serves one call at a
    time. Inputs are copied into OpenVINO's tensors, never shared: a request reused later cannot write into
    (or read from) memory the caller still owns."""

    def __init__(self, model: str | os.PathLike[str], *, threads: int | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, tensor_names: Sequence[str] = ("input", LOGITS),
                 batch_range: tuple[int, int] | None = None, bf16: bool = False, throughput: bool = False,
                 lanes: int = 1, pin: bool = True) -> None:
        config: dict[str, Any] = {"PERFORMANCE_HINT": "THROUGHPUT" if throughput else "LATENCY",
                                  "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads * lanes
        if lanes > 1 and not throughput:  # a stream per calling lane: requests on one stream run one at a time
            config["NUM_STREAMS"] = lanes
        if not pin:  # other processes share the cores: threads pinned by each would pile onto the same ones
            config["ENABLE_CPU_PINNING"] = False
        self.compiled, cache_dir = _compile(Path(model), config, cache_dir)
        self._idle = [self.compiled.create_infer_request()]
        self._pool_lock, self._queue_lock = threading.Lock(), threading.Lock()
        self.streams = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if throughput else 1
        self.queue = ov.AsyncInferQueue(self.compiled, self.streams) if self.streams > 1 else None
        self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self.name = "openvino-cpu" + ("-bf16" if bf16 else "") + ("-throughput" if throughput else "")
        self.device = "cpu"
        self.threads = int(self.compiled.get_property("INFERENCE_NUM_THREADS"))
        self.cache_dir = cache_dir
        known = set(tensor_names)
        self.inputs = [_spec(port, known) for port in self.compiled.inputs]
        self.outputs = [_spec(port, known) for port in self.compiled.outputs]
        self.batch_range = batch_range

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.queue is None or len(batch) == 1:
            return self._run_on_own_request(batch)
        with self._queue_lock:  # one queue, one callback: a call at a time uses every stream
            return self._run_split(batch)

    def _run_on_own_request(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self._pool_lock:
            request = self._idle.pop() if self._idle else self.compiled.create_infer_request()
        try:
            results = request.infer({0: batch}, share_inputs=False, share_outputs=False)
            return {spec.name: np.array(results[port]) for spec, port in zip(self.outputs, self.compiled.outputs)}
        finally:
            with self._pool_lock:
                self._idle.append(request)

    def _run_split(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The batch split across the queue's requests, joined in order."""
        parts = np.array_split(batch, min(self.streams, len(batch)))
        answers: list[Any] = [None] * len(parts)

        def keep(request: Any, index: int) -> None:  # on OpenVINO's thread: copy before the request is reused
            answers[index] = [np.array(request.get_output_tensor(i).data) for i in range(len(self.outputs))]

        self.queue.set_callback(keep)
        for index, part in enumerate(parts):
            self.queue.start_async({0: part}, userdata=index, share_inputs=False)
        self.queue.wait_all()
        return {spec.name: np.concatenate([answer[i] for answer in answers])
                for i, spec in enumerate(self.outputs)}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "openvino": ov.__version__, "threads": self.threads, "streams": self.streams,
                "compiled_streams": int(self.compiled.get_property("NUM_STREAMS")),
                "pinned": bool(self.compiled.get_property("ENABLE_CPU_PINNING")),
                "inference_precision": self.inference_precision, "model_cache": self.cache_dir}

    def close(self) -> None:
        self._idle, self.compiled, self.queue = [], None, None


def load(path: Path, manifest: Manifest, precision: str, device: tuple[str, int],
         options: LoadOptions) -> OpenVINORunner:
    """The registry's loader: the ONNX artifact on this machine's CPU."""
    if options.own.bf16 and precision != PRECISIONS["bf16"].runs_file:
        raise DeployError(f"--openvino-bf16 computes the fp32 file in bf16; {path.name} is the {precision} file: "
                          f"give {artifact_filename(manifest.stem, PRECISIONS['bf16'].runs_file)}")
    problem = bf16_problem() if options.own.bf16 else None
    if problem:
        raise DeployError(f"--openvino-bf16: {problem}")
    cache = path.parent / CACHE_DIR if options.graph_cache else None
    return OpenVINORunner(path, threads=options.threads, cache_dir=cache, bf16=options.own.bf16,
                          throughput=options.own.throughput, lanes=options.lanes, pin=not options.shared_cores,
                          tensor_names=[spec.name for spec in (manifest.input, *manifest.outputs)])
