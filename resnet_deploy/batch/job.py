"""``resnet-deploy batch``: classify (or embed) a set of images of any size into Parquet shards.

The job lists its inputs once, in a fixed order, and cuts them into shards of ``shard_size`` positions.
Inference runs on this machine (:mod:`..target.pipeline`'s overlapped lanes) or on Ray Data
(:mod:`.ray_data`); either way the driver receives the outputs in input order and writes each shard whole,
so a killed job resumes (``--resume``) from the shards on disk: nothing classified twice, nothing lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import FEATURES, LOGITS
from ..environment import cpu_description, tool_versions
from ..errors import DeployError, within
from ..fileio import locked, sha256_file, sweep_temporaries
from ..imageprep import ImagePreprocess
from ..parity.metrics import compare_arrays
from ..parity.tolerances import tolerance_for
from ..target.pipeline import Item, lane_plan, run_pipelined
from ..target.predict import DEFAULT_TOPK, class_names
from ..target.runtime import load
from .inputs import Filesystems, decode_pixels, inputs_digest, list_inputs, model_input
from .record import COMPLETE, STOPPED, RunRecord
from .shards import RowFormat, shard_path, shard_positions, write_shard

DEFAULT_SHARD_SIZE = 4096  # rows per Parquet file: a resumed job redoes at most this many images
DEFAULT_BATCH = 16  # images per call where the profile allows: single-threaded lanes gain little beyond it


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray form runs. ``address``: a running cluster (``auto``, ``ray://host:10001``);
    None starts a local Ray. ``actors``: actors that decode and run (default: one per CPU); ``actor_cpus``:
    Ray CPUs each reserves (default: a share of what reading leaves), a lane per whole CPU (at least one)."""

    address: str | None = None
    actors: int | None = None
    actor_cpus: float | None = None


@dataclass(frozen=True)
class BatchOptions:
    """How a batch job runs. ``threads``: CPU threads per lane (default 1: a lane per core);
    ``batch_size``: images per call (default: 16 within the profile); ``keep_logits``: the logits beside the
    top classes; ``check``: images re-run through the plain runner afterwards and compared."""

    topk: int = DEFAULT_TOPK
    labels: str | None = None
    keep_logits: bool = False
    backend: str = "auto"
    device: str | None = None
    threads: int | None = None
    batch_size: int | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    resume: bool = False
    check: int = 0
    ray: RayOptions | None = None


@dataclass(frozen=True)
class BatchProgress:
    """Where a running job is: images done of the total, this invocation's rate and the time left."""

    done: int
    total: int
    images_per_s: float

    def to_text(self) -> str:
        left = (self.total - self.done) / self.images_per_s if self.images_per_s > 0 else float("nan")
        eta = f"ETA {left:.0f} s" if left == left else "ETA -"
        return f"{self.done}/{self.total} images, {self.images_per_s:.1f} images/s, {eta}"


@dataclass(frozen=True)
class BatchReport:
    """What ``batch`` did: its run record and where the shards are."""

    output: str
    record: RunRecord

    @property
    def passed(self) -> bool:
        return self.record.status == COMPLETE and (self.record.check is None or self.record.check["passed"])

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, **self.record.to_dict()}

    def to_text(self) -> str:
        record, counts, timings = self.record, self.record.counts, self.record.timings
        lines = [f"{counts['rows']} rows ({counts['errors']} images could not be read) in {counts['shards']} shards "
                 f"in {self.output}",
                 f"this run: {counts['run']} images in {timings['seconds']:.1f} s, {timings['images_per_s']:.1f} "
                 f"images/s" + (f"; {timings['steady_images_per_s']:.1f} after {timings['startup_s']:.1f} s of "
                                "start-up" if "startup_s" in timings else "")
                 + f" ({record.configuration['summary']})"]
        if record.check is not None:
            check = record.check
            verdict = "within" if check["passed"] else "NOT within"
            lines.append(f"check: {check['images']} images re-run through the plain runner, {verdict} the "
                         f"{record.configuration['precision']} tolerance (cosine {check['figures']['cosine']:.6f}, "
                         f"max |error| {check['figures']['rel_to_scale']:.1e} of output scale)"
                         + ("" if check["passed"] else ": " + "; ".join(check["failures"])))
        return "\n".join(lines)


