"""Which runners check an artifact, and how each is judged; and :func:`check`, the one verification sequence
(plan, run, close, judge) the export gate, ``tune`` and ``verify`` share.

Every runner is opened through the backend registry. A runner of a precision whose graph means
what it says only run as written (Q/DQ INT8) on a backend's optimised CPU kernels is judged in
two steps (:mod:`.int8`): the graph as written against the reference, the kernels against that.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..artifacts import Manifest
from ..backends.load_options import LoadOptions
from ..backends.registry import Backend, Variant, native_backend, open_runner
from ..errors import DeployWarning
from ..precisions import PRECISIONS
from .compare import REFERENCE, Check, ResultRow, judge
from .int8 import int8_checks
from .results import RunResults, run
from .tolerances import Policy


@dataclass
class CheckPlan:
    """The runners to run (opened, to be closed), the checks to judge their outputs by, and notes."""

    runners: list[Any] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        for runner in self.runners:
            runner.close()


def _open(artifact: Path, manifest: Manifest, precision: str, backend: str, options: LoadOptions) -> Any:
    with warnings.catch_warnings():  # the INT8 kernels' problem is the plan's note, not a warning
        warnings.simplefilter("ignore", DeployWarning)
        return open_runner(artifact, manifest, precision, backend, replace(options, graph_cache=False))


def plan_checks(artifact: Path, manifest: Manifest, precision: str, policy: Policy,
                variants: list[tuple[Backend, Variant]]) -> CheckPlan:
    """A runner of ``artifact`` (of file precision ``precision``) per variant and the checks of each.

    Args:
        artifact: the file; ``manifest`` is its manifest (a draft, during the export).
        precision: the file's precision (``engine`` for an engine); ``policy`` judges it.
        variants: the registry's (backend, variant) pairs to run it on; each must be able to run here.

    Returns:
        The plan; the caller closes it (a changed file never meets a graph cache: none is used).
    """
    plan = CheckPlan()
    row = PRECISIONS.get(precision)  # None for an engine: judged as its source, on its own runtime
    kernels: list[tuple[str, bool]] = []
    with contextlib.ExitStack() as failed:
        failed.callback(plan.close)
        for backend, variant in variants:
            runner = _open(artifact, manifest, precision, backend.name, variant.options)
            plan.runners.append(runner)
            if row is not None and row.runs_as_written and backend.cpu_int8_kernels and runner.device == "cpu":
                kernels.append((runner.name, variant.int8_as_written))
            elif variant.precision is not None and variant.precision != policy.precision:
                computed = policy.of(variant.precision)  # the file computed in another precision: judged as it
                plan.checks.append(Check(runner.name, computed.tolerance, policy=computed))
                plan.notes += [f"{runner.name} computes the file in {variant.precision}: judged at {variant.precision}'s "
                               f"tolerance", *computed.notes]
            else:
                plan.checks.append(Check(runner.name, policy.tolerance))
        if kernels:
            as_written = _open(artifact, manifest, precision, native_backend(precision).name,
                               LoadOptions(device="cpu", own={"as_written": True}))
            plan.runners.insert(0, as_written)
            checks, notes = int8_checks(manifest.options(precision), policy.tolerance, as_written.name, kernels)
            plan.checks = checks + plan.checks
            plan.notes = notes + plan.notes
        failed.pop_all()
    return plan


@dataclass
class Checked:
    """What :func:`check` found: every output (the reference's and the checked runners'), the judged rows, the
    checked runners' names (the runner of the artifact last) and the plan's notes."""

    results: RunResults
    rows: list[ResultRow]
    runners: list[str]
    notes: list[str]

    @property
    def first_failure(self) -> ResultRow | None:
        """The first judged row beyond its tolerance, or None."""
        return next((row for row in self.rows if row.judged and not row.passed), None)

    @property
    def judged(self) -> list[ResultRow]:
        """The rows that decide (every row where none does: the figures are still reported)."""
        return [row for row in self.rows if row.judged] or self.rows


def check(artifact: Path, manifest: Manifest, precision: str, policy: Policy, variants: list[tuple[Backend, Variant]],
          reference: RunResults, reference_name: str, *, reference_label: str = REFERENCE,
          plan: CheckPlan | None = None) -> Checked:
    """Run ``artifact`` on each variant on the reference's inputs and judge every output by ``policy``.

    Args:
        artifact, manifest, precision, policy, variants: as :func:`plan_checks` takes them.
        reference: the reference's outputs on its input sets (left as they were: runners are added to a copy).
        reference_name: the reference's runner name in ``reference``; rows name it ``reference_label``.
        plan: the runners already opened by :func:`plan_checks` (a caller that tells a file that does not
            load apart from one that fails later); default: opened here.

    Returns:
        The :class:`Checked` outputs and rows; the runners are closed.
    """
    plan = plan or plan_checks(artifact, manifest, precision, policy, variants)
    try:
        results = run(plan.runners, [], into=reference.copy())
    finally:
        plan.close()
    rows = judge(results, plan.checks, reference=reference_name, reference_label=reference_label,
                 judges=policy.judges_in(results.sets))
    return Checked(results, rows, [runner.name for runner in plan.runners], plan.notes)
