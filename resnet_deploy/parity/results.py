"""Running, apart from judging: what runners produced on the same inputs, as a value.

:func:`run` runs every runner on every batch of every input set, once, and
returns :class:`RunResults`: the inputs, each runner's outputs batch by batch,
and how each runner ran. Judging is a separate pass over it
(:func:`resnet_deploy.parity.compare.judge`). Golden outputs are RunResults of
the PyTorch reference saved at export (``STEM.golden.npz``): a target without
PyTorch loads them and adds its own runners' outputs on the same inputs.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError
from .inputs import InputSet

FORMAT = "resnet-deploy.run-results/1"


@dataclass
class RunResults:
    """Inputs, and each runner's outputs on them.

    Attributes:
        sets: the input sets, in order; every runner ran every batch of every set.
        outputs: runner name -> one ``{output name: array}`` per batch, in the order of :attr:`batches`.
        runners: runner name -> how it ran (the runner's ``describe()``).
    """

    sets: list[InputSet]
    outputs: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)
    runners: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def batches(self) -> list[tuple[str, np.ndarray]]:
        """(input set label, batch), every batch of every set in order."""
        return [(inputs.label, batch) for inputs in self.sets for batch in inputs.batches]

    def copy(self) -> RunResults:
        """A copy sharing the arrays: runners added to it leave this one as it was."""
        return RunResults(list(self.sets), dict(self.outputs), dict(self.runners))

    def joined(self, runner: str, output: str) -> np.ndarray:
        """One output of one runner over every batch, concatenated (for accuracy over a data set)."""
        return np.concatenate([produced[output] for produced in self.outputs[runner]])

    def save(self, path: str | os.PathLike[str]) -> None:
        """An .npz holding the inputs, the outputs and a JSON header (no pickles: loads with allow_pickle=False)."""
        arrays: dict[str, np.ndarray] = {}
        for index, (label, batch) in enumerate(self.batches):
            arrays[f"input.{index}"] = batch
            for runner, produced in self.outputs.items():
                for name, value in produced[index].items():
                    arrays[f"output.{index}.{runner}.{name}"] = value
        header = {"format": FORMAT, "sets": [[s.label, len(s.batches)] for s in self.sets],
                  "runners": self.runners, "outputs": {r: list(p[0]) if p else [] for r, p in self.outputs.items()}}
        arrays["header"] = np.array(json.dumps(header))
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        Path(path).write_bytes(buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RunResults:
        with np.load(path, allow_pickle=False) as data:
            if "header" not in data.files:
                raise ArtifactError(f"{Path(path).name} was written by an older resnet-deploy: re-export to verify "
                                    "against golden outputs")
            header = json.loads(str(data["header"]))
            if header.get("format") != FORMAT:
                raise ArtifactError(f"{Path(path).name} is in format {header.get('format')!r}, not {FORMAT!r}")
            sets, index = [], 0
            for label, count in header["sets"]:
                sets.append(InputSet(label, [data[f"input.{index + i}"] for i in range(count)]))
                index += count
            outputs = {runner: [{name: data[f"output.{i}.{runner}.{name}"] for name in names} for i in range(index)]
                       for runner, names in header["outputs"].items()}
        return cls(sets, outputs, header["runners"])


def run(runners: Sequence[Any], sets: list[InputSet], *, into: RunResults | None = None,
        on_batch: Callable[[str], None] | None = None) -> RunResults:
    """Every runner on every batch of ``sets`` (or of ``into``'s, adding to it), each runner once.

    Args:
        runners: :class:`~resnet_deploy.backends.base.Runner` objects; a name already in ``into`` is not run again.
        sets: the input sets (ignored with ``into``: its own are used).
        into: results to add to (the saved golden outputs of the reference).
        on_batch: called with the runner's name before each batch (progress).

    Returns:
        The results, ``into`` itself when given.
    """
    results = into if into is not None else RunResults(list(sets))
    for runner in runners:
        if runner.name in results.outputs:
            continue
        produced = []
        for _, batch in results.batches:
            if on_batch:
                on_batch(runner.name)
            produced.append(runner(batch))
        results.outputs[runner.name] = produced
        results.runners[runner.name] = runner.describe()
    return results
