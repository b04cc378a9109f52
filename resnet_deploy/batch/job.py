"""``resnet-deploy batch``: classify (or embed) a set of images of any size into Parquet shards.

The job lists its inputs once, in a fixed order, and cuts them into shards of ``shard_size`` positions.
Inference runs on this machine (:mod:`..target.pipeline`'s overlapped lanes) or on Ray Data
(:mod:`.ray_data`); either way the driver receives the outputs in input order and writes each shard whole,
so a killed job resumes (``--resume``, :mod:`.resume`) from the shards on disk: nothing classified twice,
nothing lost. :mod:`.check` compares some of the outputs with the plain runner's afterwards.
"""

from __future__ import annotations

import contextlib
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
from ..fileio import locked, sha256_file
from ..imageprep import ImagePreprocess
from ..target.pipeline import Item, lane_plan, run_pipelined
from ..target.predict import DEFAULT_TOPK, class_names
from ..target.runtime import identity, load
from .check import MAX_CHECK, CheckPicker, run_check
from .inputs import Filesystems, decode_pixels, inputs_digest, list_inputs, model_input
from .ray_data import ActorSpec, RayOptions, RayPool, ray_pool, run_on_ray
from .record import COMPLETE, STOPPED, RunRecord
from .resume import pending_shards, starting_record
from .shards import RowFormat, read_rows, shard_path, write_shard

DEFAULT_SHARD_SIZE = 4096  # rows per Parquet file: a resumed job redoes at most this many images
DEFAULT_BATCH = 16  # images per call where the profile allows: single-threaded lanes gain little beyond it


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
        """Complete, within ``--check``'s tolerance, and at least one image read (a job whose every image
        failed, a wrong bucket or a mount gone, exits 1 for a pipeline to notice)."""
        counts, check = self.record.counts, self.record.check
        return (self.record.status == COMPLETE and (check is None or check["passed"])
                and counts["errors"] < counts["rows"])

    def to_dict(self) -> dict[str, Any]:
        return {"output": self.output, **self.record.to_dict()}

    def to_text(self) -> str:
        record, counts, timings = self.record, self.record.counts, self.record.timings
        lines = [f"{counts['rows']} rows ({counts['errors']} images could not be read) in {counts['shards']} shards "
                 f"in {self.output}",
                 f"this run: {counts['run']} images in {timings['seconds']:.1f} s, {timings['images_per_s']:.1f} "
                 f"images/s, the first after {timings.get('first_output_s', 0):.1f} s ({record.configuration['summary']})"]
        if record.check is not None and not record.check["images"]:
            lines.append(f"check: nothing to check ({record.check['note']})")
        elif record.check is not None:
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


def _check_options(options: BatchOptions) -> None:
    """Every option's bounds, before anything is listed, loaded, started or created."""
    within("--topk", options.topk, 1, None)
    within("--shard-size", options.shard_size, 1, None)
    within("--check", options.check, 0, MAX_CHECK, "images kept for the check and re-run after the job")
    if options.threads is not None:
        within("--threads", options.threads, 1, None)
    ray = options.ray
    if ray is not None and ray.actors is not None:
        within("--actors", ray.actors, 1, None)
    if ray is not None and ray.actor_cpus is not None and not ray.actor_cpus > 0:
        raise DeployError(f"--actor-cpus must be more than 0, not {ray.actor_cpus}")


class BatchJob:
    """One invocation of a batch job: its runner, its sources, its row format; ``pool`` its Ray side."""

    def __init__(self, artifact: str, inputs: Iterable[str], output: Path, options: BatchOptions) -> None:
        _check_options(options)
        self.options, self.output, self.artifact = options, output, artifact
        self.filesystems = Filesystems()
        self.sources = list_inputs(list(inputs), self.filesystems)
        wanted = lane_plan(options.device or "cpu", threads=options.threads)
        self.runner = load(artifact, backend=options.backend, device=options.device, threads=wanted.threads,
                           lanes=wanted.lanes)
        self.plan = lane_plan(self.runner.device, threads=wanted.threads)
        self.preprocess = ImagePreprocess.from_manifest(self.runner.manifest.preprocess)
        self.pool: RayPool | None = None
        try:
            self.sha256 = sha256_file(self.runner.artifact)  # of the file that runs: the record's and actors' key
            self.rows = self._row_format()
            self.batch_size = self._batch_size()
        except BaseException:
            self.runner.close()
            raise

    def start_ray(self) -> None:
        """Join or start Ray and size the actor pool (``--ray``)."""
        if self.options.ray is not None:
            self.pool = ray_pool(self.options.ray)

    def _row_format(self) -> RowFormat:
        outputs = self.runner.output_names
        output = LOGITS if LOGITS in outputs else FEATURES if FEATURES in outputs else None
        if output is None:
            raise DeployError(f"batch needs a classifier or a backbone's features; this artifact outputs {outputs}")
        if output == FEATURES and self.options.keep_logits:
            raise DeployError("--keep-logits: this artifact is a backbone (no classifier head); its rows hold its "
                              "pooled features")
        names = class_names(self.runner.manifest.num_classes, self.options.labels) if output == LOGITS else None
        return RowFormat(output, self.options.topk if output == LOGITS else 0, names, self.options.keep_logits)

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
            artifact=self.artifact, artifact_sha256=self.sha256,
            configuration=_plain_json(self.configuration()),
            rows=_plain_json({"output": self.rows.output, "topk": self.rows.topk, "keep_logits": self.rows.keep_logits,
                              "labels": self.options.labels}),
            preprocess=_plain_json(self.preprocess.__dict__),
            inputs={"count": len(self.sources), "sha256": inputs_digest(self.sources)},
            shard_size=self.options.shard_size, versions=tool_versions())

    def numbered(self, shards: list[int]) -> Iterator[tuple[int, str]]:
        """``(position, source)`` of ``shards``' images, in order."""
        size = self.options.shard_size
        for index in shards:
            for position in range(index * size, min(len(self.sources), (index + 1) * size)):
                yield position, self.sources[position]

    def outputs(self, shards: list[int]) -> Iterator[list[Item]]:
        """The outputs of ``shards``' images, in order: on Ray Data or in local lanes."""
        if self.pool is not None:
            expected = identity(self.runner, self.sha256)
            spec = ActorSpec(str(Path(self.artifact).resolve()), self.options.backend, self.options.device, expected,
                             self.rows.output, self.filesystems, self.batch_size)
            return run_on_ray(self.numbered(shards), spec, self.pool)
        return run_pipelined(self.runner, self.numbered(shards), self.decode, plan=self.plan,
                             batch_size=self.batch_size)

    def close(self) -> None:
        self.runner.close()
        if self.pool is not None:
            self.pool.close()


