"""A stand-in of TensorRT's Python module, one per version, for machines without a GPU or TensorRT.

``module(version, cudart)`` returns a ``tensorrt`` module whose enums have exactly the members that
version has where the package's behaviour depends on it (``SAME_COMPUTE_CAPABILITY`` from 10.9,
``BuilderFlag.FP16``/``INT8`` and ``EXPLICIT_BATCH`` gone in 11), whose classes have the real method
and parameter names, and which behaves as the real one does where bugs hide:

- an engine file here is JSON describing the engine (tensors, dtypes, profile, version-compatible);
  it computes logits[b, c] = sum of channel c's pixels, at any height and width;
- unknown dimensions are -1, as TensorRT reports them;
- a version-compatible engine loads only where ``engine_host_code_allowed`` is set;
- work enqueued while the stream captures is recorded, not run; a captured graph holds the state of
  the context it was captured on: replayed after that context's shape changed, it writes NaN (the
  undefined behaviour NVIDIA warns of, made visible);
- ``create_execution_context`` can return None; a timing cache can be rejected (None, or False from
  ``set_timing_cache``); ``nptype`` raises TypeError for BF16, FP8, INT4, FP4 and E8M0;
- the builder has no DLA cores unless told, and writes an engine file a runtime here loads.

Every call the package makes on it is logged (class, member, arguments), and tests/tensorrt_api checks
that log, and every name defined here, against the real bindings of each version.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np

VERSIONS = ("10.0.1", "10.8.0.43", "10.16.1.11", "11.4.0.106")  # the real bindings tests/tensorrt_api fetches


def _at_least(version: str, minimum: str) -> bool:
    return tuple(int(p) for p in version.split(".")[:3]) >= tuple(int(p) for p in minimum.split(".")[:3])


@dataclass(frozen=True)
class Member:
    """An enum member: a name and a value, like pybind11's."""

    name: str
    value: int

    def __int__(self) -> int:
        return self.value


def enums(version: str) -> dict[str, dict[str, int]]:
    """Each enum the package or these stand-ins touch, with the members ``version`` has (values as in
    TensorRT's headers where the package reads them: STRONGLY_TYPED is bit 1)."""
    ten = not _at_least(version, "11.0")
    data_types = ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64", "INT4"]
    data_types += ["FP4"] if _at_least(version, "10.8") else []
    data_types += ["E8M0"] if _at_least(version, "10.16") else []
    return {
        "DataType": {name: i for i, name in enumerate(data_types)},
        "TensorIOMode": {"NONE": 0, "INPUT": 1, "OUTPUT": 2},
        "HardwareCompatibilityLevel": {"NONE": 0, "AMPERE_PLUS": 1,
                                       **({"SAME_COMPUTE_CAPABILITY": 2} if _at_least(version, "10.9") else {})},
        "NetworkDefinitionCreationFlag": {**({"EXPLICIT_BATCH": 0} if ten else {}), "STRONGLY_TYPED": 1},
        "BuilderFlag": {**({"FP16": 0, "INT8": 1} if ten else {}), "GPU_FALLBACK": 4, "TF32": 7,
                        "VERSION_COMPATIBLE": 13},
        "MemoryPoolType": {"WORKSPACE": 0},
        "DeviceType": {"GPU": 0, "DLA": 1},
    }


@dataclass
class Log:
    """What the package did to the stand-in: (real class, member, positional count, keyword names, kind)."""

    entries: list[tuple[str, str, int, tuple[str, ...], str]] = field(default_factory=list)

    def add(self, cls: str, member: str, args: tuple = (), kwargs: dict | None = None, kind: str = "call") -> None:
        self.entries.append((cls, member, len(args), tuple(sorted(kwargs or {})), kind))


class StandIn:
    """Base of the stand-in classes: ``REAL`` names the TensorRT class it stands for. Public class
    attributes that are not methods stand for properties; test state lives in ``_``-names."""

    REAL = ""


class Logger(StandIn):
    REAL = "Logger"
    WARNING = Member("WARNING", 2)

    def __init__(self, min_severity=None):
        pass


class Builder(StandIn):
    REAL = "Builder"
    num_DLA_cores = 0

    def __init__(self, logger):
        self._config: BuilderConfig | None = None

    def create_network(self, flags=0):
        return _make("NetworkDefinition")(flags)

    def create_builder_config(self):
        config = _make("BuilderConfig")()
        config._keep_no_cache = _MODULE_STATE.get("keep_no_cache", False)
        return config

    def create_optimization_profile(self):
        return _make("OptimizationProfile")()

    def build_serialized_network(self, network, config):
        if network._fail_build:
            return None
        (low, opt, high), = config._profiles[0]._shapes.values()
        config._cache_used = True
        engine = {"input": {"name": "input", "shape": [-1, 3, *(d if lo == hi else -1 for d, lo, hi in
                                                                  zip(opt[2:], low[2:], high[2:]))], "dtype": "FLOAT"},
                  "outputs": [{"name": "logits", "dtype": "FLOAT"}], "profile": [list(low), list(opt), list(high)],
                  "version_compatible": config._flags.count("VERSION_COMPATIBLE") > 0}
        return json.dumps(engine).encode()


