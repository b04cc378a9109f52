"""The batch job on Ray Data: Ray's batch-inference pattern, with this package's pipeline in each actor.

``from_items`` (the job's numbered sources) -> ``map_batches(Classify, compute=ActorPoolStrategy(size=N),
num_cpus=C)``: each actor loads the runner once (its threads set explicitly: ONNX Runtime ignores the
``OMP_NUM_THREADS=1`` Ray sets; no thread pinned to a core, as other actors share them), refuses to run a
file, backend or precision other than the driver's, and decodes and runs each Ray batch in the local lanes
(:func:`~resnet_deploy.target.pipeline.run_pipelined`, a lane per whole CPU it reserves) -> the driver
iterates the outputs in order and writes the shards as the local form does, so both give the same rows and
the same resumable output. Decoding in the actors rather than in a task stage before them: measured here,
separate decode tasks fed the actors at 78 images/s, the lanes in the actors at 101 (1,000 JPEGs, ORT INT8).

Actors x CPUs stay below the cluster's CPUs: a pool that reserves every CPU starves the read stage and the
job hangs (ray#44687).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DeployError
from ..raycluster import connect, import_ray
from ..imageprep import ImagePreprocess
from ..target.pipeline import Item, lane_plan, run_pipelined
from .inputs import Filesystems, decode_pixels, model_input


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray form runs. ``address``: a running cluster (``auto``, ``ray://host:10001``);
    None starts a local Ray. ``actors``: actors that decode and run (default: one per CPU); ``actor_cpus``:
    Ray CPUs each reserves (default: a share of what reading leaves), a lane per whole CPU (at least one)."""

    address: str | None = None
    actors: int | None = None
    actor_cpus: float | None = None


@dataclass(frozen=True)
class ActorSpec:
    """What each actor is given: the artifact and how the driver loaded it (``expected``: the file, backend,
    precision and sha256 it must find), the output the rows hold, the filesystems of the inputs, the batch."""

    artifact: str
    backend: str
    device: str | None
    expected: dict[str, str]
    output: str
    filesystems: Filesystems
    batch_size: int


RAY_DATA_MISSING = "--ray needs Ray Data, which is not installed: pip install 'resnet-deploy[ray]'"


def _ray() -> Any:
    return import_ray("ray.data", RAY_DATA_MISSING)


READ_RESERVE = 0.25  # Ray CPUs left to the read stage, which must never be starved (ray#44687)


def actor_pool(options: RayOptions, cluster_cpus: float) -> tuple[int, float]:
    """``(actors, CPUs each)`` on a cluster of ``cluster_cpus``. Unset, an actor per CPU; the CPUs each
    reserves share what :data:`READ_RESERVE` leaves. Each actor runs a lane (a thread decoding then
    running) per whole CPU it reserves, at least one.

    Raises:
        DeployError: a pool that would reserve every CPU (the job would hang, ray#44687), or none.
    """
    if options.actor_cpus is not None and not options.actor_cpus > 0:
        raise DeployError(f"--actor-cpus must be more than 0, not {options.actor_cpus}")
    if options.actors is not None and options.actors < 1:
        raise DeployError(f"--actors must be at least 1, not {options.actors}")
    usable = cluster_cpus - READ_RESERVE
    cpus = options.actor_cpus
    actors = options.actors or (max(1, math.floor(usable / cpus)) if cpus else max(1, math.floor(cluster_cpus)))
    cpus = cpus or round(usable / actors, 3)
    if cpus <= 0 or actors * cpus >= cluster_cpus:
        raise DeployError(f"{actors} actors x {cpus:g} CPUs reserve all {cluster_cpus:g} CPUs of the Ray cluster, "
                          "leaving none to read the inputs (the job would hang, ray#44687): fewer --actors or "
                          "fewer --actor-cpus")
    return actors, cpus


