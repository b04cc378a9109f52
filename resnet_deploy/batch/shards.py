"""The batch job's output: Parquet shards of plain columns, each written whole or not at all.

Shard ``k`` holds the rows of input positions ``[k * size, (k + 1) * size)``, in order, so a resumed job
knows from the files alone what is done. Columns are plain Arrow types (lists of numbers and strings,
never Ray's tensor extension type), so any Parquet reader (pandas, DuckDB, Spark) reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import FEATURES, LOGITS
from ..errors import DeployError, first_line
from ..fileio import atomic_path, sha256_file
from ..target.pipeline import Item
from ..target.predict import top_classes

SHARD_PATTERN = "part-{:05d}.parquet"
_PARQUET_ERRORS = (OSError, KeyError, ValueError)  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError


def _text(value: str | None) -> str | None:
    """A path or message as valid UTF-8 for a string column: a file name's undecodable bytes (kept by Python
    as surrogates) written as backslash escapes (``caf\\xe9.jpg``) rather than failing the shard."""
    if value is None:
        return None
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def shard_path(folder: Path, index: int) -> Path:
    return folder / SHARD_PATTERN.format(index)


@dataclass(frozen=True)
class RowFormat:
    """What each row holds: the top ``topk`` classes of a classifier (with its logits when ``keep_logits``),
    or a backbone's pooled features (an export with ``--num-classes 0``)."""

    output: str  # LOGITS or FEATURES
    topk: int
    names: list[str] | None = None
    keep_logits: bool = False

    def schema(self) -> Any:
        import pyarrow as pa

        fields = [pa.field("position", pa.int64()), pa.field("path", pa.string()), pa.field("error", pa.string())]
        if self.output == LOGITS:
            fields += [pa.field("top_index", pa.list_(pa.int32())), pa.field("top_label", pa.list_(pa.string())),
                       pa.field("top_probability", pa.list_(pa.float32()))]
        if self.output == FEATURES or self.keep_logits:
            fields.append(pa.field(self.output, pa.list_(pa.float32())))
        return pa.schema(fields)

    def columns(self, items: Sequence[Item]) -> dict[str, Any]:
        """The rows of ``items`` as columns (an item with an error has nulls past its error): the top classes
        of all of them computed at once, the number lists built from numpy, not one Python float at a time."""
        good = [row for row, item in enumerate(items) if item.outputs is not None]
        values = (np.stack([np.asarray(items[row].outputs[self.output], np.float32).ravel() for row in good])
                  if good else np.zeros((0, 0), np.float32))
        columns: dict[str, Any] = {"position": [i.position for i in items],
                                   "path": [_text(i.source) for i in items], "error": [_text(i.error) for i in items]}
        if self.output == LOGITS:
            order, probabilities = top_classes(values, self.topk) if good else (values, values)
            labels = np.asarray([self.label(c) for c in range(values.shape[1])] if good else [], dtype=object)
            columns["top_index"] = _lists(order.astype(np.int32), good, len(items))
            columns["top_label"] = _lists(labels[order] if good else order, good, len(items))
            columns["top_probability"] = _lists(probabilities.astype(np.float32), good, len(items))
        if self.output == FEATURES or self.keep_logits:
            columns[self.output] = _lists(values, good, len(items))
        return columns

    def label(self, index: int) -> str:
        return self.names[index] if self.names else f"class {index}"


def _lists(values: np.ndarray, rows: list[int], count: int) -> Any:
    """A list column of ``count`` rows: row ``rows[i]`` holds ``values[i]``, the others null."""
    import pyarrow as pa

    width = values.shape[1] if values.ndim == 2 else 0
    valid = np.zeros(count, bool)
    valid[rows] = True
    lengths = np.where(valid, width, 0)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    flat = pa.array(values.reshape(-1), type=pa.string() if values.dtype == object else None)
    return pa.ListArray.from_arrays(offsets, flat, mask=pa.array(~valid))


def write_shard(path: Path, items: Sequence[Item], rows: RowFormat) -> str:
    """Write ``items`` as one Parquet file, atomically: a killed job leaves the whole shard or none of it.

    Returns:
        The file's sha256 (the run record keeps it, so a resumed job notices a shard changed since).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(rows.columns(items), schema=rows.schema())
    with atomic_path(path) as staged:
        pq.write_table(table, staged, compression="zstd")
        digest = sha256_file(staged)
    return digest


def check_shard(path: Path, positions: np.ndarray, rows: RowFormat, sha256: str | None) -> str:
    """That a finished shard is this job's: its recorded sha256 where the record has it (a job killed between
    writing a shard and recording it has not), else its schema and its positions.

    Returns:
        Its sha256.

    Raises:
        DeployError: a shard changed or damaged since it was written, or another job's.
    """
    import pyarrow.parquet as pq

    redo = "remove it and --resume to classify its images again"
    digest = sha256_file(path)
    if sha256 is not None:
        if digest != sha256:
            raise DeployError(f"{path} changed since this run wrote it (sha256 {digest[:12]}, recorded "
                              f"{sha256[:12]}): {redo}")
        return digest
    try:
        if not pq.read_schema(path).equals(rows.schema(), check_metadata=False):
            raise DeployError(f"{path} holds other columns than this run writes: {redo}")
        found = pq.read_table(path, columns=["position"]).column("position").to_numpy()
    except _PARQUET_ERRORS as exc:
        raise DeployError(f"{path} is not a readable shard ({first_line(exc)}): {redo}") from None
    if not np.array_equal(found, positions):
        raise DeployError(f"{path} does not hold positions {positions[0]}-{positions[-1]} of this run: {redo}")
    return digest


def shard_files(folder: Path) -> list[Path]:
    """The shards in ``folder``, in order."""
    return sorted(folder.glob(SHARD_PATTERN.replace("{:05d}", "*")))


def read_rows(folder: Path, columns: Sequence[str] | None = None) -> Any:
    """Every shard of a job as one pyarrow table, in position order.

    Raises:
        DeployError: a folder without shards, or a shard that cannot be read.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        tables = [pq.read_table(p, columns=list(columns) if columns else None) for p in shard_files(folder)]
    except _PARQUET_ERRORS as exc:
        raise DeployError(f"cannot read the shards in {folder}: {first_line(exc)}") from None
    if not tables:
        raise DeployError(f"{folder} holds no shards")
    return pa.concat_tables(tables)
