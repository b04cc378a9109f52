"""Plain-text rendering the results' ``to_text`` methods share: aligned tables and ``key=value`` lists."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def table(rows: Iterable[Iterable[Any]], headers: list[str], right: Iterable[int] = ()) -> str:
    """``rows`` under ``headers`` in columns as wide as their widest cell, a rule under the headers; the
    columns numbered in ``right`` (figures) right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    aligned_right = set(right)
    widths = [max(len(r[i]) for r in [headers, *cells]) for i in range(len(headers))]
    lines = []
    for row in [headers, *cells]:
        lines.append("  ".join(c.rjust(w) if i in aligned_right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def pairs(mapping: Mapping[str, Any]) -> str:
    """``a=1, b=2``: the inputs or settings of a report on one line."""
    return ", ".join(f"{k}={v}" for k, v in mapping.items())
