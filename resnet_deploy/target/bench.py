"""Latency and throughput of runners, side by side in one run.

Runners are timed in interleaved blocks: each block is one untimed call (the
first call after another runtime ran pays for its thread pool or caches going
cold) and then enough timed calls for about a quarter of a second; the order
rotates every round, so slow drift of the machine (thermal, other tenants)
falls on every runner alike. Each sample is the host wall time of one full
call, copies included. Runners on a GPU also report device time: each runner
says how to time itself (:meth:`Runner.device_timer`: CUDA events on its own
stream), so bench never touches a runner's stream or imports its library.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import DEFAULT_PROFILE, split_artifact_name
from ..backends.base import Runner
from ..backends.registry import BACKENDS, artifact_format, backend_for
from ..data import random_images
from ..environment import cpu_description, tool_versions
from ..errors import DeployError, DeployWarning, within
from ..render import table
from .runtime import load

DEFAULT_BATCH_SIZES = (DEFAULT_PROFILE.min, DEFAULT_PROFILE.opt, DEFAULT_PROFILE.max)
DEFAULT_WARMUP = 10  # untimed calls per case
MAX_ITERATIONS = 1_000_000  # timed or warm-up calls per case
MIN_DURATION, MAX_DURATION = 0.01, 3600.0  # seconds of timed calls per case
BLOCK_SECONDS = 0.25
PAUSE_SECONDS = 0.05  # between blocks: lets a runtime's spinning threads go idle before the next one runs


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """min, mean, p50, p90, p99 in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {"min": float(ms.min()), "mean": float(ms.mean()), "p50": float(np.percentile(ms, 50)),
            "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99))}


@dataclass
class BenchResult:
    label: str  # artifact file and backend, e.g. "resnet50.int8.onnx [onnxruntime-cpu]"
    backend: str
    precision: str
    device: str
    batch: int
    iterations: int
    latency_ms: dict[str, float]
    images_per_s: float  # batch / median latency
    device_ms: dict[str, float] | None = None
    ratio: float | None = None  # median latency / the first row's at this batch size
    samples_s: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["samples_s"]
        return data


def load_runners(stack: contextlib.ExitStack, artifacts: Sequence[str | os.PathLike[str]], backends: Sequence[str],
                 *, device: str | None = None, threads: int | None = None,
                 own: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, Runner]]:
    """A labelled runner per artifact and backend, entered on ``stack``.

    Args:
        artifacts: artifact files.
        backends: backend names (``"auto"``: each file's own).
        device, threads: as :func:`resnet_deploy.target.runtime.load` takes them, for every runner.
        own: backend name -> that backend's own options (keywords), for its runners alone.

    Returns:
        (label, runner) pairs. A backend that runs the PyTorch model (the same for every artifact of one
        export) is loaded once per export, not once per file.

    Raises:
        DeployError: no backend given, an option given for a backend this run does not use, or a runner
            that cannot load.
    """
    if not backends:
        raise DeployError("no backend given: name at least one, e.g. --backend auto")
    own = own or {}
    resolved = {name: [backend_for(name, artifact_format(split_artifact_name(a)[1]), Path(a).name).name
                       for a in artifacts] for name in backends}
    unused = sorted(set(own) - {b for names in resolved.values() for b in names})
    if unused:
        raise DeployError(f"options of the {', '.join(unused)} backend given, but this run does not use it: "
                          f"add --backend {unused[0]}")
    runners, seen, running = [], set(), set()
    for index, artifact in enumerate(artifacts):
        stem = split_artifact_name(artifact)[0]
        for backend in backends:
            row = BACKENDS[resolved[backend][index]]
            model = row.runs == "model"
            key = (str(Path(artifact).parent / stem), row.name) if model else (str(artifact), row.name)
            if key in seen:
                continue
            seen.add(key)
            runner = load(artifact, backend=backend, device=device, threads=threads, **own.get(row.name, {}))
            what, label = _label(runner, artifact, stem, model)
            if what in running:  # auto chose, for another file, what already runs
                runner.close()
                warnings.warn(f"{Path(artifact).name}: --backend auto runs {what}, already timed; name a backend "
                              f"(e.g. --backend {row.name}) to time {Path(artifact).name} itself", DeployWarning,
                              stacklevel=2)
                continue
            running.add(what)
            runners.append((label, stack.enter_context(runner)))
    return runners


