"""What this machine has: tool versions, the CPU and what its INT8 kernels do."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform


_TOOLS = ("torch", "onnx", "onnxruntime", "onnxsim", "openvino", "tensorrt")
# distributions that install a module under another name: onnxruntime-gpu's onnxruntime, and TensorRT's
# CUDA-specific builds (`tensorrt` itself is only a meta package pulling the cu13 one)
_DISTRIBUTIONS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
                  "tensorrt": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu12-bindings",
                               "tensorrt-cu13-bindings")}


def package_version(name: str) -> str | None:
    for dist in _DISTRIBUTIONS.get(name, (name,)):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def tool_versions() -> dict[str, str]:
    """Versions recorded in manifests; a tool that is not installed is left out."""
    versions = {"python": platform.python_version()}
    for name in _TOOLS:
        version = package_version(name)
        if version is not None:
            versions[name] = version
    return versions


def physical_cores() -> int:
    """Physical cores (ONNX Runtime's best intra-op thread count), from /proc/cpuinfo where it exists."""
    try:
        cores = set()
        physical = core = None
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    physical = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not key and core is not None:
                    cores.add((physical, core))
                    physical = core = None
        if core is not None:
            cores.add((physical, core))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1


def first_cpu_fields() -> dict[str, str]:
    """The first processor's entry of /proc/cpuinfo (model name, flags, ...); empty where there is none."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if not line.strip():
                    break  # the first processor says it all
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


# x86 flags with an int8 dot product that accumulates in int32 (no int16 saturation in ONNX Runtime's kernels)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 dot products (Cooper Lake, Zen 4/5, Sapphire Rapids on)


def cpu_flags() -> set[str]:
    return set(first_cpu_fields().get("flags", "").split())


def int8_isa() -> str:
    """How this CPU runs ONNX Runtime's INT8 kernels: ``"vnni"`` (int32 accumulation), ``"avx2"`` (x86
    without VNNI: u8 x s8 pairs are summed in int16 and can saturate) or ``"other"`` (not x86)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return "other"
    return "vnni" if cpu_flags() & set(VNNI_FLAGS) else "avx2"


def bf16_problem() -> str | None:
    """Why this CPU cannot run bf16 inference natively (OpenVINO would emulate it, slower than f32), or None."""
    if cpu_flags() & set(BF16_FLAGS):
        return None
    return f"this CPU has no native bf16 ({', '.join(BF16_FLAGS)}): bf16 inference would be emulated, slower than f32"


def int8_kernel_problem(cpu_isa: str) -> str | None:
    """Why this CPU's optimised INT8 kernels (ONNX Runtime's and OpenVINO's alike) do not compute an INT8
    artifact exactly as its Q/DQ graph says, given the ISA its weights were made for
    (:attr:`resnet_deploy.precisions.Int8Options.cpu_isa`); None when they do."""
    if cpu_isa == "vnni" and int8_isa() == "avx2":
        return ("this CPU has no VNNI (" + ", ".join(VNNI_FLAGS) + "), so x86 INT8 kernels (ONNX Runtime's, "
                "OpenVINO's) add u8 x s8 products in int16 and saturate on this artifact (8-bit weights); for CPUs "
                "like this one export with --int8-target cpu --reduce-range")
    return None


def cpu_description() -> dict[str, object]:
    """CPU model, core counts and the instruction sets that decide CPU speed (AVX2, AVX-512, VNNI, AMX)."""
    fields = first_cpu_fields()
    flags = set(fields.get("flags", "").split())
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    return {"model": fields.get("model name") or platform.processor() or platform.machine(),
            "logical_cores": os.cpu_count(), "physical_cores": physical_cores(),
            "isa": [f for f in wanted if f in flags], "int8_isa": int8_isa(), "bf16": bf16_problem() or "native"}
