"""Pass/fail criteria by precision.

fp32: the artifact computes the same function up to float32 reordering, so the
largest error must stay within 1e-4 of the output scale and the top-1 class
never changes. fp16 and int8 are judged by direction (cosine) and decision
(top-1 agreement), since their elementwise error is large by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..artifacts import ErrorFigures
from ..errors import DeployError, within
from ..precisions import PRECISIONS
from .inputs import HOLDOUT, RANDOM, InputSet


@dataclass(frozen=True)
class Tolerance:
    max_rel_to_scale: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None

    def failures(self, figures: ErrorFigures) -> list[str]:
        """Why ``figures`` fail this tolerance; empty when they pass."""
        reasons = []
        if not figures.finite:
            reasons.append("NaN or Inf in output")
            return reasons
        if self.max_rel_to_scale is not None and figures.rel_to_scale > self.max_rel_to_scale:
            reasons.append(f"max |error| = {figures.rel_to_scale:.2e} of output scale > {self.max_rel_to_scale:.0e}")
        if self.min_cosine is not None and figures.cosine < self.min_cosine:
            reasons.append(f"cosine {figures.cosine:.6f} < {self.min_cosine}")
        if self.min_top1 is not None and figures.top1_agreement is not None and figures.top1_agreement < self.min_top1:
            reasons.append(f"top-1 agreement {figures.top1_agreement:.1%} < {self.min_top1:.0%}")
        return reasons

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


RANDOM_INIT_NOTE = (
    "top-1 agreement not judged for {precision} on random-init weights: their logits are near-tied (top-1/top-2 "
    "margin a few hundredths of the logit spread), so {precision}'s expected error flips them; cosine still is"
)

DEFAULT_TOLERANCES = {name: Tolerance(**p.tolerance) for name, p in PRECISIONS.items()}


# An INT8 graph's optimised CPU kernels against the same graph run as written (every Q/DQ executed):
# exact integer kernels differ only by requantisation rounding (cosine 1.0000 measured on AVX2 with
# reduce_range); int16 saturation without VNNI shows as 0.98-0.994.
KERNEL_TOLERANCE = Tolerance(min_cosine=0.999)


def tolerance_for(precision: str, *, random_init: bool) -> tuple[Tolerance, str | None]:
    """The default tolerance of ``precision`` for an artifact, and a note when a criterion is set aside.

    fp32 and fp16 errors are far below a random model's logit margins, so
    their top-1 criterion holds even on random weights; bf16's and int8's are not.
    """
    tolerance = DEFAULT_TOLERANCES[precision]
    if random_init and not PRECISIONS[precision].top1_on_random_weights:
        return replace(tolerance, min_top1=None), RANDOM_INIT_NOTE.format(precision=precision)
    return tolerance, None


# Tolerance field -> (its verify option, lowest, highest)
OVERRIDABLE = {"max_rel_to_scale": ("--max-error", 0.0, None), "min_cosine": ("--min-cosine", -1.0, 1.0),
               "min_top1": ("--min-top1", 0.0, 1.0)}


@dataclass(frozen=True)
class Policy:
    """How an artifact of one precision is judged: its tolerance, which input sets judge it, and notes
    saying what was set aside and why (the precision table's rules, then the user's overrides)."""

    precision: str
    tolerance: Tolerance
    notes: list[str] = field(default_factory=list)
    random_init: bool = False

    @classmethod
    def make(cls, precision: str, *, random_init: bool, overrides: dict[str, Any] | None = None) -> Policy:
        """Raises DeployError for an unknown or out-of-range override."""
        tolerance, note = tolerance_for(precision, random_init=random_init)
        overrides = overrides or {}
        for key, value in overrides.items():
            if key not in OVERRIDABLE:
                raise DeployError(f"unknown tolerance {key!r}: choose from {', '.join(OVERRIDABLE)}")
            option, low, high = OVERRIDABLE[key]
            within(option, value, low, high)
        if "min_top1" in overrides:
            note = None
        return cls(precision, replace(tolerance, **overrides), [note] if note else [], random_init)

    def of(self, precision: str) -> Policy:
        """Another precision's default policy for the same weights: a runner of the file that computes in
        ``precision`` (OpenVINO's bf16 on the fp32 file) is judged by it, not by the user's overrides."""
        return self if precision == self.precision else Policy.make(precision, random_init=self.random_init)

    def judges(self, label: str, labels: set[str]) -> bool:
        """Whether the input set ``label`` (among ``labels``) judges the artifact: every set does, except
        random images beside a calibration hold-out for a precision judged on its data (see
        :mod:`resnet_deploy.parity.inputs`)."""
        return label != RANDOM or HOLDOUT not in labels or PRECISIONS[self.precision].judged_on_random_images

    def judges_in(self, sets: list[InputSet]) -> Callable[[str], bool]:
        """:meth:`judges` for the labels of ``sets``."""
        labels = {s.label for s in sets}
        return lambda label: self.judges(label, labels)