class Classify:
    """The local pipeline inside a Ray actor: the runner loaded once per actor and checked to be the driver's
    configuration, and each Ray batch decoded and run in the actor's lanes (a lane per CPU it reserves)."""

    def __init__(self, artifact: str, backend: str, device: str | None, cpus: float, expected: dict[str, str],
                 output: str, filesystems: Filesystems) -> None:
        from ..target.runtime import identity, load

        wanted = lane_plan(device or "cpu", cores=max(1, round(cpus)))
        self.runner = load(artifact, backend=backend, device=device, threads=wanted.threads, lanes=wanted.lanes,
                           shared_cores=True)
        self.plan = lane_plan(self.runner.device, cores=max(1, round(cpus)))
        found = identity(self.runner)
        if found != expected:
            raise DeployError(f"a Ray actor loaded {found}, not the driver's {expected}: every node must hold the "
                              "same artifact (and, for --backend auto, the same tune plan)")
        self.preprocess = ImagePreprocess.from_manifest(self.runner.manifest.preprocess)
        self.output, self.filesystems = output, filesystems

    def decode(self, source: str) -> np.ndarray:
        return model_input(decode_pixels(source, self.preprocess, self.filesystems), self.preprocess)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        numbered = zip(batch["position"].tolist(), map(str, batch["source"]))
        size = max(1, -(-len(batch["source"]) // self.plan.lanes))
        items = [item for chunk in run_pipelined(self.runner, numbered, self.decode, plan=self.plan, batch_size=size)
                 for item in chunk]
        width = next((item.outputs[self.output].size for item in items if item.outputs), 0)
        values = np.zeros((len(items), width), np.float32)
        for row, item in enumerate(items):
            if item.outputs:
                values[row] = item.outputs[self.output].ravel()
        return {"position": batch["position"], "source": batch["source"],
                "error": np.asarray([item.error or "" for item in items], dtype=object), "values": values}


def _dataset(numbered: list[tuple[int, str]], spec: ActorSpec, pool: RayPool) -> Any:
    ray = _ray()
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the driver writes shards in input order
    context.enable_progress_bars = False  # the job shows its own
    items = [{"position": position, "source": source} for position, source in numbered]
    per_call = spec.batch_size * pool.lanes  # a batch for each of an actor's lanes
    return ray.data.from_items(items, override_num_blocks=-(-len(items) // per_call)).map_batches(
        Classify, fn_constructor_kwargs={
            "artifact": spec.artifact, "backend": spec.backend, "device": spec.device, "cpus": pool.actor_cpus,
            "expected": spec.expected, "output": spec.output, "filesystems": spec.filesystems},
        compute=ray.data.ActorPoolStrategy(size=pool.actors), batch_size=per_call, num_cpus=pool.actor_cpus,
        num_gpus=0 if (spec.device or "cpu").startswith("cpu") else 1)


@dataclass(frozen=True)
class RayPool:
    """The Ray side of a job: the actors, the CPUs each reserves (its lanes), the cluster's CPUs, and whether
    the job started Ray (and so ends it)."""

    actors: int
    actor_cpus: float
    cluster_cpus: float
    started: bool

    @property
    def lanes(self) -> int:
        return max(1, round(self.actor_cpus))

    def to_dict(self) -> dict[str, Any]:
        return {"actors": self.actors, "actor_cpus": self.actor_cpus, "lanes_per_actor": self.lanes,
                "cluster_cpus": self.cluster_cpus}

    def close(self) -> None:
        if self.started:
            _ray().shutdown()


def ray_pool(options: RayOptions) -> RayPool:
    """Connect to Ray (:func:`connect`) and size the actor pool (:func:`actor_pool`) on its CPUs."""
    started = connect(_ray(), options.address, quiet=("ray.data",))
    try:
        cluster_cpus = float(_ray().cluster_resources().get("CPU", 0))
        actors, cpus = actor_pool(options, cluster_cpus)
    except BaseException:
        if started:
            _ray().shutdown()
        raise
    return RayPool(actors, cpus, cluster_cpus, started)


def run_on_ray(numbered: Iterator[tuple[int, str]], spec: ActorSpec, pool: RayPool) -> Iterator[list[Item]]:
    """Sources through Ray Data; their outputs in input order, as the local form yields them.

    Args:
        numbered: ``(position, source)`` pairs still to do.
        spec: what each actor loads and how (:class:`ActorSpec`).
        pool: the actors (:func:`ray_pool`).

    Yields:
        Chunks of :class:`~resnet_deploy.target.pipeline.Item`.
    """
    pending = list(numbered)
    if not pending:
        return
    for batch in _dataset(pending, spec, pool).iter_batches(batch_size=None, batch_format="numpy"):
        yield [Item(int(p), str(s), None if e else {spec.output: v}, e or None)
               for p, s, e, v in zip(batch["position"], batch["source"], batch["error"], batch["values"])]
