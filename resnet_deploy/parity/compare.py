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
    against: str | None = None  # None: the reference; else the name of a runner checked before this one
    judged: bool = True  # False: its rows are reported, not judged


def run_checks(
    reference: Any, checks: list[Check], sets: list[InputSet], *, reference_label: str = REFERENCE
) -> tuple[list[ResultRow], dict[str, list[dict[str, np.ndarray]]]]:
    """Every check on every batch of every input set: the rows, and each runner's outputs in
    batch order (for accuracy), the reference's under ``reference_label``. A row is judged when
    its check and its input set both are."""
    work = [(inputs, batch) for inputs in sets for batch in inputs.batches]
    outputs = {reference_label: [reference(batch) for _, batch in work]}
    rows = []
    for check in checks:
        name = check.runner.name
        if name not in outputs:  # a runner checked twice (against PyTorch and another runner) runs once
            outputs[name] = [check.runner(batch) for _, batch in work]
        against = check.against or reference_label
        for (inputs, _), want, got in zip(work, outputs[against], outputs[name]):
            rows += compare_outputs(name, want, got, check.tolerance, reference=against,
                                    judged=check.judged and inputs.judged, inputs=inputs.label)
    return rows, outputs


class Memoized:
    """A deterministic runner (the PyTorch reference) run once per batch object, however many checks ask."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.name = runner.name
        self._seen: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}  # the batch kept: its id stays unique

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if id(batch) not in self._seen:
            self._seen[id(batch)] = (batch, self.runner(batch))
        return self._seen[id(batch)][1]
