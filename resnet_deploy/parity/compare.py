"""Comparing one backend's outputs with the reference's, output by output, against a tolerance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .metrics import compare_arrays
from .tolerances import Tolerance


@dataclass
class ResultRow:
    backend: str
    batch: int
    output: str
    passed: bool
    failures: list[str]
    figures: dict[str, Any]


def compare_outputs(
    backend: str, expected: dict[str, np.ndarray], got: dict[str, np.ndarray], tolerance: Tolerance
) -> list[ResultRow]:
    """One row per output of ``expected``: its figures and why it fails ``tolerance``, if it does."""
    rows = []
    for name, want in expected.items():
        figures = compare_arrays(want, got[name])
        failures = tolerance.failures(figures)
        rows.append(ResultRow(backend, len(want), name, not failures, failures, figures.to_dict()))
    return rows
