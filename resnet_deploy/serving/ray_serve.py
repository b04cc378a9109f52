"""``serve --ray``: the same Open Inference Protocol app as ``serve`` (:func:`.server.prepare`'s), as a Ray Serve
deployment. Each replica loads its own runner, its threads set to the CPUs it reserves (ONNX Runtime ignores the
``OMP_NUM_THREADS=1`` Ray sets; no thread pinned to a core, as replicas share a node), checks it loaded what the
driver checked (the file, backend, precision and sha256), and serves the app with its own dynamic batcher and
limits. Ray Serve routes requests between replicas and adds or removes them by the requests in flight.

Mounted through ``serve.ingress()`` on a class whose ``__serve_build_asgi_app__`` returns the app built in the
replica: a builder function with arguments does not work (Serve calls it without the ``bind()`` arguments).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ArgumentError, DeployError, within
from ..raycluster import connect, import_ray
from .limits import DEFAULT_HOST, DEFAULT_PORT, MAX_QUEUE, ServeLimits, address

RAY_SERVE_MISSING = "serve --ray needs Ray Serve, which is not installed: pip install 'resnet-deploy[ray]'"
MAX_REPLICAS = 1024
MAX_REPLICA_CPUS = 1024
MAX_DELAY_S = 86_400.0  # a day: longer is a misconfiguration, not a delay
DEFAULT_UPSCALE_DELAY_S = 30.0  # Ray Serve's own defaults: add replicas after 30 s over target,
DEFAULT_DOWNSCALE_DELAY_S = 600.0  # remove them after 10 minutes under it
DEFAULT_LOOK_BACK_S = 30.0  # the window the requests in flight are averaged over
AUTOSCALING_DEFAULTS = (DEFAULT_UPSCALE_DELAY_S, DEFAULT_DOWNSCALE_DELAY_S, DEFAULT_LOOK_BACK_S)
READY_TIMEOUT_S = 600.0  # replicas that load a large model on a busy node take minutes, not hours


@dataclass(frozen=True)
class RayServeOptions:
    """Where the deployment runs and how many replicas it has.

    ``address``: a running cluster (``auto``, ``ray://host:10001``); None starts a local Ray. ``replicas``: a
    fixed count; or autoscaling between ``min_replicas`` and ``max_replicas`` on ``target_ongoing`` requests in
    flight per replica (default: the replica's largest batch, so a replica fills its batches before another is
    added), averaged over ``look_back_s``, acted on after ``upscale_delay_s`` over or ``downscale_delay_s``
    under it. ``replica_cpus``: Ray CPUs each replica reserves, its runner's threads (whole CPUs, at least one).
    """

    address: str | None = None
    replicas: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing: float | None = None
    replica_cpus: float = 1.0
    upscale_delay_s: float = DEFAULT_UPSCALE_DELAY_S
    downscale_delay_s: float = DEFAULT_DOWNSCALE_DELAY_S
    look_back_s: float = DEFAULT_LOOK_BACK_S

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None or self.target_ongoing is not None

    @property
    def threads(self) -> int:
        """The runner's threads in each replica: the whole CPUs it reserves, at least one."""
        return max(1, math.floor(self.replica_cpus))

    def check(self) -> RayServeOptions:
        """These options with the replica counts settled (a fixed count of 1 where none is asked).

        Raises:
            ArgumentError: a fixed count beside autoscaling bounds, or a value out of its range.
        """
        if self.replicas is not None and self.autoscaling:
            raise ArgumentError("--replicas is a fixed count; --min-replicas, --max-replicas and --target-ongoing "
                                "autoscale: give one or the other")
        within("--replica-cpus", self.replica_cpus, 0.001, MAX_REPLICA_CPUS)
        within("--upscale-delay-s", self.upscale_delay_s, 0, MAX_DELAY_S)
        within("--downscale-delay-s", self.downscale_delay_s, 0, MAX_DELAY_S)
        within("--look-back-s", self.look_back_s, 0.1, MAX_DELAY_S)
        if not self.autoscaling:
            if (self.upscale_delay_s, self.downscale_delay_s, self.look_back_s) != AUTOSCALING_DEFAULTS:
                raise ArgumentError("--upscale-delay-s, --downscale-delay-s and --look-back-s tune autoscaling: give "
                                    "--min-replicas and --max-replicas, or leave them out")
            replicas = 1 if self.replicas is None else self.replicas
            within("--replicas", replicas, 1, MAX_REPLICAS)
            return replace(self, replicas=replicas)
        if self.max_replicas is None:
            raise ArgumentError("autoscaling needs --max-replicas, the most replicas the cluster may hold")
        low, high = self.min_replicas if self.min_replicas is not None else 1, self.max_replicas
        within("--min-replicas", low, 0, MAX_REPLICAS)
        within("--max-replicas", high, max(1, low), MAX_REPLICAS, "at least --min-replicas and 1")
        if self.target_ongoing is not None:
            within("--target-ongoing", self.target_ongoing, 0.001, MAX_QUEUE)
        return replace(self, min_replicas=low, max_replicas=high)

    def deployment_options(self, limits: ServeLimits, *, gpu: bool = False) -> dict[str, Any]:
        """``serve.deployment``'s keywords: the replicas or their autoscaling, the CPUs (and, for a runner on a
        GPU, the GPU) each reserves, the requests Ray routes to one replica at once (what its batcher holds:
        its queue, and a batch of one-image requests per worker), and the requests the proxy holds beyond
        those (the batcher's queue size: past it the proxy answers 503, as ``serve`` does past its queue).

        Raises:
            ArgumentError: a target of requests in flight no replica can reach.
        """
        ongoing = limits.queue_size + limits.workers * limits.max_batch
        if self.target_ongoing is not None and self.target_ongoing > ongoing:
            raise ArgumentError(f"--target-ongoing {self.target_ongoing:g} is more than the {ongoing} requests a "
                                "replica takes at once (--queue plus a batch per worker): it would never scale up")
        options: dict[str, Any] = {"ray_actor_options": {"num_cpus": self.replica_cpus, "num_gpus": int(gpu)},
                                   "max_ongoing_requests": ongoing, "max_queued_requests": limits.queue_size}
        if not self.autoscaling:
            return {**options, "num_replicas": self.replicas}
        return {**options, "autoscaling_config": {
            "min_replicas": self.min_replicas, "initial_replicas": max(1, self.min_replicas or 0),
            "max_replicas": self.max_replicas, "target_ongoing_requests": self.target_ongoing or limits.max_batch,
            "upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s,
            "look_back_period_s": self.look_back_s}}

    def describe(self) -> str:
        if not self.autoscaling:
            return f"{self.replicas} replica{'s' if self.replicas != 1 else ''} x {self.replica_cpus:g} CPU"
        return (f"{self.min_replicas} to {self.max_replicas} replicas x {self.replica_cpus:g} CPU, autoscaling on "
                f"requests in flight")


class OipReplica:
    """One Ray Serve replica: :func:`.server.prepare`'s service (runner, batcher, app) built in the replica,
    refused where it loaded another configuration than the driver checked."""

    def __init__(self, artifact: str, model_name: str, limits: ServeLimits, backend: str, device: str | None,
                 threads: int, expected: dict[str, str]) -> None:
        from ..target.runtime import identity
        from .server import prepare

        self.service = prepare(artifact, model_name=model_name, limits=limits, backend=backend, device=device,
                               threads=threads, shared_cores=True)
        found = identity(self.service.runner)
        if found != expected:
            self.service.runner.close()
            raise DeployError(f"a Ray Serve replica loaded {found}, not the driver's {expected}: every node must hold "
                              "the same artifact (and, for --backend auto, the same tune plan)")

    def __serve_build_asgi_app__(self) -> Any:
        return self.service.app

    def __del__(self) -> None:
        """Ray Serve removes the replica (after the app's lifespan stopped its batcher): its runner released."""
        service = getattr(self, "service", None)
        if service is not None:
            service.runner.close()

    def check_health(self) -> None:
        """Ray Serve's health check: a replica whose model stopped being ready is replaced."""
        model = self.service.app.state.model
        if model.start_failure:
            raise RuntimeError(model.start_failure)


def _serve() -> Any:
    ray = import_ray("ray.serve", RAY_SERVE_MISSING)
    from ray import serve

    return ray, serve


def application(artifact: str, options: RayServeOptions, *, model_name: str, limits: ServeLimits,
                expected: dict[str, str], backend: str = "auto", device: str | None = None,
                gpu: bool = False) -> Any:
    """The Ray Serve application (``Deployment.bind(...)``) serving ``artifact``: what :func:`serve_on_ray`
    runs, and what a user's own ``serve.run`` or config takes.

    Args:
        artifact: the artifact file, at the same path on every node.
        options: replicas and CPUs (:meth:`RayServeOptions.check`-ed).
        model_name: the model's name in every URL.
        limits: each replica's batching, queue and request limits, resolved against the runner.
        expected: :func:`~resnet_deploy.target.runtime.identity` of the runner the driver checked.
        backend, device: as ``runtime.load`` takes them.
        gpu: the runner computes on a GPU (each replica reserves one).

    Returns:
        The bound application.
    """
    _, serve = _serve()
    replica = serve.deployment(name=model_name, **options.deployment_options(limits, gpu=gpu))(
        serve.ingress()(OipReplica))
    return replica.bind(artifact, model_name, limits, backend, device, options.threads, expected)


def serve_on_ray(artifact: str, options: RayServeOptions, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 model_name: str | None = None, limits: ServeLimits | None = None, backend: str = "auto",
                 device: str | None = None, announce: Callable[[str], None] | None = None,
                 stop: threading.Event | None = None) -> None:
    """Serve ``artifact`` on Ray Serve until stopped, then take the deployment down (and the Ray it started).

    The artifact is loaded here first, with a replica's threads: the configuration ``auto`` picks, the limits
    checked against it and the identity every replica must find, so a bad option fails before Ray starts.

    Args:
        artifact: the artifact file (the same path on every node of a cluster).
        options: where and how many replicas (:class:`RayServeOptions`).
        host, port: where Ray Serve's HTTP proxy listens (the OIP routes at ``/v2``).
        model_name, limits, backend, device: as :func:`.server.prepare` takes them.
        announce: called with each line to show.
        stop: set to stop (None: SIGINT or SIGTERM stop it).

    Raises:
        DeployError: Ray Serve is missing, Ray cannot be reached, or the deployment did not become ready.
    """
    from ..target.runtime import identity, load
    from .server import app_factory, check_listen, default_model_name

    options = options.check()
    ray, serve = _serve()
    app_factory()  # serve's own extra, before Ray starts
    within("--port", port, 1, 65535)
    check_listen(host, port)
    with load(artifact, backend=backend, device=device, threads=options.threads) as runner:
        limits = (limits or ServeLimits()).for_runner(runner)
        expected, name = identity(runner), model_name or default_model_name(runner)
        gpu = runner.device.startswith("cuda")  # each replica reserves one, which Ray makes its only visible one
        options.deployment_options(limits, gpu=gpu)  # a target no replica reaches: refused before Ray starts
    started, deployed = connect(ray, options.address, quiet=("ray.serve",)), False
    try:
        serve.start(http_options={"host": host, "port": port})
        if name in serve.status().applications:
            raise ArgumentError(f"Ray Serve on this cluster already runs an application named {name}: give another "
                                "--model-name, or take that one down (serve.delete)")
        app = application(str(artifact), options, model_name=name, limits=limits, expected=expected,
                          backend=backend, device="cuda" if device and device.startswith("cuda") else device, gpu=gpu)
        deployed = True
        _run(serve, app, name)
        if announce:
            announce(f"serving {artifact} ({expected['backend']}, {expected['precision']}) on Ray Serve, "
                     f"{options.describe()}, at http://{address(host, port)}/v2/models/{name}")
        _wait(stop)
    finally:
        _take_down(ray, serve, name if deployed else None, started, local=options.address is None)


def _run(serve: Any, app: Any, name: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """``serve.run`` (which returns once every replica is ready), within ``timeout_s``, its failures as one line.

    Raises:
        DeployError: the deployment failed, or it was not ready in time (a replica the cluster cannot place
            waits for ever).
    """
    failures: list[BaseException] = []

    def deploy() -> None:
        try:
            serve.run(app, name=name, route_prefix="/")
        except Exception as exc:  # noqa: BLE001  (DeploymentFailed, RayActorError: reported below)
            failures.append(exc)

    thread = threading.Thread(target=deploy, name=f"deploy {name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise DeployError(f"the Ray Serve deployment {name} was not ready in {timeout_s:g} s: a replica the cluster "
                          "cannot place (more --replica-cpus, or GPUs, than a node has) waits for ever")
    if failures:
        text = str(failures[0])
        reason = next((line for line in reversed(text.splitlines()) if "DeployError" in line), None)
        raise DeployError(f"the Ray Serve deployment {name} did not start: "
                          f"{(reason or text.splitlines()[0]).strip()}")


def _wait(stop: threading.Event | None) -> None:
    """Until ``stop`` is set, or (None) SIGINT or SIGTERM arrive; the caller's handlers put back after."""
    import signal

    if stop is not None:
        stop.wait()
        return
    if threading.current_thread() is not threading.main_thread():
        raise ArgumentError("serve_on_ray off the main thread needs stop= (signals reach the main thread only)")
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop.wait()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _take_down(ray: Any, serve: Any, name: str | None, started: bool, local: bool) -> None:
    """This deployment (``name``: None where it was never deployed) deleted; Serve and Ray shut down only where this call started a local Ray (on a cluster
    it joined, the driver disconnects: other applications keep running)."""
    logging.getLogger("ray.serve").setLevel(logging.ERROR)
    if not ray.is_initialized():  # disconnected already: Serve's calls would start a new local Ray
        return
    if name is not None:
        try:
            serve.delete(name)
        except Exception:  # noqa: BLE001  (never ready, or the cluster is gone: nothing to take down)
            pass
    if started and local:
        serve.shutdown()
    if started:
        ray.shutdown()
