"""``batch --check N``: the parity gate's habit carried to the batch job.

N images spread over the invocation are kept as the job computed them (in lanes or in Ray's actors) and
re-run afterwards one plain call at a time through the driver's runner; the two are compared within the
precision's tolerance. A mix-up between lanes, a wrong actor or a batch effect shows as a failure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..backends.base import Runner
from ..parity.metrics import compare_arrays
from ..parity.tolerances import tolerance_for
from ..target.pipeline import Item

MAX_CHECK = 1024  # images whose outputs are kept for the check (a few MB) and re-run after the job


class CheckPicker:
    """The images to keep: targets spread evenly over the invocation's positions; a target that cannot be
    read hands its turn to the next image that can."""

    def __init__(self, positions: np.ndarray, count: int) -> None:
        picks = np.linspace(0, len(positions) - 1, min(count, len(positions))).round().astype(int)
        self.targets = [int(positions[i]) for i in np.unique(picks)] if count and len(positions) else []
        self.next = 0
        self.kept: dict[int, Item] = {}

    def offer(self, item: Item) -> None:
        if self.next < len(self.targets) and item.position >= self.targets[self.next] and item.outputs is not None:
            self.kept[item.position] = item
            self.next += 1


def run_check(runner: Runner, model_input: Callable[[int], np.ndarray], output: str, kept: dict[int, Item],
              ran: int) -> dict[str, Any]:
    """The kept images re-run through ``runner`` one plain call each (no lanes, no Ray), compared with the job's.

    Args:
        runner: the driver's runner (the configuration the job ran).
        model_input: position -> the model's input for that image, decoded again.
        output: the output the rows hold (logits or features).
        kept: the job's outputs of the picked images, by position.
        ran: images this invocation ran.

    Returns:
        images, positions, passed, failures, tolerance, figures; or a note saying why nothing could be checked.
    """
    if not kept:
        why = "no image ran in this invocation" if not ran else "no image of this invocation could be read"
        return {"images": 0, "passed": True, "note": why}
    positions = sorted(kept)
    plain = np.concatenate([runner.run_padded(model_input(p)[None])[output] for p in positions])
    ran_outputs = np.stack([kept[p].outputs[output] for p in positions])
    figures = compare_arrays(plain.reshape(len(positions), -1), ran_outputs.reshape(len(positions), -1))
    tolerance, _ = tolerance_for(runner.precision, random_init=runner.manifest.random_init)
    failures = tolerance.failures(figures)
    return {"images": len(positions), "positions": positions, "passed": not failures, "failures": failures,
            "tolerance": tolerance.to_dict(), "figures": figures.to_dict()}
