"""What this machine has: tool versions, the CPU and what its INT8 kernels do, the PyTorch build and whether
it fits the machine."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import re
from pathlib import Path


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


def extra_modules(extra: str) -> set[str]:
    """The modules an extra of this package installs (its distributions' names, as they import), from the
    installed metadata: pyproject.toml is the one list."""
    try:
        requirements = importlib.metadata.requires("resnet-deploy") or []
    except importlib.metadata.PackageNotFoundError:  # a source tree on the path, not installed: its pyproject
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        listed = re.search(rf"^{re.escape(extra)}\s*=\s*\[(.*?)\]", pyproject.read_text(), re.M | re.S) \
            if pyproject.is_file() else None
        requirements = [f'{r}; extra == "{extra}"' for r in re.findall(r'"([^"]+)"', listed.group(1))] if listed else []
    marker = re.compile(r"""extra\s*==\s*["']""" + re.escape(extra) + """["']""")
    return {re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].replace("-", "_")
            for line in requirements if marker.search(line)}


def tool_versions() -> dict[str, str]:
    """Versions recorded in manifests; a tool that is not installed is left out."""
    versions = {"python": platform.python_version()}
    for name in _TOOLS:
        version = package_version(name)
        if version is not None:
            versions[name] = version
    return versions


CPUINFO = "/proc/cpuinfo"  # the CPU's description, read by the functions below


def physical_cores() -> int:
    """Physical cores (ONNX Runtime's best intra-op thread count), from /proc/cpuinfo where it exists."""
    try:
        cores = set()
        physical = core = None
        with open(CPUINFO) as handle:
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
    """The first processor's entry of /proc/cpuinfo (x86: model name, flags; ARM: Features, CPU implementer,
    CPU part); empty where there is none."""
    fields: dict[str, str] = {}
    try:
        with open(CPUINFO) as handle:
            for line in handle:
                if not line.strip():
                    break  # the first processor says it all
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_architecture() -> str:
    """``"x86"`` (x86-64, the 32-bit kind too), ``"arm"`` (AArch64) or ``"other"``: the family whose
    instruction-set names, INT8 kernels and bf16 support apply."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686"):
        return "x86"
    return "arm" if machine in ("aarch64", "arm64") else "other"


# the instruction sets that decide CPU inference speed, in each family's own /proc/cpuinfo names (ARM's
# `Features`: asimddp is the int8 dot product SDOT/UDOT, i8mm the int8 matrix multiply SMMLA/UMMLA, bf16
# BFDOT/BFMMLA)
SPEED_FLAGS = {"x86": ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16"),
               "arm": ("asimd", "asimddp", "i8mm", "bf16", "sve", "sve2"),
               "other": ()}
# x86 flags with an int8 dot product that accumulates in int32 (no int16 saturation in ONNX Runtime's kernels)
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
INT8_ISA_WORDS = {  # what each answer of int8_isa() means for an INT8 artifact, in doctor's words
    "vnni": "VNNI: x86 INT8 kernels (ONNX Runtime's, OpenVINO's) accumulate in int32 (any INT8 artifact runs exactly)",
    "avx2": "no VNNI: x86 INT8 kernels (ONNX Runtime's, OpenVINO's) add u8 x s8 pairs in int16 and saturate on "
            "8-bit weights; export --int8-target cpu uses 7-bit weights (reduce_range) here",
    "i8mm": "i8mm: ARM INT8 kernels use the int8 matrix multiply (SMMLA/UMMLA: twice the multiply-adds per "
            "instruction of the dot product) and accumulate in int32 (any INT8 artifact runs exactly)",
    "dotprod": "dotprod: ARM INT8 kernels use the int8 dot product (SDOT/UDOT) and accumulate in int32 (any INT8 "
               "artifact runs exactly); no i8mm matrix multiply",
    "neon": "no dot product: ARM INT8 kernels multiply into 16-bit products (exact for 8-bit operands) and add them "
            "into int32 (any INT8 artifact runs exactly), with more instructions per product than SDOT/SMMLA",
    "other": "neither x86 nor ARM: INT8 kernels of this CPU were never examined",
}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 dot products (Cooper Lake, Zen 4/5, Sapphire Rapids on)
# ARM's own cores by `CPU part` (`CPU implementer` 0x41), and the boxes they are in: /proc/cpuinfo on AArch64
# names no model
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
             "0xd08": "Cortex-A72 (Raspberry Pi 4)", "0xd0b": "Cortex-A76 (Raspberry Pi 5)",
             "0xd0c": "Neoverse-N1 (Graviton2, Ampere Altra)", "0xd40": "Neoverse-V1 (Graviton3)",
             "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE (Jetson Orin)", "0xd49": "Neoverse-N2",
             "0xd4f": "Neoverse-V2 (Graviton4, Grace)", "0xd84": "Neoverse-V3"}


def cpu_flags() -> set[str]:
    """The first processor's instruction-set flags: x86's ``flags`` line or ARM's ``Features``."""
    return _flags(first_cpu_fields())


def _flags(fields: dict[str, str]) -> set[str]:
    return set((fields.get("flags") or fields.get("Features") or "").split())


def int8_isa() -> str:
    """How this CPU runs ONNX Runtime's INT8 kernels: on x86 ``"vnni"`` (int32 accumulation) or ``"avx2"``
    (without VNNI: u8 x s8 pairs are summed in int16 and can saturate); on ARM ``"i8mm"``, ``"dotprod"`` or
    ``"neon"`` (all accumulate in int32); ``"other"`` elsewhere."""
    family, flags = cpu_architecture(), cpu_flags()
    if family == "x86":
        return "vnni" if flags & set(VNNI_FLAGS) else "avx2"
    if family == "arm":
        return "i8mm" if "i8mm" in flags else "dotprod" if "asimddp" in flags else "neon"
    return "other"


