"""What `serve` counts, in one place: the batcher's counters and durations, rendered as Triton's statistics
extension (``/v2/models/stats``, gRPC ``ModelStatistics``) and as Prometheus text (``/metrics``).

Every figure is updated on the server's event loop (the batcher's and the endpoints' coroutines), so no lock
is needed; a reader on another thread sees a value at most one request old.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Duration:
    """A count and the nanoseconds it took, as Triton's ``StatisticDuration``."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, times: int = 1) -> None:
        """``times`` more, each of ``ns`` (the requests of one batch share its durations)."""
        self.count += times
        self.ns += ns * times

    def to_dict(self) -> dict[str, int]:
        """Triton's JSON form: ``{"count", "ns"}``."""
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchDurations:
    """One batch size's runner calls: preparing the batch, the call, handing each request its rows."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class BatchStats:
    """The batcher's counters (Prometheus's ``/metrics``) and durations (Triton's statistics).

    Per request, as Triton counts them: ``queue`` from submission until a worker takes it into a batch;
    ``compute_*`` the durations of the batch it ran in; ``success``/``fail`` from its arrival at the endpoint
    until its answer was built (a request refused at admission, 503, is counted in ``rejected_overload``
    alone: it never reached the model). Per batch size, each runner call once.
    """

    requests: int = 0
    batches: int = 0  # runner calls that succeeded (Triton's execution_count)
    images: int = 0  # images in them (Triton's inference_count)
    rejected_overload: int = 0
    failed: int = 0  # requests in batches whose runner call failed
    largest_batch: int = 0
    deepest_queue: int = 0  # the most requests ever waiting at once (never over the queue bound)
    last_inference_ms: int = 0  # when the last batch ended, milliseconds since the epoch
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute: BatchDurations = field(default_factory=BatchDurations)  # summed over requests
    by_batch_size: dict[int, BatchDurations] = field(default_factory=dict)  # summed over runner calls

    def batch_ran(self, sizes: list[int], input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One runner call of requests of ``sizes`` images each, and what each step took."""
        total = sum(sizes)
        self.batches += 1
        self.images += total
        self.largest_batch = max(self.largest_batch, total)
        self.last_inference_ms = time.time_ns() // 1_000_000
        call = self.by_batch_size.setdefault(total, BatchDurations())
        for durations, times in ((call, 1), (self.compute, len(sizes))):
            durations.compute_input.add(input_ns, times)
            durations.compute_infer.add(infer_ns, times)
            durations.compute_output.add(output_ns, times)

    def answered(self, started_ns: int, ok: bool) -> None:
        """A request that reached the model was answered (``ok``) or refused, ``started_ns`` after arrival
        (``time.perf_counter_ns``)."""
        (self.success if ok else self.fail).add(time.perf_counter_ns() - started_ns)

    def to_triton(self, name: str, version: str = "1") -> dict[str, Any]:
        """One entry of Triton's ``model_stats``, as its ``/v2/models/NAME/stats`` answers (JSON numbers)."""
        zero = Duration().to_dict()
        return {
            "name": name, "version": version, "last_inference": self.last_inference_ms,
            "inference_count": self.images, "execution_count": self.batches,
            "inference_stats": {
                "success": self.success.to_dict(), "fail": self.fail.to_dict(), "queue": self.queue.to_dict(),
                **_durations(self.compute), "cache_hit": zero, "cache_miss": zero},
            "batch_stats": [{"batch_size": size, **_durations(self.by_batch_size[size])}
                            for size in sorted(self.by_batch_size)],
            "memory_usage": [],
        }

    def to_prometheus(self, waiting: int) -> str:
        """The counters in Prometheus's text format, with ``waiting``, the queue's depth now."""
        lines = [
            "# TYPE resnet_deploy_requests_total counter", f"resnet_deploy_requests_total {self.requests}",
            "# TYPE resnet_deploy_batches_total counter", f"resnet_deploy_batches_total {self.batches}",
            "# TYPE resnet_deploy_batched_images_total counter", f"resnet_deploy_batched_images_total {self.images}",
            "# TYPE resnet_deploy_rejected_total counter",
            f'resnet_deploy_rejected_total{{reason="overload"}} {self.rejected_overload}',
            f'resnet_deploy_rejected_total{{reason="failed"}} {self.failed}',
            "# TYPE resnet_deploy_largest_batch gauge", f"resnet_deploy_largest_batch {self.largest_batch}",
            "# TYPE resnet_deploy_queue_depth gauge", f"resnet_deploy_queue_depth {waiting}",
            "# TYPE resnet_deploy_deepest_queue gauge", f"resnet_deploy_deepest_queue {self.deepest_queue}",
        ]
        return "\n".join(lines) + "\n"


def _durations(durations: BatchDurations) -> dict[str, dict[str, int]]:
    return {"compute_input": durations.compute_input.to_dict(), "compute_infer": durations.compute_infer.to_dict(),
            "compute_output": durations.compute_output.to_dict()}
