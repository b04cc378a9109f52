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
from ..errors import DeployError, within
from .limits import DEFAULT_HOST, DEFAULT_PORT, ServeLimits


@dataclass
class Service:
    """A server ready to listen: its runner (loaded, warmed), the ASGI app, the limits resolved against the
    runner, and the model's name in every URL."""

    runner: Runner
    app: Any
    limits: ServeLimits
    model_name: str

    def describe(self, host: str, port: int) -> str:
        """The line ``serve`` prints: which file, backend and precision, and where."""
        return (f"serving {self.runner.artifact} ({self.runner.name}, {self.runner.precision}) "
                f"on http://{host}:{port}/v2")

    def run(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        """Listen on ``host:port`` until stopped (SIGINT, SIGTERM).

        Raises:
            DeployError: the server did not start.
        """
        from .connections import http_server

        server = http_server(self.app, host, port)
        server.run()
        if not server.started:
            raise DeployError(f"the server on {host}:{port} did not start (the reason is logged above)")


def prepare(artifact: str | os.PathLike[str] | Runner, *, model_name: str | None = None,
            limits: ServeLimits | None = None, backend: str = "auto", device: str | None = None,
            threads: int | None = None) -> Service:
    """A :class:`Service` for ``artifact``: loaded as :func:`resnet_deploy.target.runtime.load` loads it
    (``auto``: tune's plan), the limits checked against the runner, the app built, the runner warmed.

    Args:
        artifact: an artifact file (its manifest beside it), or a runner already loaded.
        model_name: the model's name in the URLs (default: the artifact's stem).
        limits: batching, queue and request limits (default :class:`ServeLimits`: the profile's MAX batch,
            at most 32).
        backend, device, threads: as ``runtime.load`` takes them (ignored for a runner).

    Returns:
        The service, not yet listening.

    Raises:
        DeployError: the serve extra is missing, the artifact cannot be loaded, or a limit is out of range.
    """
    create_app = _app_factory()
    if isinstance(artifact, Runner):
        runner = artifact
    else:
        from ..target.runtime import load

        runner = load(artifact, backend=backend, device=device, threads=threads)
    name = model_name or split_artifact_name(runner.artifact or "model")[0]
    app = create_app(runner, model_name=name, limits=limits)
    runner.warmup()
    return Service(runner, app, app.state.limits, name)


def serve(artifact: str | os.PathLike[str] | Runner, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          announce: Callable[[str], None] | None = None, **options: Any) -> None:
    """Serve ``artifact`` over the Open Inference Protocol on ``host:port`` until stopped.

    Args:
        artifact: an artifact file or a loaded runner, as :func:`prepare` takes it.
        host, port: where to listen (checked before the model is loaded).
        announce: called with each line to show (how ``auto`` chose, where it serves); None: silent.
        **options: :func:`prepare`'s keywords (model_name, limits, backend, device, threads).

    Raises:
        DeployError: the address cannot be listened on, or as :func:`prepare` and :meth:`Service.run`.
    """
    _app_factory()  # a missing extra first, before the address and the model
    within("--port", port, 1, 65535)
    check_listen(host, port)
    service = prepare(artifact, **options)
    for line in (service.runner.selection, service.describe(host, port)):
        if line and announce:
            announce(line)
    service.run(host, port)


def _app_factory() -> Callable[..., Any]:
    """:func:`.app.create_app`, or a one-line error naming the serve extra where it is not installed."""
    try:
        import pydantic  # noqa: F401  (the request schema)
        import uvicorn  # noqa: F401  (the HTTP server)

        from .app import create_app
    except ImportError:
        raise DeployError("serve needs uvicorn, starlette and pydantic: pip install 'resnet-deploy[serve]'") from None
    return create_app


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
