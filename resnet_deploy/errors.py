"""One error family for everything a user can act on.

The CLI prints a ``DeployError`` as one line and exits with its ``exit_code``;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import math
from typing import TypeVar

N = TypeVar("N", int, float)


class DeployError(Exception):
    """A mistake in the user's input or a limit of this machine (exit 2)."""

    exit_code = 2


class UnknownArchError(DeployError, KeyError):
    """The architecture name is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ArgumentError(DeployError, ValueError):
    """An option or argument outside what it can be (a thread count, a size, a port, a model option)."""


class CheckpointError(DeployError):
    """A weights file that cannot be read or does not fit the model."""


class ExportError(DeployError):
    """A step of the export pipeline failed."""


class ArtifactError(DeployError):
    """An artifact or its manifest is missing, malformed or inconsistent."""


class ParityError(DeployError):
    """Two backends disagree beyond tolerance (exit 1)."""

    exit_code = 1


MAX_SEED = 2**32 - 1  # numpy's and torch's seeds take 0 to this


def within(option: str, value: N, low: N | None = None, high: N | None = None, why: str = "") -> N:
    """``value`` when it is a finite number in [``low``, ``high``] (an open side where None); else an
    ArgumentError naming the option, the value and the bounds (``why``: where a bound comes from).
    NaN compares false with every bound, so it is refused first, with infinities."""
    if not math.isfinite(value):
        raise ArgumentError(f"{option} {value} is not a finite number")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = (f"between {low} and {high}" if low is not None and high is not None
                  else f"at least {low}" if low is not None else f"at most {high}")
        raise ArgumentError(f"{option} {value} is out of range: it must be {bounds}" + (f" ({why})" if why else ""))
    return value


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its type name), for one-line errors; OpenVINO's
    "Exception from src/...cpp:N:" lines, which say where in its source and not what, are skipped."""
    lines = [line for line in str(exc).strip().splitlines()
             if line.strip() and not (line.startswith("Exception from ") and line.rstrip().endswith(":"))]
    return lines[0].strip()[:limit] if lines else type(exc).__name__


class DeployWarning(UserWarning):
    """Something the user should know that does not stop the work (the CLI prints it as one ``warning:`` line)."""