@dataclass
class BenchReport:
    """What ``bench`` measured: every row, how each runner ran, and the machine (CPU with its ISA, versions)."""

    results: list[BenchResult]
    runners: list[dict[str, Any]]
    cpu: dict[str, Any]
    tools: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"results": [r.to_dict() for r in self.results], "runners": self.runners, "cpu": self.cpu,
                "tools": self.tools}

    def to_text(self) -> str:
        """bench's table: latency percentiles, device time, images/s and the ratio to the first row."""
        rows = []
        for r in self.results:
            lat = r.latency_ms
            rows.append([r.label, r.batch, r.iterations, f"{lat['min']:.2f}", f"{lat['mean']:.2f}", f"{lat['p50']:.2f}",
                         f"{lat['p90']:.2f}", f"{lat['p99']:.2f}", f"{r.device_ms['p50']:.2f}" if r.device_ms else "-",
                         f"{r.images_per_s:.1f}", f"{r.ratio:.2f}x"])
        return table(rows, ["runner", "batch", "iters", "min ms", "mean ms", "p50 ms", "p90 ms", "p99 ms", "device p50",
                            "images/s", "vs first"], right=range(1, 11))


def bench_artifacts(artifacts: Sequence[str | os.PathLike[str]], backends: Sequence[str] = ("auto",),
                    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES, *, iterations: int | None = None,
                    duration: float | None = None, warmup: int = DEFAULT_WARMUP, device: str | None = None,
                    threads: int | None = None, own: dict[str, dict[str, Any]] | None = None,
                    progress: Callable[[str], None] | None = None,
                    announce: Callable[[str], None] | None = None) -> BenchReport:
    """Load every artifact on every backend and time them side by side: what ``resnet-deploy bench`` does.

    Args:
        artifacts, backends, device, threads, own: as :func:`load_runners` takes them.
        batch_sizes, iterations, duration, warmup, progress: as :func:`bench` takes them.
        announce: called with how ``--backend auto`` chose each runner's configuration.

    Returns:
        The :class:`BenchReport`.

    Raises:
        DeployError: both ``iterations`` and ``duration``, or as :func:`load_runners` and :func:`bench`.
    """
    if iterations is not None and duration is not None:
        raise DeployError("give --iters or --duration, not both")
    with contextlib.ExitStack() as stack:
        runners = load_runners(stack, artifacts, backends, device=device, threads=threads, own=own)
        for _, runner in runners:
            if runner.selection and announce:
                announce(runner.selection)
        results = bench(runners, batch_sizes, iterations=iterations, duration=duration, warmup=warmup,
                        progress=progress)
        descriptions = [runner.describe() for _, runner in runners]
    return BenchReport(results, descriptions, cpu_description(), tool_versions())


def _label(runner: Runner, given: str | os.PathLike[str], stem: str, model: bool) -> tuple[str, str]:
    """(what runs: the file the runner runs and the runner, a row's name): --backend auto may run another file
    of the export than the one given, and the row's name then says for which."""
    if model:
        return (f"{stem} (PyTorch) [{runner.name}]",) * 2
    ran = Path(runner.artifact).name if runner.artifact else Path(given).name
    threads = getattr(runner, "threads", None)
    what = f"{ran} [{runner.name}" + (f", {threads} threads" if runner.selection and threads else "") + "]"
    return what, what + (f" (auto, for {Path(given).name})" if ran != Path(given).name else "")


def _input_for(runner: Runner, batch_size: int, seed: int) -> np.ndarray:
    """Random images of the runner's input: uint8 pixels where it embeds its preprocessing, else normalised."""
    shape = runner.example_batch(1).shape[1:]
    if runner.input_dtype == np.uint8:
        return np.random.default_rng(seed).integers(0, 256, (batch_size, *shape), dtype=np.uint8)
    return random_images(batch_size, shape, (0.5,) * shape[0], (0.25,) * shape[0], seed=seed)