class NetworkDefinition(StandIn):
    REAL = "INetworkDefinition"

    def __init__(self, flags):
        self._flags, self._fail_build = flags, False


class OnnxParser(StandIn):
    REAL = "OnnxParser"
    num_errors = 0

    def __init__(self, network, logger):
        self._network = network

    def parse_from_file(self, model):
        return True

    def get_error(self, index):
        return ""


class TimingCache(StandIn):
    REAL = "ITimingCache"

    def __init__(self, entries: list[str]):
        self._entries = entries

    def combine(self, input_cache, ignore_mismatch):
        self._entries = sorted(set(self._entries) | set(input_cache._entries))
        return True

    def serialize(self):
        return json.dumps({"timings": self._entries}).encode()


class BuilderConfig(StandIn):
    REAL = "IBuilderConfig"
    DLA_core = -1
    default_device_type = None
    hardware_compatibility_level = None

    def __init__(self):
        self._profiles: list[OptimizationProfile] = []
        self._flags: list[str] = []
        self._cache: TimingCache | None = None
        self._cache_used = False
        self._keep_no_cache = False

    def set_memory_pool_limit(self, pool, pool_size):
        pass

    def add_optimization_profile(self, profile):
        self._profiles.append(profile)
        return 0

    def create_timing_cache(self, serialized_timing_cache):
        """An empty cache from b""; None from bytes TensorRT cannot read."""
        make = _make("TimingCache")
        if not serialized_timing_cache:
            return make([])
        try:
            return make(json.loads(bytes(serialized_timing_cache))["timings"])
        except (ValueError, KeyError):
            return None

    def set_timing_cache(self, cache, ignore_mismatch):
        """False for a cache of another TensorRT version or GPU (one marked "mismatch" here)."""
        if "mismatch" in cache._entries and not ignore_mismatch:
            return False
        self._cache = cache
        return True

    def get_timing_cache(self):
        if self._keep_no_cache or self._cache is None:
            return None
        if self._cache_used:
            self._cache._entries = sorted(set(self._cache._entries) | {"tactic-this-build"})
        return self._cache

    def set_flag(self, flag):
        self._flags.append(flag.name)


class OptimizationProfile(StandIn):
    REAL = "IOptimizationProfile"

    def __init__(self):
        self._shapes: dict[str, tuple] = {}

    def set_shape(self, input, min, opt, max):  # noqa: A002  (TensorRT's parameter names)
        self._shapes[input] = (tuple(min), tuple(opt), tuple(max))


class Runtime(StandIn):
    REAL = "Runtime"
    engine_host_code_allowed = False
    DLA_core = 0

    def __init__(self, logger):
        pass

    def deserialize_cuda_engine(self, serialized_engine):
        """None where TensorRT would refuse: bytes that are no engine of this stand-in, or a
        version-compatible engine without host code allowed (its lean runtime is host code)."""
        try:
            description = json.loads(bytes(serialized_engine))
        except ValueError:
            return None
        if description.get("version_compatible") and not self.engine_host_code_allowed:
            return None
        return _make("CudaEngine")(description, _MODULE_STATE["cudart"])


class CudaEngine(StandIn):
    REAL = "ICudaEngine"

    def __init__(self, description: dict, cudart: Any):
        self._input = description["input"]
        self._outputs = description["outputs"]
        self._profile = [tuple(dims) for dims in description["profile"]]
        self._cudart = cudart
        self._contexts: list[ExecutionContext] = []
        self._fail_contexts = _MODULE_STATE.get("fail_contexts", False)
        self.num_io_tensors = 1 + len(self._outputs)  # a property of the real class

    def _tensor(self, name: str) -> dict:
        return next(t for t in [self._input, *self._outputs] if t["name"] == name)

    def get_tensor_name(self, index):
        return [self._input, *self._outputs][index]["name"]

    def get_tensor_mode(self, name):
        modes = _MODULE_STATE["module"].TensorIOMode
        return modes.INPUT if name == self._input["name"] else modes.OUTPUT

    def get_tensor_dtype(self, name):
        return getattr(_MODULE_STATE["module"].DataType, self._tensor(name)["dtype"])

    def get_tensor_shape(self, name):
        return tuple(self._input["shape"]) if name == self._input["name"] else (-1, 3)

    def get_tensor_profile_shape(self, name, profile_index):
        return self._profile

    def create_execution_context(self, strategy=None):
        if self._fail_contexts:
            return None
        context = _make("ExecutionContext")(self)
        self._contexts.append(context)
        return context


