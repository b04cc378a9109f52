"""What `serve` accepts and how it refuses: its options' defaults and bounds, checked against the runner
(:class:`ServeLimits`), and the refusal a request gets (:class:`RequestError`: an HTTP status and one line).

Free of the serve extra's dependencies: the CLI reads the defaults at start-up without them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ..artifacts import LARGEST_RUN_BATCH
from ..backends.base import Runner
from ..errors import DeployError, within

DEFAULT_HOST = "127.0.0.1"  # loopback: exposing the server is the user's decision (--host 0.0.0.0)
DEFAULT_PORT = 8000  # Triton's HTTP port, so clients written for Triton need no change
SERVE_MAX_BATCH = LARGEST_RUN_BATCH  # the batcher's largest batch by default, where the profile allows more
DEFAULT_MAX_DELAY_MS = 2.0
DEFAULT_QUEUE = 64
DEFAULT_WORKERS = 1
DEFAULT_REQUEST_MB = 64.0
MAX_DELAY_MS = 10_000.0  # a batch waiting longer than this is a misconfiguration, not batching
MAX_QUEUE = 100_000  # queued requests before 503
MAX_WORKERS = 64
MAX_REQUEST_MB = 4096.0
DEFAULT_READ_TIMEOUT_S = 30.0  # a request body that stalls this long is answered 408 and its connection freed

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a path segment of every model URL, as Triton's names


def address(host: str, port: int) -> str:
    """``host:port`` as URLs and gRPC write it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RequestError(Exception):
    """A request the server refuses: ``status`` is the HTTP code (400, 404, 413, 503)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ServeLimits:
    """What the server accepts and how long it waits (the serve command's options, checked)."""

    max_batch: int | None = None  # None: the profile's MAX, at most SERVE_MAX_BATCH
    max_delay_ms: float = DEFAULT_MAX_DELAY_MS
    queue_size: int = DEFAULT_QUEUE
    workers: int = DEFAULT_WORKERS
    max_request_mb: float = DEFAULT_REQUEST_MB
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S

    def for_runner(self, runner: Runner) -> ServeLimits:
        """These limits with the default batch resolved against ``runner``'s profile, checked.

        Raises:
            ArgumentError: a limit out of its range; DeployError: workers a serial runner cannot take.
        """
        if self.max_batch is None:
            high = runner.batch_range[1] if runner.batch_range else SERVE_MAX_BATCH
            return replace(self, max_batch=min(high, SERVE_MAX_BATCH)).for_runner(runner)
        high = runner.batch_range[1] if runner.batch_range else self.max_batch
        within("--max-batch", self.max_batch, 1, high, "the artifact's profile")
        within("--max-delay-ms", self.max_delay_ms, 0, MAX_DELAY_MS)
        within("--queue", self.queue_size, 1, MAX_QUEUE)
        within("--workers", self.workers, 1, MAX_WORKERS, "runner calls in flight at once")
        if self.workers > 1 and not runner.concurrent:
            raise DeployError(f"--workers {self.workers}: {runner.name} cannot take calls at once "
                              f"({runner.serial_reason}): give --workers 1")
        within("--max-request-mb", self.max_request_mb, 0.001, MAX_REQUEST_MB)
        return self

    def check(self, runner: Runner) -> None:
        """Raise as :meth:`for_runner` does where these limits do not fit ``runner``."""
        self.for_runner(runner)

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * (1 << 20))