def bench(
    runners: Sequence[tuple[str, Runner]],
    batch_sizes: Sequence[int],
    *,
    iterations: int | None = None,
    duration: float | None = None,
    warmup: int = DEFAULT_WARMUP,
    progress: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Time each (label, runner) at each batch size, interleaved so that a noisy machine slows all alike.

    Args:
        runners: (label, runner) pairs, e.g. from :func:`load_runners`.
        batch_sizes: within every runner's batch range.
        iterations: timed calls per case; or
        duration: seconds of timed calls per case (default 3 s, at least 10 calls).
        warmup: untimed calls per case first.
        progress: called with a line of progress.

    Returns:
        One :class:`BenchResult` per runner and batch size: latency percentiles, images/s, the ratio to
        the first runner, and device time where the runner records it.

    Raises:
        ArgumentError: a count or duration out of range; DeployError: a batch size outside a runner's profile.
    """
    if iterations is not None:
        within("--iters", iterations, 1, MAX_ITERATIONS)
    if duration is not None:
        within("--duration", duration, MIN_DURATION, MAX_DURATION, "seconds per case")
    within("--warmup", warmup, 0, MAX_ITERATIONS)
    if iterations is None and duration is None:
        duration = 3.0
    results = []
    for batch_size in batch_sizes:
        for label, runner in runners:
            low, high = runner.batch_range or (1, batch_size)
            if not low <= batch_size <= high:
                raise DeployError(f"batch size {batch_size} is outside {label}'s profile ({low} to {high})")
        batch = {label: _input_for(runner, batch_size, seed=batch_size) for label, runner in runners}
        per_call = {label: _warm(label, runner, batch[label], warmup, progress) for label, runner in runners}
        samples = _interleaved(runners, batch, per_call, iterations, duration, progress, batch_size)
        first = None
        for label, runner in runners:
            host, device = samples[label]
            stats = latency_stats(host)
            row = BenchResult(
                label=label, backend=runner.name, precision=runner.precision, device=runner.device, batch=batch_size,
                iterations=len(host), latency_ms=stats, images_per_s=batch_size / stats["p50"] * 1e3,
                device_ms=latency_stats(device) if device else None, samples_s=host,
            )
            first = first or row
            row.ratio = row.latency_ms["p50"] / first.latency_ms["p50"]
            results.append(row)
    return results


def _warm(label: str, runner: Runner, batch: np.ndarray, warmup: int,
          progress: Callable[[str], None] | None) -> float:
    """One untimed call and ``warmup`` more: the seconds a call takes, from the warm-up calls (a block's size)."""
    if progress:
        progress(f"batch {len(batch)}: warming up {label}")
    runner(batch)
    start = time.perf_counter()
    for _ in range(warmup):
        runner(batch)
    return (time.perf_counter() - start) / warmup if warmup else BLOCK_SECONDS


def _interleaved(runners: Sequence[tuple[str, Runner]], batch: dict[str, np.ndarray], per_call: dict[str, float],
                 iterations: int | None, duration: float | None, progress: Callable[[str], None] | None,
                 batch_size: int) -> dict[str, tuple[list[float], list[float] | None]]:
    host: dict[str, list[float]] = {label: [] for label, _ in runners}
    block = {label: max(1, round(BLOCK_SECONDS / max(per_call[label], 1e-6))) for label in host}

    def done(label: str) -> bool:
        if iterations is not None:
            return len(host[label]) >= iterations
        return sum(host[label]) >= duration and len(host[label]) >= 10

    with contextlib.ExitStack() as stack:
        timers = {label: runner.device_timer() for label, runner in runners}
        for timer in timers.values():
            if timer is not None:
                stack.callback(timer.close)
        round_index = 0
        while not all(done(label) for label in host):
            shift = round_index % len(runners)
            for label, runner in [*runners[shift:], *runners[:shift]]:
                if done(label):
                    continue
                data, timer, times = batch[label], timers[label] or contextlib.nullcontext(), host[label]
                runner(data)  # untimed: re-warms what the previous runner's block cooled
                count = block[label] if iterations is None else min(block[label], iterations - len(times))
                for _ in range(count):
                    with timer:
                        start = time.perf_counter()
                        runner(data)
                        times.append(time.perf_counter() - start)
                time.sleep(PAUSE_SECONDS)
            round_index += 1
            if progress:
                if iterations is not None:
                    share = min(len(t) for t in host.values()) / iterations
                else:
                    share = min(sum(t) for t in host.values()) / duration
                progress(f"batch {batch_size}: {min(share, 1.0):.0%}")
        return {label: (host[label], timers[label].samples if timers[label] is not None else None) for label in host}


def pyplot() -> Any:
    """matplotlib's pyplot drawing to files (Agg), or a one-line error naming the extra that installs it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DeployError("--plot needs matplotlib: pip install 'resnet-deploy[plot]'") from None
    return plt


def save_png(figure: Any, path: str) -> None:
    """The figure written atomically as a PNG, then closed."""
    from ..fileio import atomic_path

    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    pyplot().close(figure)


def plot(results: Sequence[BenchResult], path: str) -> None:
    """Latency (p50) and throughput against batch size, one line per runner; needs matplotlib."""
    plt = pyplot()
    figure, (latency, throughput) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label in dict.fromkeys(r.label for r in results):
        rows = sorted((r for r in results if r.label == label), key=lambda r: r.batch)
        sizes = [r.batch for r in rows]
        latency.plot(sizes, [r.latency_ms["p50"] for r in rows], marker="o", label=label)
        throughput.plot(sizes, [r.images_per_s for r in rows], marker="o", label=label)
    for axis, title in ((latency, "p50 latency (ms)"), (throughput, "throughput (images/s)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("batch size")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
    latency.legend(fontsize=8)
    figure.tight_layout()
    save_png(figure, path)


def stderr_progress(message: str) -> None:
    print(f"\r{message:<72}", end="", file=sys.stderr, flush=True)