@dataclass
class _Writer:
    """Gathers items into shards and writes each when whole, its sha256 into the record; offers each item to
    ``--check``'s picker; reports progress."""

    job: BatchJob
    record: RunRecord
    picker: CheckPicker
    progress: Callable[[BatchProgress], None] | None
    done_before: int
    started: float = field(default_factory=time.perf_counter)
    seen: int = 0
    written: int = 0
    pending: list[Item] = field(default_factory=list)
    first: float | None = None  # when the first outputs came

    def add(self, items: list[Item]) -> None:
        size, count = self.job.options.shard_size, len(self.job.sources)
        if self.first is None:
            self.first = time.perf_counter()
        for item in items:
            self.seen += 1
            self.pending.append(item)
            self.picker.offer(item)
            shard = item.position // size
            if item.position + 1 == min(count, (shard + 1) * size):  # the shard's last position
                self._write(shard, item.position + 1 - shard * size)
        if self.progress is not None:
            seconds = time.perf_counter() - self.started
            self.progress(BatchProgress(self.done_before + self.seen, count, self.seen / seconds if seconds else 0.0))

    def _write(self, shard: int, expected: int) -> None:
        if len(self.pending) != expected:
            raise DeployError(f"shard {shard} received {len(self.pending)} rows for {expected} positions")
        digest = write_shard(shard_path(self.job.output, shard), self.pending, self.job.rows)
        self.written += len(self.pending)
        self.pending = []
        self.record = replace(self.record, shards={**self.record.shards, str(shard): digest})
        self.record.write(self.job.output)

    def timings(self) -> dict[str, float]:
        """Seconds and images/s of this invocation, and how long its first outputs took (the start-up: Ray's
        actors loading the model, a runtime's first call)."""
        seconds = time.perf_counter() - self.started
        timings = {"seconds": round(seconds, 3), "images_per_s": round(self.seen / seconds, 2) if seconds else 0.0}
        if self.first is not None:
            timings["first_output_s"] = round(self.first - self.started, 3)
        return timings


def _counts(job: BatchJob, run: int) -> dict[str, int]:
    """Rows and errors across every shard, after checking each position is there exactly once.

    Raises:
        DeployError: a position missing or repeated (never expected: the shards are whole or absent).
    """
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
        output: the folder of shards and ``_run.json`` (created if missing).
        options: the :class:`BatchOptions`.
        progress: called as images complete.

    Returns:
        The :class:`BatchReport`; ``passed`` is False when ``--check`` found outputs outside the tolerance.

    Raises:
        DeployError: bad inputs or options, an output folder another job holds or that holds another run.
    """
    _require_pyarrow()
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise DeployError(f"--output {folder} is not a folder")
    job = BatchJob(artifact, inputs, folder, options)  # inputs and options checked before the folder is made
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with locked(folder / ".run", busy=f"another batch job is writing {folder}"):
            record = starting_record(folder, job.new_record(), options.resume)
            job.start_ray()
            return _run(job, replace(record, configuration=_plain_json(job.configuration())), progress)
    finally:
        job.close()


def _run(job: BatchJob, record: RunRecord, progress: Callable[[BatchProgress], None] | None) -> BatchReport:
    pending, written = pending_shards(job.output, len(job.sources), job.options.shard_size, job.rows, record)
    positions = np.fromiter((p for p, _ in job.numbered(pending)), dtype=np.int64)
    record = replace(record, shards=written)
    record.write(job.output)
    writer = _Writer(job, record, CheckPicker(positions, job.options.check), progress,
                     len(job.sources) - len(positions))
    try:
        with contextlib.closing(job.outputs(pending)) as outputs:  # lanes stopped before the runner closes
            for items in outputs:
                writer.add(items)
        check = None if not job.options.check else run_check(
            job.runner, lambda position: job.decode(job.sources[position]), job.rows.output, writer.picker.kept,
            writer.seen)
        record = replace(writer.record, status=COMPLETE, timings=writer.timings(), counts=_counts(job, writer.seen),
                         check=check)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk: the error that stopped the job is the one to show
            replace(writer.record, status=STOPPED, timings=writer.timings(),
                    counts={"run": writer.written, "rows": writer.done_before + writer.written}).write(job.output)
        raise
    record.write(job.output)
    return BatchReport(str(job.output), record)