class ExecutionContext(StandIn):
    REAL = "IExecutionContext"

    def __init__(self, engine: CudaEngine):
        self._engine, self._shape, self._generation, self._addresses = engine, None, 0, {}
        self._executions = 0

    def set_input_shape(self, name, shape):
        shape = tuple(shape)
        low, _opt, high = self._engine._profile
        if len(shape) != len(low) or any(not lo <= d <= hi for d, lo, hi in zip(shape, low, high)):
            return False
        if shape != self._shape:
            self._shape, self._generation = shape, self._generation + 1
        return True

    def get_tensor_shape(self, name):
        if name == self._engine._input["name"]:
            return self._shape
        return (self._shape[0], 3)

    def set_tensor_address(self, name, memory):
        self._addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle):
        cudart, engine = self._engine._cudart, self._engine
        shape, generation = self._shape, self._generation
        source, storage = self._addresses[engine._input["name"]], _STORAGE[engine._input["dtype"]]
        targets = {o["name"]: (self._addresses[o["name"]], _STORAGE[o["dtype"]]) for o in engine._outputs}

        def work():
            self._executions += 1
            images = np.frombuffer(bytes(cudart.memory[source]), storage, count=int(np.prod(shape))).reshape(shape)
            logits = _to_float(images, engine._input["dtype"]).sum(axis=(2, 3))
            if self._generation != generation:  # captured for a shape this context no longer has
                logits = np.full_like(logits, np.nan)
            for address, out_storage in targets.values():
                data = _from_float(logits, out_storage).tobytes()
                cudart.memory[address][:len(data)] = data

        cudart.enqueue(work)
        return True


_STORAGE = {"FLOAT": np.float32, "HALF": np.float16, "BF16": np.uint16}


def _to_float(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float32)


def _from_float(values: np.ndarray, storage: type) -> np.ndarray:
    if storage is np.uint16:  # bf16: truncated, close enough for a stand-in's sums
        return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return values.astype(storage)


_MODULE_STATE: dict[str, Any] = {}


def _make(name: str):
    """A stand-in class's maker that logs nothing: one stand-in making another, as TensorRT does."""
    return _MODULE_STATE["classes"][name]._make
CLASSES = (Logger, Builder, NetworkDefinition, OnnxParser, TimingCache, BuilderConfig, OptimizationProfile, Runtime,
           CudaEngine, ExecutionContext)
NO_HOST_FORM = ("BF16", "FP8", "INT4", "FP4", "E8M0")  # trt.nptype raises TypeError for these


def module(version: str, cudart: Any, *, fail_contexts: bool = False, dla_cores: int = 0,
           keep_no_cache: bool = False) -> types.ModuleType:
    """A ``tensorrt`` module of ``version`` (one of VERSIONS, or any 10.x/11.x), on the stand-in CUDA
    runtime ``cudart``; ``trt.log`` is the Log of what the package called."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    for name, members in enums(version).items():
        setattr(trt, name, types.SimpleNamespace(**{m: Member(m, v) for m, v in members.items()}))
    trt.log = Log()
    logged = {cls.__name__: _logged(cls, trt.log) for cls in CLASSES}
    for cls in CLASSES:  # under the real module's names (ICudaEngine, IExecutionContext, ...)
        setattr(trt, cls.REAL, logged[cls.__name__])
    trt.Builder.num_DLA_cores = dla_cores

    def nptype(trt_type):
        if trt_type.name in NO_HOST_FORM:
            raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
        return {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
                "BOOL": np.bool_, "UINT8": np.uint8}[trt_type.name]

    trt.nptype = nptype
    _MODULE_STATE.update(cudart=cudart, module=trt, classes=logged, fail_contexts=fail_contexts,
                         keep_no_cache=keep_no_cache)
    return trt


def _logged(cls: type, log: Log) -> type:
    """``cls`` with every public method call, property read and property write by its users logged
    under ``cls.REAL``; ``_make`` builds one without logging (a stand-in making another)."""

    class Logged(cls):
        def __init__(self, *args, **kwargs):
            log.add(cls.REAL, "__init__", args, kwargs)
            super().__init__(*args, **kwargs)
            object.__setattr__(self, "_ready", True)

        @classmethod
        def _make(klass, *args):
            made = klass.__new__(klass)
            cls.__init__(made, *args)
            object.__setattr__(made, "_ready", True)
            return made

        def __getattribute__(self, name):
            value = object.__getattribute__(self, name)
            if name.startswith("_") or name == "REAL":
                return value
            if callable(value) and not isinstance(value, Member):
                def call(*args, **kwargs):
                    log.add(cls.REAL, name, args, kwargs)
                    return value(*args, **kwargs)
                return call
            log.add(cls.REAL, name, kind="get")
            return value

        def __setattr__(self, name, value):
            if not name.startswith("_") and getattr(self, "_ready", False):
                log.add(cls.REAL, name, kind="set")
            object.__setattr__(self, name, value)

    Logged.__name__ = Logged.__qualname__ = cls.__name__
    return Logged


def engine_file(path, *, shape=(-1, 3, 2, 2), profile=((1, 3, 2, 2), (2, 3, 2, 2), (4, 3, 2, 2)),
                input_dtype="FLOAT", output_dtype="FLOAT", version_compatible=False):
    """Write an engine of this stand-in to ``path``: what a real build would have produced."""
    description = {"input": {"name": "input", "shape": list(shape), "dtype": input_dtype},
                   "outputs": [{"name": "logits", "dtype": output_dtype}],
                   "profile": [list(p) for p in profile], "version_compatible": version_compatible}
    path.write_bytes(json.dumps(description).encode())
    return path
