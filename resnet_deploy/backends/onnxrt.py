"""ONNX Runtime: tuned session loading, the optimised-graph cache, and a runner with IO binding."""

from __future__ import annotations

import errno
import hashlib
import os
import platform
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..artifacts import Manifest, TensorSpec
from ..environment import first_cpu_fields, physical_cores
from ..errors import DeployError, DeployWarning, first_line
from ..fileio import atomic_path, atomic_write_bytes, clear_derived, sha256_file, special_file
from .base import Runner
from .load_options import LoadOptions

GRAPH_CACHE_DIR = ".ort-cache"  # beside the artifact


def cpu_signature() -> str:
    """A short hash of the CPU model and its instruction-set flags: an optimised graph is only valid
    on the CPU it was optimised for (ONNX Runtime picks NCHWc block sizes by ISA)."""
    fields = first_cpu_fields()
    text = platform.machine() + platform.processor() + "".join(
        f"{key}:{fields.get(key, '')}" for key in ("model name", "flags", "Features"))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def session_options(*, threads: int | None = None, optimize: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or physical_cores()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 3  # errors only: ORT's warnings are not the user's business
    return options


# execution provider -> the short name runners and reports use
PROVIDER_NAMES = {
    "CPUExecutionProvider": "cpu",
    "CUDAExecutionProvider": "cuda",
    "TensorrtExecutionProvider": "tensorrt",
}

_NUMPY_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
                 "tensor(uint8)": "uint8"}


def graph_cache_path(model: Path, provider: str, sha256: str | None = None) -> Path:
    """Where the optimised graph of ``model`` for ``provider`` on this CPU and ORT version is kept.

    Keyed on the artifact's content, so a re-export never meets a stale cache."""
    digest = (sha256 or sha256_file(model))[:16]
    key = f"ort{ort.__version__}-{PROVIDER_NAMES.get(provider, provider)}-{cpu_signature()}"
    return model.parent / GRAPH_CACHE_DIR / f"{model.name}.{digest}.{key}.onnx"


def _cache_record(cache: Path) -> Path:
    """The record beside a cached graph: the sha256 of the graph as it was written."""
    return cache.with_name(cache.name + ".sha256")


def _cache_problem(cache: Path) -> str | None:
    """Why the cached graph at ``cache`` is not the one this package wrote there (damaged, replaced by
    another model's, or from before the record existed), or None."""
    record = _cache_record(cache)
    kind = special_file(record)
    if kind is not None:
        return f"its record is {kind}"
    try:
        with open(record, "rb") as handle:
            recorded = handle.read(128).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return "it has no record of what was written"
    return None if sha256_file(cache) == recorded else "its bytes are not the ones written"


def _session_with_cache(model: Path, providers: list, options: ort.SessionOptions, cache: Path) -> tuple[
        ort.InferenceSession, str]:
    """Load the cached optimised graph without optimising again, or optimise and save it for next time.

    A cached graph is used only if its bytes are those written (checked against the record beside
    it) and ONNX Runtime loads it; otherwise it is rebuilt, with a warning. Returns the session and
    what happened ("hit", "written", "rebuilt" or "unwritable")."""
    state = "written"
    for derived in (cache, _cache_record(cache)):  # a FIFO or a device where the cache goes: made again
        if clear_derived(derived) is not None:
            state = "rebuilt"
    if cache.is_file():
        problem = _cache_problem(cache)
        if problem is None:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # optimised already
            try:
                return ort.InferenceSession(str(cache), sess_options=options, providers=providers), "hit"
            except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types for a bad file
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                problem = f"ONNX Runtime cannot load it ({first_line(exc)})"
        warnings.warn(f"{model.name}: the optimised graph cached in {cache.parent.name}/ is not used: {problem}; "
                      "optimising again", DeployWarning, stacklevel=4)
        state = "rebuilt"
    try:
        cache.parent.mkdir(exist_ok=True)
        with atomic_path(cache) as tmp:
            options.optimized_model_filepath = str(tmp)
            try:
                session = ort.InferenceSession(str(model), sess_options=options, providers=providers)
            except Exception as exc:  # noqa: BLE001 - saving the graph failed (ENOSPC reads as INVALID_PROTOBUF)
                raise _save_failure(cache.parent, model, exc) from None
            digest = sha256_file(tmp)
        atomic_write_bytes(_cache_record(cache), digest.encode())
        for stale in cache.parent.glob(f"{model.name}.*"):  # older exports of the same file, their records
            if stale not in (cache, _cache_record(cache)):
                stale.unlink(missing_ok=True)
        return session, state
    except (OSError, DeployError) as exc:  # a read-only folder, a full disk, a folder in the cache's place
        options.optimized_model_filepath = ""
        session = ort.InferenceSession(str(model), sess_options=options, providers=providers)
        warnings.warn(f"{model.name}: the optimised graph cannot be cached in {cache.parent.name}/ "
                      f"({getattr(exc, 'strerror', None) or exc}); running without the cache", DeployWarning,
                      stacklevel=4)
        return session, "unwritable"


