"""Decoding overlapped with inference: the pipelined path of ``predict`` and ``batch``.

Each of ``lanes`` threads takes the next chunk of inputs, decodes it, runs it and hands it on; while one lane
decodes, another runs, so on a CPU every core is busy with one or the other and none waits. A lane's runner
works at ``threads`` CPU threads (see :func:`lane_plan`), so lanes x threads never exceeds the cores: the
two never oversubscribe them. Chunks come out in input order, and at most ``2 x lanes`` are in flight, so
memory stays bounded however many inputs stream through.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from ..backends.base import Runner
from ..environment import physical_cores
from ..errors import DeployError, within

Decode = Callable[[str], np.ndarray]  # one input -> the model's input for it; raises DeployError if it cannot


@dataclass(frozen=True)
class Item:
    """One input's outcome: its row of each output, or why it has none (an image that cannot be decoded)."""

    position: int  # its place in the input order
    source: str
    outputs: dict[str, np.ndarray] | None
    error: str | None = None


@dataclass(frozen=True)
class LanePlan:
    """How the cores are shared: ``lanes`` threads, each running the model at ``threads`` CPU threads."""

    lanes: int
    threads: int

    def to_dict(self) -> dict[str, int]:
        return {"lanes": self.lanes, "threads": self.threads}


def lane_plan(device: str, *, threads: int | None = None, cores: int | None = None) -> LanePlan:
    """Lanes and threads per lane for inference on ``device``.

    On a CPU, one thread per lane and a lane per core: a lane decoding and another running keep every core
    busy, and single-threaded inference wastes nothing on a thread pool's hand-offs (OpenVINO's throughput
    streams are the same idea). ``threads`` given: as many lanes as fit beside it. On a GPU the lanes decode
    for the device: one per core.

    Args:
        device: the runner's device (``cpu``, ``cuda:0``).
        threads: CPU threads per lane, when the user chose them.
        cores: cores to share (default: this machine's physical cores).

    Returns:
        The :class:`LanePlan`.
    """
    cores = cores or physical_cores()
    if threads is not None:
        within("--threads", threads, 1, None)
    if not device.startswith("cpu"):
        return LanePlan(lanes=cores, threads=threads or 1)
    threads = threads or 1  # more than the machine has is the loader's one-line error, not silently fewer
    return LanePlan(lanes=max(1, cores // max(1, threads)), threads=threads)


def _run_chunk(runner: Runner, chunk: list[tuple[int, str]], decode: Decode) -> list[Item]:
    """Decode a chunk (an image that fails is an item with its error) and run the decoded ones as a batch."""
    arrays: list[np.ndarray] = []
    errors: dict[int, str] = {}
    for position, source in chunk:
        try:
            arrays.append(decode(source))
        except DeployError as exc:
            errors[position] = str(exc)
    outputs = runner.run_padded(np.stack(arrays)) if arrays else {}
    items, row = [], 0
    for position, source in chunk:
        if position in errors:
            items.append(Item(position, source, None, errors[position]))
        else:
            items.append(Item(position, source, {name: value[row] for name, value in outputs.items()}))
            row += 1
    return items


class _Lanes:
    """The lanes' shared state: the chunk source, the finished chunks by index, the bounded window."""

    def __init__(self, chunks: Iterator[tuple[int, list[tuple[int, str]]]], lanes: int) -> None:
        self.chunks = chunks
        self.take = threading.Lock()
        self.window = threading.Semaphore(2 * lanes)
        self.ready = threading.Condition()
        self.finished: dict[int, list[Item]] = {}
        self.running = lanes
        self.failure: BaseException | None = None
        self.stop = threading.Event()

    def next_chunk(self) -> tuple[int, list[tuple[int, str]]] | None:
        while not self.window.acquire(timeout=0.1):
            if self.stop.is_set():
                return None
        with self.take:
            chunk = None if self.stop.is_set() else next(self.chunks, None)
        if chunk is None:
            self.window.release()
        return chunk

    def work(self, runner: Runner, decode: Decode) -> None:
        try:
            while (chunk := self.next_chunk()) is not None:
                items = _run_chunk(runner, chunk[1], decode)
                with self.ready:
                    self.finished[chunk[0]] = items
                    self.ready.notify_all()
        except BaseException as exc:  # handed to the consumer, which raises it
            with self.ready:
                self.failure = self.failure or exc
            self.stop.set()
        finally:
            with self.ready:
                self.running -= 1
                self.ready.notify_all()

    def collect(self) -> Iterator[list[Item]]:
        for index in itertools.count():
            with self.ready:
                while index not in self.finished and self.failure is None and self.running:
                    self.ready.wait()
                if self.failure is not None:
                    raise self.failure
                if index not in self.finished:
                    return
                items = self.finished.pop(index)
            self.window.release()
            yield items


def run_pipelined(runner: Runner, sources: Iterable[tuple[int, str]], decode: Decode, *, plan: LanePlan,
                  batch_size: int) -> Iterator[list[Item]]:
    """Decode and run ``sources`` in ``plan.lanes`` overlapped lanes, ``batch_size`` images per call.

    Args:
        runner: the model; called from several threads only where it is safe across them (``concurrent``),
            else its calls take turns (its own lock) while decoding still overlaps.
        sources: ``(position, source)`` pairs in order (read lazily: a generator of millions is fine; a
            resumed job's positions skip what is done).
        decode: one source -> the model's input for it; a :class:`DeployError` makes that input an error item.
        plan: lanes and threads per lane (the runner was loaded at ``plan.threads``).
        batch_size: images per call, within the runner's profile.

    Yields:
        Chunks of :class:`Item`, in input order.
    """
    within("batch size", batch_size, 1, None)
    numbered = iter(sources)
    chunks = enumerate(iter(lambda: list(itertools.islice(numbered, batch_size)), []))
    lanes = _Lanes(chunks, plan.lanes)
    threads = [threading.Thread(target=lanes.work, args=(runner, decode), name=f"lane-{n}", daemon=True)
               for n in range(plan.lanes)]
    for thread in threads:
        thread.start()
    try:
        yield from lanes.collect()
    finally:  # the consumer stopped (done, failed or interrupted): the lanes stop after their chunk
        lanes.stop.set()
        for thread in threads:
            thread.join()
