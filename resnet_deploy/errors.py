"""One error family for everything a user can act on.

The CLI prints a ``DeployError`` as one line and exits with its ``exit_code``;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DeployError(Exception):
    """A mistake in the user's input or a limit of this machine (exit 2)."""

    exit_code = 2


class UnknownArchError(DeployError, KeyError):
    """The architecture name is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class CheckpointError(DeployError):
    """A weights file that cannot be read or does not fit the model."""


class ExportError(DeployError):
    """A step of the export pipeline failed."""


class ArtifactError(DeployError):
    """An artifact or its manifest is missing, malformed or inconsistent."""


class ParityError(DeployError):
    """Two backends disagree beyond tolerance (exit 1)."""

    exit_code = 1


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its type name), for one-line errors."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


class DeployWarning(UserWarning):
    """Something the user should know that does not stop the work (the CLI prints it as one ``warning:`` line)."""
