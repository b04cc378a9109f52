"""The dynamic batcher behind `serve`'s infer endpoint.

Concurrent requests wait up to ``max_delay`` in a bounded queue and are run as one batch of at
most ``max_batch`` images; a full queue answers 503 at once instead of growing memory. Each
response says in ``parameters.server_batch_size`` how many images shared its runner call, and
``/metrics`` counts requests, batches and rejections (Prometheus text format).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..backends.base import Runner
from ..errors import DeployError, first_line
from .limits import RequestError
from .statistics import BatchStats


class Admission:
    """A request's place in the queue, from its arrival (before its body is read) until a worker takes it
    into a batch, or it fails first: what ``--queue`` bounds."""

    def __init__(self, batcher: DynamicBatcher) -> None:
        self._batcher, self._holding = batcher, True

    def leave(self) -> None:
        """Give the place back (once: a worker taking the request, or the request failing before)."""
        if self._holding:
            self._holding = False
            self._batcher.waiting -= 1


@dataclass
class _Pending:
    batch: np.ndarray
    future: asyncio.Future
    admission: Admission
    submitted_ns: int = field(default_factory=time.perf_counter_ns)


class DynamicBatcher:
    """Queues requests and runs them together: a batch closes when it would exceed ``max_batch``
    images, ``max_delay`` seconds after its first request arrived, or before a request whose images
    are of another size. At most ``queue_size`` requests wait at once (from admission, before their
    bodies are read, until a worker takes them): one more is refused (503) at once."""

    def __init__(self, runner: Runner, *, max_batch: int, max_delay: float, queue_size: int, workers: int = 1) -> None:
        self.runner, self.max_batch, self.max_delay = runner, max_batch, max_delay
        self.queue_size, self.workers = queue_size, workers
        self.pending: collections.deque[_Pending] = collections.deque()
        self.waiting = 0  # admitted and not yet taken into a batch
        self.stats = BatchStats()
        self._tasks: list[asyncio.Task] = []
        self._executor: ThreadPoolExecutor | None = None
        self._condition: asyncio.Condition | None = None

    async def start(self) -> None:
        self._condition = asyncio.Condition()
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="runner")
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for item in self.pending:
            if not item.future.done():
                item.future.set_exception(RequestError("server shutting down", 503))
        if self._executor:
            self._executor.shutdown(wait=True)

    def admit(self) -> Admission:
        """A place in the queue for a request that has just arrived, or a 503 at once where ``queue_size``
        requests are waiting. No await between the check and the count: the bound holds exactly."""
        if self.waiting >= self.queue_size:
            self.stats.rejected_overload += 1
            raise RequestError(f"server overloaded: {self.waiting} requests already waiting", 503)
        self.waiting += 1
        self.stats.deepest_queue = max(self.stats.deepest_queue, self.waiting)
        return Admission(self)

    async def submit(self, batch: np.ndarray, admission: Admission | None = None) -> tuple[dict[str, np.ndarray], int]:
        """The runner's outputs for ``batch`` and the size of the batch it ran in (admitted here unless the
        request was admitted on arrival). A request cancelled while it waits (a gRPC deadline, a client gone)
        leaves the queue with its work: its place is not freed while its images would still be computed."""
        admission = admission or self.admit()
        self.stats.requests += 1
        item = _Pending(batch, asyncio.get_running_loop().create_future(), admission)
        self.pending.append(item)
        async with self._condition:
            self._condition.notify()
        try:
            return await item.future
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):  # not yet taken into a batch
                self.pending.remove(item)
                admission.leave()
            raise

    async def _take(self) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        async with self._condition:
            await self._condition.wait_for(lambda: self.pending)
            items = [self._pop()]
        count, deadline = len(items[0].batch), loop.time() + self.max_delay
        while count < self.max_batch:
            async with self._condition:
                if not self.pending:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    # asyncio's own TimeoutError: the built-in one only from Python 3.11 on
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._condition.wait_for(lambda: self.pending), remaining)
                    if not self.pending:
                        break
                following = self.pending[0].batch
                if count + len(following) > self.max_batch or following.shape[1:] != items[0].batch.shape[1:]:
                    break  # full, or an image of another size (a --dynamic-hw model): the next batch's
                item = self._pop()
            items.append(item)
            count += len(item.batch)
        return items

    def _pop(self) -> _Pending:
        item = self.pending.popleft()
        item.admission.leave()
        self.stats.queue.add(time.perf_counter_ns() - item.submitted_ns)
        return item

    async def _work(self) -> None:
        """Take a batch, run it, answer its requests; forever. Whatever goes wrong with one batch is that
        batch's requests' answer: the worker itself never dies (a dead worker hangs every later request
        while the server still says it is ready)."""
        loop = asyncio.get_running_loop()
        while True:
            items = [item for item in await self._take() if not item.future.done()]  # cancelled meanwhile
            if not items:
                continue
            started = time.perf_counter_ns()
            try:
                batch = np.concatenate([i.batch for i in items]) if len(items) > 1 else items[0].batch
                prepared = time.perf_counter_ns()
                outputs = await loop.run_in_executor(self._executor, self.runner.run_padded, batch)
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure
                self.stats.failed += len(items)
                error = RequestError(first_line(exc),
                                     400 if isinstance(exc, DeployError) else 500)
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            ran = time.perf_counter_ns()
            sizes = [len(i.batch) for i in items]
            start = 0
            for item, size in zip(items, sizes):
                if not item.future.done():
                    item.future.set_result(({k: v[start: start + size] for k, v in outputs.items()}, sum(sizes)))
                start += size
            self.stats.batch_ran(sizes, prepared - started, ran - prepared, time.perf_counter_ns() - ran)
