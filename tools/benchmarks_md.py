"""BENCHMARKS.md, the one file the benchmark scripts in tools/ write their figures to, a section each."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nFigures measured by the scripts in tools/, with date and machine.\n"


def replace_section(title: str, text: str, *, formerly: tuple[str, ...] = ()) -> None:
    """Replace the section headed ``title`` (or one of its ``formerly`` titles; up to the next ``## ``)
    with ``text``, or append it."""
    current = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    found = next((t for t in (title, *formerly) if t in current), None)
    if found is not None:
        head, _, rest = current.partition(found)
        tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
        current = head + text + "\n" + tail
    else:
        current = current.rstrip("\n") + "\n\n" + text + "\n"
    BENCHMARKS.write_text(current)
