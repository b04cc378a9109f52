"""`doctor`: what this machine can run and why not, one line per variant of every backend in the registry."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Any

from ..environment import INT8_ISA_WORDS, SPEED_FLAGS, cpu_description, package_version, torch_build
from . import detect
from .registry import variants

OPTIONAL_TOOLS = ("onnx", "onnxsim", "onnxscript", "openvino", "matplotlib")  # versions doctor reports


@dataclass
class DoctorReport:
    """The machine (Python, CPU with its ISA, torch and its build, ONNX Runtime's providers, cuda-python,
    TensorRT, the optional tools) and every backend variant: usable, or why not."""

    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.data

    def to_text(self) -> str:
        report, cpu, torch_info = self.data, self.data["cpu"], self.data["torch"]
        lines = [
            f"python       {report['python']} ({report['platform']})",
            f"cpu          {cpu['model']}, {cpu['physical_cores']} physical / {cpu['logical_cores']} logical cores, "
            f"{_isa_words(cpu)}",
            f"int8 kernels {INT8_ISA_WORDS[cpu['int8_isa']]}",
            "bf16         " + ("native: the bf16 precision runs here (OpenVINO on the fp32 file: export --bf16, "
                               "--openvino-bf16, tune)" if cpu["bf16"] == "native" else cpu["bf16"]),
            f"torch        {torch_info['version'] or 'not installed'}, "
            + (f"CUDA {torch_info['cuda_build']}: {', '.join(torch_info['gpus'])}" if torch_info["cuda"]
               else torch_info["reason"]),
            *_torch_build_lines(torch_info["build"]),
            f"onnxruntime  {report['onnxruntime']['version']}, providers: {', '.join(report['onnxruntime']['providers'])}",
            *[f"{name:<12} {report[name]['version'] or 'not installed'}" for name in OPTIONAL_TOOLS],
            _cuda_line(report["cuda"]),
            f"tensorrt     {report['tensorrt']['version'] or 'not installed'}",
            "", "backends:",
        ]
        lines += [f"  {name:<21} {'yes' if state['usable'] else 'no: ' + state['reason']}"
                  for name, state in report["backends"].items()]
        return "\n".join(lines)


def _isa_words(cpu: dict[str, Any]) -> str:
    """The speed-deciding instruction sets this CPU has, in its own family's names (never x86's on ARM)."""
    known = SPEED_FLAGS[cpu.get("arch", "x86")]
    return " ".join(cpu["isa"]) or (f"none of {' '.join(known)}" if known else f"{platform.machine()}: none examined")


def _cuda_line(cuda: dict[str, Any]) -> str:
    return (f"cuda         cuda-python {cuda['cuda_python'] or 'not installed'}"
            + (f", runtime CUDA {cuda['runtime']}" if cuda["runtime"] else "")
            + (f", driver CUDA {cuda['driver']}" if cuda["driver"] else "")
            + (f": {cuda['problem']}" if cuda["problem"] else f", {cuda['gpus']} GPU(s)"))


def _torch_build_lines(build: dict | None) -> list[str]:
    """doctor's lines on the PyTorch build: which, and where it does not fit the machine, what replaces it."""
    if build is None:
        return []
    fits = "fits this machine" if build["fits"] else build["problem"]
    return [f"torch build  {build['build']}: {fits}"] + ([f"             replace it: {build['fix']}"]
                                                         if build["fix"] else [])


def doctor() -> DoctorReport:
    """What this machine can run and why not: the report of `resnet-deploy doctor`.

    Returns:
        The :class:`DoctorReport`.
    """
    report: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                              "cpu": cpu_description()}
    cuda = detect.torch_cuda()
    try:
        import torch
    except ImportError:  # a target that runs artifacts needs no PyTorch
        torch = None
    report["torch"] = {"version": torch.__version__ if torch else None,
                       "cuda_build": torch.version.cuda if torch else None,
                       "cuda": cuda.available, "reason": cuda.reason or None,
                       "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                       if cuda.available else [], "build": torch_build()}
    for name in OPTIONAL_TOOLS:
        report[name] = {"version": package_version(name)}
    import onnxruntime as ort

    report["onnxruntime"] = {"version": package_version("onnxruntime"), "providers": ort.get_available_providers()}
    report["cuda"] = cuda_report()
    trt = detect.tensorrt()
    report["tensorrt"] = {"version": package_version("tensorrt"), "usable": trt.available, "reason": trt.reason or None}
    report["backends"] = {variant.name: {"backend": backend.name, "usable": state.available,
                                         "reason": state.reason or None}
                          for backend, variant in variants() for state in [variant.availability()]}
    return DoctorReport(report)


def cuda_report() -> dict[str, object]:
    """What cuda-python sees: its version, the CUDA versions of the driver and of its runtime, the GPUs,
    and what stops it, for doctor (TensorRT's cu12 and cu13 builds each need a driver of their CUDA)."""
    from . import cuda

    installed = package_version("cuda-python") or package_version("cuda-bindings")
    if not cuda.bindings_installed():
        return {"cuda_python": installed, "driver": None, "runtime": None, "gpus": 0,
                "problem": cuda.INSTALL_HINT}
    found = cuda.versions()
    gpus = cuda.device_count()
    problem = cuda.driver_problem(found) or (None if gpus else "the CUDA runtime sees no GPU")
    return {"cuda_python": installed, **found, "gpus": gpus, "problem": problem}
