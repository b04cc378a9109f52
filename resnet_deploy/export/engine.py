"""TensorRT engines from ONNX artifacts: a strongly typed parse and build on top.

Written against the TensorRT 10 and 11 Python API. Precision is never set on
the builder (TensorRT 11 removed ``BuilderFlag.FP16/INT8`` and the INT8
calibrators; 10.12 deprecated them): it comes from the ONNX, an fp16 graph or
an INT8 Q/DQ graph, and the network is strongly typed (the creation flag on
10.x, always on 11). The parts that need no GPU (flags, profile shapes, which
ONNX to build from, compatibility checks) are plain functions, tested anywhere.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import Manifest
from ..precisions import ENGINE
from ..backends import cuda
from ..backends.registry import runs_here
from ..backends.tensorrt import version_tuple
from ..errors import DeployError, DeployWarning, ExportError, within
from ..fileio import atomic_path, atomic_write_bytes, locked, regular_file

# --hardware-compat -> trt.HardwareCompatibilityLevel member, and the TensorRT version that added it
HARDWARE_COMPAT = {"none": "NONE", "ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}
HARDWARE_COMPAT_SINCE = {"same-cc": "10.9"}
DEFAULT_WORKSPACE_GIB = 4.0
MAX_WORKSPACE_GIB = 4096.0  # more than any GPU holds: a larger figure is a typo (MiB for GiB)


def tensorrt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise DeployError(f"cannot read the TensorRT version {version!r}") from None


def needs_strongly_typed_flag(version: str) -> bool:
    """TensorRT 10 builds strongly typed networks only when asked; 11 always does and has no weakly typed mode."""
    return tensorrt_major(version) == 10


def network_flags(trt: Any) -> int:
    """``builder.create_network`` flags: STRONGLY_TYPED on 10.x, none on 11 (never the removed EXPLICIT_BATCH)."""
    if tensorrt_major(trt.__version__) < 10:
        raise DeployError(f"TensorRT {trt.__version__} is too old: 10.0 or newer is needed")
    if needs_strongly_typed_flag(trt.__version__):
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def profile_shapes(manifest: Manifest) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """min/opt/max input shapes of the optimization profile, from the manifest's batch profile.

    A fixed-size input uses its size at all three points; with dynamic H/W the
    export size is the optimum, half of it the minimum and twice it the maximum.
    """
    height, width = manifest.preprocess.crop
    batch = manifest.batch
    if manifest.dynamic_hw:
        low = (max(32, height // 2), max(32, width // 2))
        high = (height * 2, width * 2)
    else:
        low = high = (height, width)

    def shape(size: int, hw: tuple[int, int]) -> tuple[int, ...]:  # in the input's layout
        channels = manifest.example_shape[-1 if manifest.embedded_preprocess else 0]
        return (size, *hw, channels) if manifest.embedded_preprocess else (size, channels, *hw)

    return {manifest.input.name: (shape(batch.min, low), shape(batch.opt, (height, width)), shape(batch.max, high))}


@dataclass(frozen=True)
class BuildOptions:
    workspace_gib: float = DEFAULT_WORKSPACE_GIB
    timing_cache: Path | None = None
    dla_core: int | None = None
    version_compatible: bool = False
    hardware_compat: str = "none"

    def check(self, trt_version: str | None = None) -> None:
        """One-line errors for options no build could take, and (given the TensorRT version that will
        build) for options that version does not have, before any work is done."""
        if self.hardware_compat not in HARDWARE_COMPAT:
            raise DeployError(f"unknown --hardware-compat {self.hardware_compat!r}; choose {', '.join(HARDWARE_COMPAT)}")
        within("--workspace", self.workspace_gib, 1 / 1024, MAX_WORKSPACE_GIB, "GiB")
        if self.dla_core is not None:
            within("--dla-core", self.dla_core, 0, None)
        since = HARDWARE_COMPAT_SINCE.get(self.hardware_compat)
        if trt_version is not None and since and version_tuple(trt_version) < version_tuple(since):
            raise DeployError(f"--hardware-compat {self.hardware_compat} needs TensorRT {since} or newer; this "
                              f"machine has TensorRT {trt_version} (--hardware-compat ampere+ works there)")


def engine_record(trt_version: str, gpu_name: str, compute_capability: tuple[int, int], built_from: str,
                  options: BuildOptions) -> dict[str, Any]:
    """What the manifest keeps of an engine, so a mismatched runtime or GPU can be named."""
    return {
        "built_from": built_from,
        "tensorrt": trt_version,
        "gpu": gpu_name,
        "compute_capability": f"{compute_capability[0]}.{compute_capability[1]}",
        "version_compatible": options.version_compatible,
        "hardware_compat": options.hardware_compat,
        "dla_core": options.dla_core,
    }


def build_engine(onnx_path: Path, engine_path: Path, shapes: dict[str, tuple], options: BuildOptions, *,
                 built_from: str) -> dict[str, Any]:
    """Parse ``onnx_path`` into a strongly typed network and write a serialized engine atomically.

    ``shapes`` is :func:`profile_shapes`'s answer; ``built_from`` the artifact
    name recorded. Returns the engine record for the manifest. Needs tensorrt and a GPU.
    """
    available = runs_here(ENGINE)
    if not available.available:
        raise DeployError(f"cannot build a TensorRT engine: {available.reason}")
    import tensorrt as trt

    options.check(trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if options.dla_core is not None and options.dla_core >= builder.num_DLA_cores:
        raise DeployError(f"--dla-core {options.dla_core}: this machine has {builder.num_DLA_cores} DLA cores "
                          "(DLA is on Jetson and DRIVE boards)")
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path.name}: {errors[:500]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    _use_timing_cache(config, options.timing_cache)
    if options.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = options.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if options.hardware_compat != "none":
        config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, HARDWARE_COMPAT[options.hardware_compat])
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT could not build an engine from {onnx_path.name} (see the messages above)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    if options.timing_cache is not None:
        _save_timing_cache(config, options.timing_cache)
    name, capability = cuda.device_properties(cuda.current_device())
    return engine_record(trt.__version__, name, capability, built_from, options)


def _use_timing_cache(config: Any, path: Path | None) -> None:
    """Start the build from the timing cache at ``path`` where TensorRT takes it; a cache it rejects
    (another TensorRT version or GPU, a damaged file) is set aside with a warning and an empty one used,
    as Polygraphy does, so the build still runs and writes a good cache."""
    data = b""
    if path is not None and path.exists():
        regular_file(path, "timing cache")
        with locked(path):
            data = path.read_bytes()
    if data:
        cache = config.create_timing_cache(data)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return
        warnings.warn(f"TensorRT rejected the timing cache {path} (built by another TensorRT version or GPU, "
                      "or damaged): building without it; it will be replaced", DeployWarning, stacklevel=3)
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _save_timing_cache(config: Any, path: Path) -> None:
    """Merge this build's timings into the cache at ``path`` under a lock, so builds that run at once
    add to the cache instead of overwriting each other's (Polygraphy's way)."""
    cache = config.get_timing_cache()
    if cache is None:
        warnings.warn(f"TensorRT kept no timing cache for this build: {path} is unchanged", DeployWarning,
                      stacklevel=3)
        return
    with locked(path):
        previous = (config.create_timing_cache(regular_file(path, "timing cache").read_bytes()) if path.exists()
                    else None)  # None: unreadable
        if previous is not None and not cache.combine(previous, ignore_mismatch=True):
            warnings.warn(f"could not merge the earlier timings of {path}: it now holds this build's only",
                          DeployWarning, stacklevel=3)
        atomic_write_bytes(path, bytes(cache.serialize()))
