"""Judging run results: each runner's outputs against a reference's, output by output.

A :class:`Check` says what one runner is compared with (the reference, or
another runner: an INT8 graph's CPU kernels against the graph run as written),
with which tolerance, and whether it judges the artifact; :func:`judge` turns
:class:`~resnet_deploy.parity.results.RunResults` and checks into rows, the one
pass the export gate and verify share. Nothing here runs a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..artifacts import ErrorFigures
from .metrics import compare_arrays
from .results import RunResults
from .tolerances import Policy, Tolerance

REFERENCE = "torch"  # how rows name the float32 PyTorch reference


@dataclass
class ResultRow:
    backend: str
    batch: int
    output: str
    passed: bool
    failures: list[str]
    figures: ErrorFigures
    reference: str = REFERENCE  # what the backend is compared with: the PyTorch reference, or another runner
    judged: bool = True  # False: reported only (a runtime that is not the artifact's target, or off-target inputs)
    inputs: str = "random"  # which input set (see parity.inputs)


@dataclass(frozen=True)
class Check:
    runner: str  # a runner's name in the results
    tolerance: Tolerance
    against: str | None = None  # None: the reference; else the name of another runner in the results
    judged: bool = True  # False: its rows are reported, not judged
    policy: Policy | None = None  # which input sets judge it, where not the artifact's rule (another precision's)


def compare_outputs(backend: str, expected: dict[str, np.ndarray], got: dict[str, np.ndarray], tolerance: Tolerance,
                    **labels: Any) -> list[ResultRow]:
    """One row per output of ``expected``: its figures and why it fails ``tolerance``, if it does;
    ``labels``: ResultRow's reference, judged and inputs."""
    rows = []
    for name, want in expected.items():
        figures = compare_arrays(want, got[name])
        failures = tolerance.failures(figures)
        rows.append(ResultRow(backend, len(want), name, not failures, failures, figures, **labels))
    return rows


def judge(results: RunResults, checks: list[Check], *, reference: str, reference_label: str = REFERENCE,
          judges: Callable[[str], bool] = lambda _label: True) -> list[ResultRow]:
    """Every check on every batch of the results, in order.

    Args:
        results: the outputs of the reference and of every checked runner on the same inputs.
        checks: what to compare.
        reference: the runner a check without ``against`` is compared with; rows name it ``reference_label``.
        judges: whether an input set (by label) judges: the precision's rule
            (:meth:`~resnet_deploy.parity.tolerances.Policy.judges`), or the check's own policy's; a row is
            judged when its check is too.

    Returns:
        One row per check, batch and output.
    """
    rows = []
    labels = {s.label for s in results.sets}
    for check in checks:
        against = check.against or reference
        judged_on = (lambda label: check.policy.judges(label, labels)) if check.policy else judges
        for (label, _), want, got in zip(results.batches, results.outputs[against], results.outputs[check.runner]):
            rows += compare_outputs(check.runner, want, got, check.tolerance,
                                    reference=reference_label if against == reference else against,
                                    judged=check.judged and judged_on(label), inputs=label)
    return rows
