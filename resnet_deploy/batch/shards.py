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
from ..fileio import atomic_path
from ..target.pipeline import Item
from ..target.predict import top_classes

SHARD_PATTERN = "part-{:05d}.parquet"


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
        columns: dict[str, list] = {"position": [i.position for i in items], "path": [i.source for i in items],
                                    "error": [i.error for i in items]}
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


def write_shard(path: Path, items: Sequence[Item], rows: RowFormat) -> None:
    """Write ``items`` as one Parquet file, atomically: a killed job leaves the whole shard or none of it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pydict(rows.columns(items), schema=rows.schema())
    with atomic_path(path) as staged:
        pq.write_table(table, staged, compression="zstd")


def shard_positions(path: Path) -> np.ndarray:
    """The input positions a finished shard holds.

    Raises:
        DeployError: a file that is not a readable shard (changed or damaged since it was written).
    """
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path, columns=["position"]).column("position").to_numpy()
    except (OSError, KeyError, ValueError) as exc:
        raise DeployError(f"{path} is not a readable shard of this job ({first_line(exc)}): remove it and "
                          "--resume to classify its images again") from None


def read_rows(folder: Path, columns: Sequence[str] | None = None) -> Any:
    """Every shard of a finished job as one pyarrow table, ordered by position."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(p, columns=list(columns) if columns else None)
              for p in sorted(folder.glob(SHARD_PATTERN.replace("{:05d}", "*")))]
    if not tables:
        raise DeployError(f"{folder} holds no shards")
    return pa.concat_tables(tables)