def _plain_json(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples as lists), so a resumed job compares like with like."""
    return json.loads(json.dumps(value))


def _require_pyarrow() -> None:
    import importlib.util

    if importlib.util.find_spec("pyarrow") is None:
        raise DeployError("batch writes Parquet with pyarrow, which is not installed: "
                          "pip install 'resnet-deploy[batch]'")


class BatchJob:
    """One invocation of a batch job: its runner, its sources, its shards and its record."""

    def __init__(self, artifact: str, inputs: Iterable[str], output: Path, options: BatchOptions) -> None:
        within("--topk", options.topk, 1, None)
        within("--shard-size", options.shard_size, 1, None)
        within("--check", options.check, 0, None)
        self.options, self.output, self.artifact = options, output, artifact
        self.filesystems = Filesystems()
        self.sources = list_inputs(list(inputs), self.filesystems)
        self.plan = lane_plan(options.device or "cpu", threads=options.threads)
        self.runner = load(artifact, backend=options.backend, device=options.device, threads=self.plan.threads,
                           lanes=self.plan.lanes)
        self.plan = lane_plan(self.runner.device, threads=self.plan.threads)
        self.preprocess = ImagePreprocess.from_manifest(self.runner.manifest.preprocess)
        self.rows = self._row_format()
        self.batch_size = self._batch_size()
        self.pool = None
        if options.ray is not None:
            from .ray_data import ray_pool

            self.pool = ray_pool(options.ray)

    def _row_format(self) -> RowFormat:
        outputs = self.runner.output_names
        output = LOGITS if LOGITS in outputs else FEATURES if FEATURES in outputs else None
        if output is None:
            raise DeployError(f"batch needs a classifier or a backbone's features; this artifact outputs {outputs}")
        names = class_names(self.runner.manifest.num_classes, self.options.labels) if output == LOGITS else None
        return RowFormat(output, self.options.topk, names, self.options.keep_logits and output == LOGITS)

    def _batch_size(self) -> int:
        low, high = self.runner.batch_range or (1, None)
        if self.options.batch_size is None:
            return max(low, min(high or DEFAULT_BATCH, DEFAULT_BATCH))
        return within("--batch-size", self.options.batch_size, low, high,
                      "the artifact's profile" if self.runner.batch_range else "")

    def decode(self, source: str) -> np.ndarray:
        return model_input(decode_pixels(source, self.preprocess, self.filesystems), self.preprocess)

    def configuration(self) -> dict[str, Any]:
        """What runs, as the record says it."""
        runner, pool = self.runner, self.pool
        where = (f"{self.plan.lanes} lanes x {self.plan.threads} threads" if pool is None else
                 f"Ray: {pool.actors} actors x {pool.actor_cpus:g} CPUs")
        return {"mode": "local" if pool is None else "ray", "file": Path(runner.artifact).name,
                "backend": runner.name, "precision": runner.precision, "device": runner.device,
                "selection": runner.selection, "batch_size": self.batch_size,
                **(self.plan.to_dict() if pool is None else {"ray": {"address": self.options.ray.address,
                                                                     **pool.to_dict()}}),
                "cpu": cpu_description(), "summary": f"{runner.name} {runner.precision}, {where}, batch {self.batch_size}"}

    def new_record(self) -> RunRecord:
        return RunRecord(
            artifact=self.artifact, artifact_sha256=sha256_file(self.runner.artifact),
            configuration=_plain_json(self.configuration()),
            rows=_plain_json({"output": self.rows.output, "topk": self.rows.topk, "keep_logits": self.rows.keep_logits,
                              "labels": self.options.labels}),
            preprocess=_plain_json(self.preprocess.__dict__),
            inputs={"count": len(self.sources), "sha256": inputs_digest(self.sources)},
            shard_size=self.options.shard_size, versions=tool_versions())

    def close(self) -> None:
        self.runner.close()
        if self.pool is not None:
            self.pool.close()


def _resumable(job: BatchJob, fresh: RunRecord) -> RunRecord:
    """The record to continue: the earlier run's when it is the same job; a new one for a new job."""
    folder = job.output
    if not job.options.resume:
        if (folder / "run.json").exists():
            raise DeployError(f"{folder} already holds a batch run: --resume to continue it, or another --output")
        return fresh
    earlier = RunRecord.read(folder)
    problem = earlier.mismatch(fresh)
    if problem:
        raise DeployError(f"cannot resume the run in {folder}: {problem}")
    sweep_temporaries(folder)
    return replace(fresh, started=earlier.started, resumed=[*earlier.resumed, fresh.started])


