"""``serve`` as a library call: the runner loaded (or given), the limits resolved against it, the app built
and warmed, then listening. The CLI's ``serve`` is this call; another host (a test, a Ray Serve replica, a
user's own process) takes :func:`prepare`'s app into any ASGI server, or runs :func:`serve` itself."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..artifacts import split_artifact_name
from ..backends.base import Runner
from ..errors import ArgumentError, DeployError, within
from .limits import DEFAULT_HOST, DEFAULT_PORT, ServeLimits, address

SERVE_EXTRA_MISSING = "serve needs uvicorn, starlette and pydantic: pip install 'resnet-deploy[serve]'"
GRPC_EXTRA_MISSING = "--grpc-port needs grpcio and Triton's protocol messages: pip install 'resnet-deploy[grpc]'"


@dataclass
class Service:
    """A server ready to listen: its runner (loaded, warmed), the ASGI app, the limits resolved against the
    runner, and the model's name in every URL."""

    runner: Runner
    app: Any
    limits: ServeLimits
    model_name: str

    def describe(self, host: str, port: int, grpc_port: int | None = None) -> str:
        """The line ``serve`` prints: which file, backend and precision, and where."""
        where = f"http://{address(host, port)}/v2" + (f" and gRPC {address(host, grpc_port)}" if grpc_port else "")
        return f"serving {self.runner.artifact} ({self.runner.name}, {self.runner.precision}) on {where}"

    def run(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, grpc_port: int | None = None) -> None:
        """Listen on ``host:port`` (and for gRPC on ``host:grpc_port``: the same model, batcher and limits)
        until stopped (SIGINT, SIGTERM). On the signal the model stops being ready at once and gRPC refuses
        new calls, while uvicorn drains HTTP.

        Raises:
            DeployError: the server did not start, or the grpc extra is missing.
        """
        model = self.app.state.model
        if grpc_port is not None:
            model.fronts.append(_grpc_front_factory()(model, host, grpc_port))
        server = _http_server_factory()(self.app, host, port)
        exit_on_signal = server.handle_exit

        def handle_exit(sig: int, frame: Any) -> None:
            model.shutting_down()
            exit_on_signal(sig, frame)

        server.handle_exit = handle_exit
        try:
            server.run()
        except SystemExit:  # uvicorn's exit when the app's startup failed: said below, in one line
            pass
        if not server.started:
            raise DeployError(model.start_failure or
                              f"the server on {host}:{port} did not start (the reason is logged above)")


def prepare(artifact: str | os.PathLike[str] | Runner, *, model_name: str | None = None,
            limits: ServeLimits | None = None, backend: str = "auto", device: str | None = None,
            threads: int | None = None, shared_cores: bool = False) -> Service:
    """A :class:`Service` for ``artifact``: loaded as :func:`resnet_deploy.target.runtime.load` loads it
    (``auto``: tune's plan), the limits checked against the runner, the app built, the runner warmed, and
    told to hand back the memory of batches above the profile's opt (a server's memory returns after an
    overload; :meth:`~resnet_deploy.backends.base.Runner.release_memory_above`).

    Args:
        artifact: an artifact file (its manifest beside it), or a runner already loaded.
        model_name: the model's name in the URLs (default: the artifact's stem).
        limits: batching, queue and request limits (default :class:`ServeLimits`: the profile's MAX batch,
            at most 32).
        backend, device, threads, shared_cores: as ``runtime.load`` takes them (ignored for a runner).

    Returns:
        The service, not yet listening.

    Raises:
        DeployError: the serve extra is missing, the artifact cannot be loaded, or a limit is out of range.
    """
    create_app = app_factory()
    if isinstance(artifact, Runner):
        return _service(create_app, artifact, model_name, limits)
    from ..target.runtime import load

    runner = load(artifact, backend=backend, device=device, threads=threads, shared_cores=shared_cores)
    try:
        return _service(create_app, runner, model_name, limits)
    except BaseException:  # a limit that does not fit, a failed warm-up: the runner loaded here is released
        runner.close()
        raise


def _service(create_app: Callable[..., Any], runner: Runner, model_name: str | None,
             limits: ServeLimits | None) -> Service:
    name = model_name or default_model_name(runner)
    app = create_app(runner, model_name=name, limits=limits)
    runner.release_memory_above(runner.manifest.batch.opt if runner.manifest else None)
    runner.warmup()
    return Service(runner, app, app.state.limits, name)


def default_model_name(runner: Runner) -> str:
    """The model's name in the URLs where none is given: the artifact's stem (``resnet50``)."""
    return split_artifact_name(runner.artifact)[0] if runner.artifact else "model"


def serve(artifact: str | os.PathLike[str] | Runner, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          grpc_port: int | None = None, announce: Callable[[str], None] | None = None, **options: Any) -> None:
    """Serve ``artifact`` over the Open Inference Protocol on ``host:port`` until stopped.

    Args:
        artifact: an artifact file or a loaded runner, as :func:`prepare` takes it.
        host, port: where to listen (checked before the model is loaded).
        grpc_port: also serve the protocol over gRPC there (None: HTTP alone).
        announce: called with each line to show (how ``auto`` chose, where it serves); None: silent.
        **options: :func:`prepare`'s keywords (model_name, limits, backend, device, threads).

    Returns:
        When the server stops (SIGINT, SIGTERM), after closing a runner it loaded.

    Raises:
        DeployError: the address cannot be listened on, or as :func:`prepare` and :meth:`Service.run`.
    """
    app_factory()  # a missing extra first, before the address and the model
    _http_server_factory()
    within("--port", port, 1, 65535)
    check_listen(host, port)
    if grpc_port is not None:
        _grpc_front_factory()
        within("--grpc-port", grpc_port, 1, 65535)
        if grpc_port == port:
            raise ArgumentError(f"--grpc-port {grpc_port} is the HTTP --port: give each its own")
        check_listen(host, grpc_port)
    service = prepare(artifact, **options)
    try:
        for line in (service.runner.selection, service.describe(host, port, grpc_port)):
            if line and announce:
                announce(line)
        service.run(host, port, grpc_port)
    finally:
        if not isinstance(artifact, Runner):  # loaded here: released here
            service.runner.close()


def app_factory() -> Callable[..., Any]:
    """:func:`.app.create_app`, or a one-line error naming the serve extra where it is not installed."""
    try:
        import pydantic  # noqa: F401  (the request schema)

        from .app import create_app
    except ImportError:
        raise DeployError(SERVE_EXTRA_MISSING) from None
    return create_app


def _http_server_factory() -> Callable[..., Any]:
    """:func:`.connections.http_server` (uvicorn's), or a one-line error naming the serve extra; only what
    listens needs it: :func:`prepare`'s app goes into any ASGI server."""
    try:
        from .connections import http_server
    except ImportError:
        raise DeployError(SERVE_EXTRA_MISSING) from None
    return http_server


def _grpc_front_factory() -> Callable[..., Any]:
    """:class:`.grpc_service.GrpcFront`, or a one-line error naming the grpc extra where it is not installed."""
    try:
        from .grpc_service import GrpcFront
    except ImportError:
        raise DeployError(GRPC_EXTRA_MISSING) from None
    return GrpcFront


def check_listen(host: str, port: int) -> None:
    """A one-line error, before the model is loaded, where ``host:port`` cannot be listened on (in use,
    not an address of this machine), instead of uvicorn's log line and exit 1."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise DeployError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
