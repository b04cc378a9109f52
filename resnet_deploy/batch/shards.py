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

    def columns(self, items: Sequence[Item]) -> dict[str, list]:
        """The rows of ``items`` as column lists (an item with an error has nulls past its error)."""
        columns: dict[str, list] = {"position": [i.position for i in items],
                                    "path": [_text(i.source) for i in items], "error": [_text(i.error) for i in items]}
        tops = [None if i.outputs is None or self.output != LOGITS else top_classes(i.outputs[LOGITS], self.topk)
                for i in items]
        if self.output == LOGITS:
            columns["top_index"] = [None if t is None else t[0].astype(np.int32).tolist() for t in tops]
            columns["top_label"] = [None if t is None else [self.label(int(c)) for c in t[0]] for t in tops]
            columns["top_probability"] = [None if t is None else t[1].astype(np.float32).tolist() for t in tops]
        if self.output == FEATURES or self.keep_logits:
            columns[self.output] = [None if i.outputs is None else
                                    np.asarray(i.outputs[self.output], np.float32).ravel().tolist() for i in items]
        return columns

    def label(self, index: int) -> str:
        return self.names[index] if self.names else f"class {index}"


def write_shard(path: Path, items: Sequence[Item], rows: RowFormat) -> str:
    """Write ``items`` as one Parquet file, atomically: a killed job leaves the whole shard or none of it.

    Returns:
        The file's sha256 (the run record keeps it, so a resumed job notices a shard changed since).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pydict(rows.columns(items), schema=rows.schema())
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