def bf16_problem() -> str | None:
    """Why this CPU cannot run bf16 inference natively (OpenVINO's CPU plugin, the one bf16 runtime here), or
    None: on x86 emulated bf16 would be slower than f32; on ARM the plugin computes f32 and f16 only."""
    family, flags = cpu_architecture(), cpu_flags()
    if family == "arm":
        has = "has bf16 instructions (BFDOT, BFMMLA)" if "bf16" in flags else "has no bf16 instructions"
        return f"this ARM CPU {has}, and OpenVINO's CPU plugin computes f32 and f16 on ARM, not bf16"
    if family != "x86":
        return f"OpenVINO's CPU plugin does not compute bf16 on {platform.machine()}"
    if flags & set(BF16_FLAGS):
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


def cpu_model(fields: dict[str, str]) -> str:
    """The CPU's name: x86's ``model name``; on ARM, which core its implementer and part numbers say."""
    if fields.get("model name"):
        return fields["model name"]
    implementer, part = fields.get("CPU implementer", "").lower(), fields.get("CPU part", "").lower()
    if implementer:
        known = ARM_PARTS.get(part) if implementer == "0x41" else None
        return f"ARM {known}" if known else f"ARM CPU (implementer {implementer}, part {part or '?'})"
    return platform.processor() or platform.machine()


def cpu_description() -> dict[str, object]:
    """CPU family and model, core counts and the instruction sets that decide CPU speed (x86: AVX2, AVX-512,
    VNNI, AMX; ARM: NEON, dot product, i8mm, bf16, SVE)."""
    fields, family = first_cpu_fields(), cpu_architecture()
    flags = _flags(fields)
    return {"model": cpu_model(fields), "arch": family, "logical_cores": os.cpu_count(),
            "physical_cores": physical_cores(), "isa": [f for f in SPEED_FLAGS[family] if f in flags],
            "int8_isa": int8_isa(), "bf16": bf16_problem() or "native"}


# PyTorch's own index of CPU-only builds: pip's default `torch` on Linux x86-64 is a CUDA build of several GB
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
# what a CUDA build of torch brings beside itself: the CUDA libraries' distributions
_CUDA_DISTRIBUTION_PREFIXES = ("nvidia-", "cuda-")
_CUDA_DISTRIBUTIONS = ("triton",)  # the GPU kernel compiler, not Triton Inference Server's tritonclient


def nvidia_driver_present() -> bool:
    """An NVIDIA kernel driver is loaded (a discrete GPU's /proc entry or device node, or a Jetson's Tegra
    release file): the machine has an NVIDIA GPU, whatever Python packages are installed."""
    return any(os.path.exists(path) for path in ("/proc/driver/nvidia/version", "/dev/nvidiactl",
                                                 "/etc/nv_tegra_release"))


def _torch_cuda_version() -> str | None:
    """The CUDA version the installed torch was built for (None: a CPU build), read from its version.py
    without importing torch (a CUDA build takes seconds to import)."""
    spec = importlib.util.find_spec("torch")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            text = open(os.path.join(folder, "version.py")).read()
        except OSError:
            continue
        found = re.search(r"^cuda\b[^=]*=\s*(?:'([^']*)'|\"([^\"]*)\"|None)", text, re.MULTILINE)
        return (found.group(1) or found.group(2)) if found else None
    return None


def _cuda_parts() -> tuple[list[str], int]:
    """The installed CUDA libraries' distributions (nvidia-*, cuda-*, triton) and the bytes they and torch's
    own CUDA kernels take."""
    names, size = [], 0
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        files = dist.files or []
        if name.startswith(_CUDA_DISTRIBUTION_PREFIXES) or name in _CUDA_DISTRIBUTIONS:
            names.append(name)
            size += sum(f.size or 0 for f in files)
        elif name == "torch":
            size += sum(f.size or 0 for f in files if "cuda" in f.name and ".so" in f.name)
    return sorted(set(names)), size


def torch_build() -> dict[str, object] | None:
    """Which PyTorch build is installed and whether it fits this machine; None without torch.

    Returns:
        ``version``, ``build`` ("cpu" or "cuda X.Y"), ``gpu`` (an NVIDIA driver is loaded), ``fits``, and
        where it does not fit: ``problem``, ``cuda_bytes`` (what the CUDA parts take) and ``fix`` (the
        commands that replace it).
    """
    version = package_version("torch")
    if version is None:
        return None
    cuda, gpu = _torch_cuda_version(), nvidia_driver_present()
    report: dict[str, object] = {"version": version, "build": f"cuda {cuda}" if cuda else "cpu", "gpu": gpu,
                                 "fits": bool(cuda) == gpu, "problem": None, "fix": None}
    if cuda and not gpu:
        names, size = _cuda_parts()
        release = version.split("+")[0]
        report.update(cuda_bytes=size, problem=(
            f"a CUDA {cuda} build on a machine with no NVIDIA GPU: its CUDA libraries take "
            f"{size / 2**30:.1f} GiB here, unused"),
            fix=f"pip uninstall -y torch {' '.join(names)} && pip install torch=={release} --index-url {CPU_TORCH_INDEX}")
    elif gpu and not cuda:
        report["problem"] = ("a CPU build on a machine with an NVIDIA GPU: the PyTorch reference runs on the CPU "
                             "and torch-cuda is unavailable (pip's default torch is a CUDA build)")
    return report
