"""Comparing backends' outputs with a reference's, output by output, against a tolerance.

A :class:`Check` says what one runner is compared with (the PyTorch reference,
or another runner: an INT8 graph's CPU kernels against the graph run as
written) and whether it judges the artifact; :func:`run_checks` runs every
check over every input set, the one loop the export gate and verify share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .inputs import InputSet
from .metrics import compare_arrays
from .tolerances import Tolerance


REFERENCE = "torch"  # how rows name the float32 PyTorch reference


@dataclass
class ResultRow:
    backend: str
    batch: int
    output: str
    passed: bool
    failures: list[str]
    figures: dict[str, Any]
    reference: str = REFERENCE  # what the backend is compared with: the PyTorch reference, or another runner
    judged: bool = True  # False: reported only (a runtime that is not the artifact's target, or off-target inputs)
    inputs: str = "random"  # which input set (see parity.inputs)


def compare_outputs(
    backend: str,
    expected: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
    tolerance: Tolerance,
    *,
    reference: str = REFERENCE,
    judged: bool = True,
    inputs: str = "random",
) -> list[ResultRow]:
    """One row per output of ``expected``: its figures and why it fails ``tolerance``, if it does."""
    rows = []
    for name, want in expected.items():
        figures = compare_arrays(want, got[name])
        failures = tolerance.failures(figures)
        rows.append(ResultRow(backend, len(want), name, not failures, failures, figures.to_dict(), reference, judged,
                              inputs))
    return rows


@dataclass
class Check:
    runner: Any  # a backends.base.Runner
    tolerance: Tolerance
    against: str = REFERENCE  # the reference, or the name of a runner checked before this one
    judged: bool = True  # False: its rows are reported, not judged


def run_checks(
    reference: Any, checks: list[Check], sets: list[InputSet]
) -> tuple[list[ResultRow], dict[str, list[dict[str, np.ndarray]]]]:
    """Every check on every batch of every input set: the rows, and each runner's outputs in
    batch order (for accuracy). A row is judged when its check and its input set both are."""
    work = [(inputs, batch) for inputs in sets for batch in inputs.batches]
    outputs = {REFERENCE: [reference(batch) for _, batch in work]}
    rows = []
    for check in checks:
        name = check.runner.name
        if name not in outputs:  # a runner checked twice (against PyTorch and another runner) runs once
            outputs[name] = [check.runner(batch) for _, batch in work]
        for (inputs, _), want, got in zip(work, outputs[check.against], outputs[name]):
            rows += compare_outputs(name, want, got, check.tolerance, reference=check.against,
                                    judged=check.judged and inputs.judged, inputs=inputs.label)
    return rows, outputs
