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

from ..environment import int8_kernel_problem
from ..precisions import Int8Options
from .compare import Check
from .tolerances import KERNEL_TOLERANCE, Tolerance


def int8_checks(options: Int8Options, tolerance: Tolerance, as_written: str,
                kernels: list[tuple[str, bool]]) -> tuple[list[Check], list[str]]:
    """The checks of an INT8 ONNX on CPU, and notes saying what is judged and why.

    Args:
        options: how the artifact was quantized (its manifest record).
        tolerance: the precision's tolerance against the reference.
        as_written: the name of the runner executing the graph as written (ONNX Runtime, every graph
            optimisation off): judged against the reference, the quantization error.
        kernels: (name, runs it as written) of each runner of optimised CPU kernels (ONNX Runtime's,
            OpenVINO's): each is compared with the reference (judged for the ``cpu`` target on a CPU
            whose kernels do not saturate on the artifact, reported otherwise) and with the graph as
            written (judged as well where the runner executes the Q/DQ graph as written: OpenVINO derives
            its own INT8 graph from the Q/DQ pairs, so its rows there are reported).

    Returns:
        The checks, and the notes.
    """
    problem = int8_kernel_problem(options.cpu_isa)
    names = ", ".join(name for name, _ in kernels)
    notes = [f"int8 judged on {as_written} (every Q/DQ executed as written: the quantization itself, "
             "independent of CPU kernels)"]
    if options.target == "cpu":
        judge = problem is None
        if problem:
            notes.append(f"{names} kernels reported, not judged: {problem}")
    else:
        judge = False
        notes.append(f"{names} reported, not judged: the {options.target} target runs on TensorRT (int32 "
                     "accumulation)" + (f"; {problem}" if problem else ""))
    checks = [Check(as_written, tolerance)]
    for name, runs_as_written in kernels:
        checks += [Check(name, tolerance, judged=judge),
                   Check(name, KERNEL_TOLERANCE, against=as_written, judged=judge and runs_as_written)]
        if judge and not runs_as_written:
            notes.append(f"{name} against the graph as written reported, not judged: it compiles its own "
                         "INT8 graph from the Q/DQ pairs (judged against PyTorch instead)")
    return checks, notes
