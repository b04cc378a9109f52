"""Step-by-step progress on stderr, with the time each step took."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator


class StepLog:
    """Prints ``[2/5] simplify ... 0.9 s`` lines; records each step's seconds."""

    def __init__(self, total: int, *, quiet: bool = False) -> None:
        self.total = total
        self.quiet = quiet
        self.index = 0
        self.timings: dict[str, float] = {}
        self._notes: list[str] = []
        self._header = ""
        self._width = 0

    def say(self, text: str) -> None:
        """A line of its own, now (before or between steps)."""
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        """A detail of the current step, printed under its timing line."""
        self._notes.append(text)

    def progress(self, done: int, total: int, unit: str) -> None:
        """Rewrite the current step's line with a count (calibration images, benchmark runs)."""
        self.status(f"{done}/{total} {unit}")

    def status(self, text: str) -> None:
        """Rewrite the current step's line with where it is."""
        if not self.quiet:
            line = f"{self._header} {text}"
            print(f"\r{line.ljust(self._width)}", end="", file=sys.stderr, flush=True)
            self._width = len(line)  # a shorter line next time blanks what this one leaves

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.index += 1
        self._header = f"[{self.index}/{self.total}] {name} ..."
        self._width = 0
        if not self.quiet:
            print(self._header, end="", file=sys.stderr, flush=True)
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            if not self.quiet:
                print(" failed", file=sys.stderr, flush=True)
            raise
        seconds = time.perf_counter() - start
        self.timings[name] = round(seconds, 3)
        if not self.quiet:
            print(f" {seconds:.1f} s", file=sys.stderr, flush=True)
            for text in self._notes:
                print(f"      {text}", file=sys.stderr, flush=True)
        self._notes.clear()