def _save_failure(folder: Path, model: Path, exc: Exception) -> OSError:
    """Why ONNX Runtime could not save the optimised graph in ``folder``: a full disk (its own message says
    INVALID_PROTOBUF, as if the model were damaged), else what it said."""
    free = shutil.disk_usage(folder).free
    if free < model.stat().st_size:
        return OSError(errno.ENOSPC, f"no space left on the device: {free // 2**20} MiB free")
    return OSError(first_line(exc))


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX model (path or serialized bytes) on one ONNX Runtime execution provider.

    Tuned rather than default: intra-op threads = physical cores, every graph optimisation,
    IO binding (outputs stay on the provider's device until copied once). With ``graph_cache``
    the optimised graph is saved under ``.ort-cache/`` beside the model and later sessions load it
    without optimising again. After :meth:`release_memory_above` (``arena_keeps``) a call whose batch is
    larger ends by handing back every region of the CPU memory arena not in use (its first excepted):
    a server's memory returns after an overload instead of staying at the largest batch's peak.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        provider: str = "CPUExecutionProvider",
        device_id: int = 0,
        threads: int | None = None,
        optimize: bool = True,
        graph_cache: bool = False,
        model_sha256: str | None = None,
        batch_range: tuple[int, int] | None = None,
    ) -> None:
        providers: list = ["CPUExecutionProvider"]
        if provider == "TensorrtExecutionProvider":  # subgraphs TensorRT cannot take fall back to CUDA
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        if provider != "CPUExecutionProvider":  # CPU stays as the fallback for ops the GPU provider lacks
            providers.insert(0, (provider, {"device_id": device_id}))
        options = session_options(threads=threads, optimize=optimize)
        self.graph_cache = "off"
        try:
            if isinstance(model, bytes):
                self.session = ort.InferenceSession(model, sess_options=options, providers=providers)
            elif graph_cache and optimize:
                cache = graph_cache_path(Path(model), provider, model_sha256)
                self.session, self.graph_cache = _session_with_cache(Path(model), providers, options, cache)
            else:
                self.session = ort.InferenceSession(str(model), sess_options=options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own types (InvalidProtobuf, Fail, ...)
            label = "the model" if isinstance(model, bytes) else Path(model).name
            raise DeployError(f"ONNX Runtime cannot load {label}: {first_line(exc)}") from None
        short = PROVIDER_NAMES.get(provider, provider)
        self.name = f"onnxruntime-{short}" + ("" if optimize else "-unoptimized")
        self.device = "cpu" if short == "cpu" else f"cuda:{device_id}"
        self.threads = options.intra_op_num_threads
        self.inputs = [TensorSpec(v.name, list(v.shape), _NUMPY_DTYPES.get(v.type, v.type))
                       for v in self.session.get_inputs()]
        self.outputs = [TensorSpec(v.name, list(v.shape), _NUMPY_DTYPES.get(v.type, v.type))
                        for v in self.session.get_outputs()]
        self.batch_range = batch_range
        self._output_device = ("cpu", 0) if short == "cpu" else ("cuda", device_id)
        self.arena_keeps: int | None = None  # set by release_memory_above
        self._shrink = ort.RunOptions()  # hands the CPU arena's unused chunks back when the call ends
        self._shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, batch)
        for name in self.output_names:
            binding.bind_output(name, *self._output_device)
        oversized = self.arena_keeps is not None and batch.shape[0] > self.arena_keeps
        self.session.run_with_iobinding(binding, self._shrink if oversized else None)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))

    def release_memory_above(self, batch: int | None) -> None:
        if self._output_device[0] == "cpu":
            self.arena_keeps = batch

    def describe(self) -> dict:
        return {**super().describe(), "threads": self.threads, "graph_cache": self.graph_cache,
                "providers": self.session.get_providers()}

    def close(self) -> None:
        self.session = None


def load(path: Path, manifest: Manifest, precision: str, device: tuple[str, int],
         options: LoadOptions) -> OnnxRuntimeRunner:
    """The registry's loader: the artifact on the CPU, or on the CUDA or TensorRT execution provider."""
    kind, index = device
    provider = ("CPUExecutionProvider" if kind == "cpu" else
                "TensorrtExecutionProvider" if options.own.tensorrt_provider else "CUDAExecutionProvider")
    entry = manifest.artifact(precision)
    return OnnxRuntimeRunner(path, provider=provider, device_id=index, threads=options.threads,
                             graph_cache=options.graph_cache, model_sha256=entry.sha256 if entry else None,
                             optimize=not options.own.as_written)

