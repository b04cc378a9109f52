"""Where a batch job starts: a new run in an empty folder, or the run already there, continued.

A run is continued only when nothing that decides its rows changed (the file that runs, its backend and
precision, the inputs and their order, the row format, the preprocessing, the shard size), and only from
shards that are verifiably its own: the sha256 the record keeps for each, or, for a shard written just
before a kill (not yet recorded), its columns and positions. Anything else is refused before any work.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import DeployError
from ..fileio import sweep_temporaries
from .record import RECORD_NAME, RunRecord
from .shards import RowFormat, check_shard, shard_files, shard_path


def starting_record(folder: Path, fresh: RunRecord, resume: bool) -> RunRecord:
    """The record this invocation continues: the earlier run's when it is the same job (``resume``), ``fresh``
    for a new job in a folder without shards.

    Raises:
        DeployError: a new job where a run (or shards of an unknown one) already is; a resumed job that is
            not the same job.
    """
    if not resume:
        if (folder / RECORD_NAME).exists():
            raise DeployError(f"{folder} already holds a batch run: --resume to continue it, or another --output")
        if shard_files(folder):
            raise DeployError(f"{folder} holds shards of a run without its {RECORD_NAME}: remove them, or give "
                              "another --output")
        return fresh
    earlier = RunRecord.read(folder)
    problem = earlier.mismatch(fresh)
    if problem:
        raise DeployError(f"cannot resume the run in {folder}: {problem}")
    sweep_temporaries(folder)
    return replace(fresh, started=earlier.started, resumed=[*earlier.resumed, fresh.started], shards=earlier.shards)


def pending_shards(folder: Path, count: int, size: int, rows: RowFormat,
                   record: RunRecord) -> tuple[list[int], dict[str, str]]:
    """The shards of ``count`` inputs in shards of ``size`` still to write, and the sha256 of each one already
    written (checked against ``record`` and ``rows``).

    Raises:
        DeployError: a shard that is not this run's (changed, damaged, beyond its inputs).
    """
    shards = -(-count // size)
    stray = [p.name for p in shard_files(folder) if int(p.stem.split("-")[1]) >= shards]
    if stray:
        raise DeployError(f"{folder} holds {', '.join(stray[:3])}, beyond this run's {shards} shards: "
                          "remove them and --resume")
    pending, written = [], {}
    for index in range(shards):
        path = shard_path(folder, index)
        if not path.exists():
            pending.append(index)
            continue
        positions = np.arange(index * size, min(count, (index + 1) * size))
        written[str(index)] = check_shard(path, positions, rows, record.shards.get(str(index)))
    return pending, written
