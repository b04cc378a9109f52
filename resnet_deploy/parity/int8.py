"""INT8 artifacts judged twice: what quantization does, and what a CPU's kernels do to it.

A Q/DQ graph run by ONNX Runtime with every graph optimisation off executes
each QuantizeLinear -> DequantizeLinear -> float op as written: that is what
the INT8 model means, on any machine, and what TensorRT (int32 accumulation)
computes up to rounding. Its error against PyTorch is the quantization error.
The optimised CPU kernels against that run are the kernel error: zero in
principle, but on x86 without VNNI the u8s8/s8s8 kernels add pairs of
products in int16 and saturate unless the weights were reduced to 7 bits.
"""

from __future__ import annotations

import os

from ..backends.base import Runner
from ..backends.onnxrt import OnnxRuntimeRunner
from ..environment import int8_kernel_problem
from .compare import Check
from .tolerances import KERNEL_TOLERANCE, Tolerance


def int8_checks(path: str | os.PathLike[str], int8_options: dict, tolerance: Tolerance,
                kernels: list[tuple[Runner, bool]]) -> tuple[list[Check], list[str]]:
    """The checks of an INT8 ONNX on CPU, and notes saying what is judged and why: the graph as
    written against PyTorch (judged: the quantization error), then each runner of optimised CPU
    ``kernels`` (ONNX Runtime's, OpenVINO's) against PyTorch (judged for the ``cpu`` target on a
    CPU whose kernels do not saturate on the artifact, reported otherwise) and against the graph as
    written (judged as well where the runner executes the Q/DQ graph as written, its flag in
    ``kernels``: OpenVINO derives its own INT8 graph from the Q/DQ pairs, so its rows there are
    reported)."""
    simulated = OnnxRuntimeRunner(path, optimize=False)
    problem = int8_kernel_problem(int8_options)
    names = ", ".join(runner.name for runner, _ in kernels)
    notes = [f"int8 judged on {simulated.name} (every Q/DQ executed as written: the quantization itself, "
             "independent of CPU kernels)"]
    if int8_options.get("target") == "cpu":
        judge = problem is None
        if problem:
            notes.append(f"{names} kernels reported, not judged: {problem}")
    else:
        judge = False
        notes.append(f"{names} reported, not judged: the trt target runs on TensorRT (int32 accumulation)"
                     + (f"; {problem}" if problem else ""))
    checks = [Check(simulated, tolerance)]
    for runner, as_written in kernels:
        checks += [Check(runner, tolerance, judged=judge),
                   Check(runner, KERNEL_TOLERANCE, against=simulated.name, judged=judge and as_written)]
        if judge and not as_written:
            notes.append(f"{runner.name} against the graph as written reported, not judged: it compiles its own "
                         "INT8 graph from the Q/DQ pairs (judged against PyTorch instead)")
    return checks, notes
