"""The run record (``DIR/_run.json``): what a batch job ran, on what, how far it got and how fast.

Written when the job starts and again when it ends or stops, atomically; a resumed job reads it to refuse
what would mix two runs in one output (another artifact file, other inputs, other rows).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DeployError
from ..fileio import Record, atomic_write_bytes

RECORD_NAME = "_run.json"  # Parquet readers of the folder (pandas, Spark, Ray) skip names starting with _
RUNNING, COMPLETE, STOPPED = "running", "complete", "stopped"


@dataclass(frozen=True, eq=False)
class RunRecord(Record):
    """One batch job. ``configuration``: what ran (file, backend, precision, device, lanes and threads, or
    Ray's actors); ``rows``: what each row holds; ``inputs``: the count and key of the ordered source list;
    ``counts`` and ``timings``: how far and how fast (this invocation's timings; ``counts`` for the whole
    job); ``check``: the ``--check`` result, when asked."""

    artifact: str  # as given
    artifact_sha256: str  # of the file that runs (auto may pick another file of the export)
    configuration: dict[str, Any]
    rows: dict[str, Any]
    preprocess: dict[str, Any]
    inputs: dict[str, Any]
    shard_size: int
    status: str = RUNNING
    counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    check: dict[str, Any] | None = None
    shards: dict[str, str] = field(default_factory=dict)  # shard index -> sha256 of the file written
    versions: dict[str, str] = field(default_factory=dict)
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    resumed: list[str] = field(default_factory=list)

    def write(self, folder: Path) -> None:
        atomic_write_bytes(folder / RECORD_NAME, (json.dumps(self.to_dict(), indent=2) + "\n").encode())

    @classmethod
    def read(cls, folder: Path) -> RunRecord:
        path = folder / RECORD_NAME
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise DeployError(f"{folder} holds no run to resume ({RECORD_NAME} is missing): run without "
                              "--resume") from None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise DeployError(f"{path} is not a batch run record: {exc}") from None

    def mismatch(self, other: RunRecord) -> str | None:
        """Why ``other`` (this invocation) cannot continue this run, or None when it can: anything that decides
        the rows differs (how they are computed, of which inputs, in which form). Lanes, threads, batch size
        and local or Ray may change: they give the same rows."""
        if other.artifact_sha256 != self.artifact_sha256:
            return (f"the artifact changed since the run began (sha256 {self.artifact_sha256[:12]} then, "
                    f"{other.artifact_sha256[:12]} now)")
        if other.inputs != self.inputs:
            return (f"the inputs are not the ones the run began with ({self.inputs.get('count')} sources then, "
                    f"{other.inputs.get('count')} now, or another order)")
        for key in ("file", "backend", "precision", "device"):
            then, now = self.configuration.get(key), other.configuration.get(key)
            if then != now:
                return f"it ran with {key} {then}, this invocation {now}: the rows would mix the two"
        for name, what in (("rows", "the row format"), ("preprocess", "the preprocessing"),
                           ("shard_size", "the shard size")):
            if getattr(other, name) != getattr(self, name):
                return f"{what} differs ({getattr(self, name)} then, {getattr(other, name)} now)"
        return None