def pending_shards(job: BatchJob) -> list[int]:
    """Shards not yet on disk; a shard on disk must hold exactly its positions.

    Raises:
        DeployError: a shard that holds other rows (changed since it was written).
    """
    size, count = job.options.shard_size, len(job.sources)
    pending = []
    for index in range(-(-count // size)):
        path = shard_path(job.output, index)
        if not path.exists():
            pending.append(index)
            continue
        expected = np.arange(index * size, min(count, (index + 1) * size))
        if not np.array_equal(shard_positions(path), expected):
            raise DeployError(f"{path} does not hold positions {expected[0]}-{expected[-1]} of this run: remove it "
                              "and --resume")
    return pending


def _numbered(job: BatchJob, shards: list[int]) -> Iterator[tuple[int, str]]:
    size = job.options.shard_size
    for index in shards:
        for position in range(index * size, min(len(job.sources), (index + 1) * size)):
            yield position, job.sources[position]


def _chunks(job: BatchJob, shards: list[int]) -> Iterator[list[Item]]:
    """The outputs of the pending shards' images, in order: on Ray Data or in local lanes."""
    numbered = _numbered(job, shards)
    if job.options.ray is not None:
        from .ray_data import run_on_ray

        return run_on_ray(job, numbered)
    return run_pipelined(job.runner, numbered, job.decode, plan=job.plan, batch_size=job.batch_size)


@dataclass
class _Writer:
    """Gathers items into shards and writes each when whole; keeps the outputs ``--check`` will compare."""

    job: BatchJob
    check_positions: set[int]
    progress: Callable[[BatchProgress], None] | None
    total: int
    done: int
    started: float = field(default_factory=time.perf_counter)
    seen: int = 0
    written: int = 0
    kept: dict[int, Item] = field(default_factory=dict)
    pending: list[Item] = field(default_factory=list)
    first: tuple[float, int] | None = None  # when the first outputs came, and how many

    def timings(self) -> dict[str, float]:
        """Seconds and images/s of this invocation, and the same after start-up (from the first outputs)."""
        now = time.perf_counter()
        seconds = now - self.started
        timings = {"seconds": round(seconds, 3), "images_per_s": round(self.seen / seconds, 2) if seconds else 0.0}
        if self.first is not None and self.seen > self.first[1]:
            timings["startup_s"] = round(self.first[0] - self.started, 3)
            timings["steady_images_per_s"] = round((self.seen - self.first[1]) / (now - self.first[0]), 2)
        return timings

    def add(self, items: list[Item]) -> None:
        size, count = self.job.options.shard_size, len(self.job.sources)
        if self.first is None:  # start-up ends with the first outputs (a Ray actor's load, a runtime's warm-up)
            self.first = (time.perf_counter(), len(items))
        for item in items:
            self.seen += 1
            self.pending.append(item)
            if item.position in self.check_positions and item.outputs is not None:
                self.kept[item.position] = item
            shard = item.position // size
            if item.position + 1 == min(count, (shard + 1) * size):  # the shard's last position
                if len(self.pending) != item.position + 1 - shard * size:
                    raise DeployError(f"shard {shard} received {len(self.pending)} rows for "
                                      f"{item.position + 1 - shard * size} positions")
                write_shard(shard_path(self.job.output, shard), self.pending, self.job.rows)
                self.written += len(self.pending)
                self.pending = []
        if self.progress is not None:
            self.progress(BatchProgress(self.done + self.seen, self.total, self.rate(self.seen)))

    def rate(self, images: int) -> float:
        seconds = time.perf_counter() - self.started
        return images / seconds if seconds > 0 else 0.0


def check_positions(pending: list[int], job: BatchJob) -> set[int]:
    """``--check N``: N positions spread evenly over this invocation's images."""
    positions = [p for p, _ in _numbered(job, pending)]
    if not job.options.check or not positions:
        return set()
    picks = np.linspace(0, len(positions) - 1, min(job.options.check, len(positions))).round().astype(int)
    return {positions[i] for i in picks}


def run_check(job: BatchJob, kept: dict[int, Item]) -> dict[str, Any] | None:
    """The kept images re-run one plain call at a time through the driver's runner (no lanes, no Ray), and
    their outputs compared with the job's within the precision's tolerance (the parity gate's criteria)."""
    if not job.options.check:
        return None
    if not kept:
        return {"images": 0, "passed": False, "failures": ["no image of the check could be read"],
                "figures": {"cosine": float("nan"), "rel_to_scale": float("nan")}}
    output = job.rows.output
    positions = sorted(kept)
    plain = np.concatenate([job.runner.run_padded(job.decode(job.sources[p])[None])[output] for p in positions])
    ran = np.stack([kept[p].outputs[output] for p in positions])
    figures = compare_arrays(plain, ran)
    tolerance, _ = tolerance_for(job.runner.precision, random_init=job.runner.manifest.random_init)
    failures = tolerance.failures(figures)
    return {"images": len(positions), "positions": positions, "passed": not failures, "failures": failures,
            "tolerance": tolerance.to_dict(), "figures": figures.to_dict()}


def _counts(job: BatchJob, run: int) -> dict[str, int]:
    """Rows and errors across every shard, after checking each position is there exactly once.

    Raises:
        DeployError: a position missing or repeated (never expected: the shards are whole or absent).
    """
    from .shards import read_rows

    table = read_rows(job.output, ["position", "error"])
    positions = np.sort(table.column("position").to_numpy())
    if not np.array_equal(positions, np.arange(len(job.sources))):
        raise DeployError(f"{job.output} holds {len(positions)} rows for {len(job.sources)} inputs, "
                          f"{len(np.unique(positions))} of them distinct")
    shards = -(-len(job.sources) // job.options.shard_size)
    return {"rows": len(positions), "errors": len(positions) - table.column("error").null_count,
            "shards": shards, "run": run}


def run_batch(artifact: str, inputs: Iterable[str], output: str | Path, options: BatchOptions = BatchOptions(),
              *, progress: Callable[[BatchProgress], None] | None = None) -> BatchReport:
    """Classify ``inputs`` with ``artifact`` into Parquet shards in ``output``: what ``resnet-deploy batch`` does.

    Args:
        artifact: an artifact file (its manifest beside it); ``options.backend="auto"`` runs tune's plan.
        inputs: folders, globs, text files of sources, URIs (``s3://``, ``gs://``, ``file://``), image files.
        output: the folder of shards and ``run.json`` (created if missing).
        options: the :class:`BatchOptions`.
        progress: called as images complete.

    Returns:
        The :class:`BatchReport`; ``passed`` is False when ``--check`` found outputs outside the tolerance.

    Raises:
        DeployError: bad inputs or options, an output folder another job holds or that holds another run.
    """
    _require_pyarrow()
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder / ".run", busy=f"another batch job is writing {folder}"):
        job = BatchJob(artifact, inputs, folder, options)
        try:
            return _run(job, progress)
        finally:
            job.close()


def _run(job: BatchJob, progress: Callable[[BatchProgress], None] | None) -> BatchReport:
    record = _resumable(job, job.new_record())
    pending = pending_shards(job)
    todo = sum(1 for _ in _numbered(job, pending))
    record.write(job.output)
    writer = _Writer(job, check_positions(pending, job), progress, len(job.sources), len(job.sources) - todo)
    status = STOPPED
    try:
        for items in _chunks(job, pending):
            writer.add(items)
        status = COMPLETE
    finally:
        timings = writer.timings()
        if status != COMPLETE:
            replace(record, status=STOPPED, timings=timings,
                    counts={"run": writer.written, "rows": len(job.sources) - todo + writer.written}).write(job.output)
    record = replace(record, status=COMPLETE, timings=timings, counts=_counts(job, writer.seen),
                     check=run_check(job, writer.kept))
    record.write(job.output)
    return BatchReport(str(job.output), record)
