"""The Open Inference Protocol's REST endpoints for one model (Starlette), over the dynamic batcher of
:mod:`.batcher`. Imported by ``serve`` alone: Starlette is the serve extra's."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..backends.base import Runner
from ..backends.registry import BACKENDS
from ..environment import package_version
from ..errors import ArgumentError
from ..target.predict import class_names
from .batcher import DynamicBatcher
from .codec import BINARY_HEADER, build_infer_response, parse_infer_request, tensor_meta
from .limits import MODEL_NAME, RequestError, ServeLimits


class _Endpoints:
    """The protocol's endpoints for one model, over one dynamic batcher."""

    def __init__(self, runner: Runner, model_name: str, limits: ServeLimits) -> None:
        self.runner, self.model_name, self.limits = runner, model_name, limits
        self.platform = BACKENDS[runner.backend].platform if runner.backend else "unknown"
        self.batcher = DynamicBatcher(runner, max_batch=limits.max_batch, max_delay=limits.max_delay_ms / 1e3,
                                      queue_size=limits.queue_size, workers=limits.workers)
        self.ready_now = False
        self.labels = class_names(runner.manifest.num_classes) if runner.manifest else None  # as predict names them

    @staticmethod
    def answering_errors(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` with a refused request (RequestError) answered as ``{"error": ...}`` and its status."""
        @functools.wraps(handler)
        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestError as exc:
                return JSONResponse({"error": str(exc)}, status_code=exc.status)

        return guarded

    def check_model(self, request: Request) -> None:
        name = request.path_params["name"]
        version = request.path_params.get("version")
        if name != self.model_name or version not in (None, "1"):
            raise RequestError(f"unknown model {name!r}" + (f" version {version}" if version else "") +
                               f"; this server serves {self.model_name!r} version 1", 404)

    async def live(self, _: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, _: Request) -> Response:
        return JSONResponse({"ready": self.ready_now}, status_code=200 if self.ready_now else 503)

    async def server_metadata(self, _: Request) -> Response:
        return JSONResponse({"name": "resnet-deploy", "version": package_version("resnet-deploy") or "unknown",
                             "extensions": ["binary_tensor_data", "classification"]})

    async def model_metadata(self, request: Request) -> Response:
        self.check_model(request)
        metadata = {"name": self.model_name, "versions": ["1"], "platform": self.platform,
                    "inputs": [tensor_meta(t) for t in self.runner.inputs],
                    "outputs": [tensor_meta(t) for t in self.runner.outputs]}
        if self.runner.manifest is not None:  # how a client turns an image into the input tensor
            metadata["parameters"] = {"preprocess": self.runner.manifest.preprocess.to_dict()}
        if self.runner.backend is not None:  # what runs it, and how --backend auto chose it
            metadata.setdefault("parameters", {})["configuration"] = {
                "artifact": Path(self.runner.artifact).name, "backend": self.runner.backend, "runner": self.runner.name,
                "precision": self.runner.precision, "selection": self.runner.selection}
        return JSONResponse(metadata)

    async def model_ready(self, request: Request) -> Response:
        self.check_model(request)
        return JSONResponse({"name": self.model_name, "ready": self.ready_now},
                            status_code=200 if self.ready_now else 503)

    async def read_body(self, request: Request) -> bytearray:
        """The body, refused (413) past the size limit and (408) where it stalls between two chunks."""
        limit, timeout = self.limits.max_request_bytes, self.limits.read_timeout_s
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestError(f"request of {declared} bytes is over the {limit}-byte limit", 413)
        if request.headers.get("content-encoding", "identity") != "identity":
            raise RequestError("compressed requests are not supported")
        body = bytearray()
        chunks = request.stream().__aiter__()
        while True:
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), timeout)
            except StopAsyncIteration:
                return body
            except ClientDisconnect:  # nobody to answer: the request ends here, its place in the queue freed
                raise RequestError("the client disconnected before sending the whole body") from None
            except asyncio.TimeoutError:
                raise RequestError(f"the request body stalled for {timeout:g} s", 408) from None
            body += chunk
            if len(body) > limit:
                raise RequestError(f"request is over the {limit}-byte limit", 413)

    async def discard_body(self, request: Request) -> None:
        """Read and drop what is left of a refused request's body (up to the size limit, within the stall
        timeout), after its answer has been sent."""
        received, limit = 0, self.limits.max_request_bytes
        with contextlib.suppress(Exception):
            chunks = request.stream().__aiter__()
            while received <= limit:
                received += len(await asyncio.wait_for(chunks.__anext__(), self.limits.read_timeout_s))

    async def infer(self, request: Request) -> Response:
        self.check_model(request)
        try:  # before the body is read: an overloaded server refuses in microseconds, not after parsing it
            admission = self.batcher.admit()
        except RequestError as exc:  # the body is then read and dropped, so the client reads the 503, not a reset
            return JSONResponse({"error": str(exc)}, status_code=exc.status, headers={"connection": "close"},
                                background=BackgroundTask(self.discard_body, request))
        try:
            body = await self.read_body(request)
            # parsed and answered off the event loop: a large JSON body takes seconds, and health checks wait
            batch, parsed = await run_in_threadpool(parse_infer_request, body, request.headers.get(BINARY_HEADER),
                                                    self.runner, self.limits.max_batch)
            del body
            outputs, batch_size = await self.batcher.submit(batch, admission)
        finally:
            admission.leave()
        content, headers = await run_in_threadpool(build_infer_response, parsed, outputs,
                                                   model_name=self.model_name, batch_size=batch_size,
                                                   labels=self.labels)
        return Response(content, headers=headers)

    async def metrics(self, _: Request) -> Response:
        s = self.batcher.stats
        lines = [
            "# TYPE resnet_deploy_requests_total counter", f"resnet_deploy_requests_total {s.requests}",
            "# TYPE resnet_deploy_batches_total counter", f"resnet_deploy_batches_total {s.batches}",
            "# TYPE resnet_deploy_batched_images_total counter", f"resnet_deploy_batched_images_total {s.images}",
            "# TYPE resnet_deploy_rejected_total counter",
            f'resnet_deploy_rejected_total{{reason="overload"}} {s.rejected_overload}',
            f'resnet_deploy_rejected_total{{reason="failed"}} {s.failed}',
            "# TYPE resnet_deploy_largest_batch gauge", f"resnet_deploy_largest_batch {s.largest_batch}",
            "# TYPE resnet_deploy_queue_depth gauge", f"resnet_deploy_queue_depth {self.batcher.waiting}",
            "# TYPE resnet_deploy_deepest_queue gauge", f"resnet_deploy_deepest_queue {s.deepest_queue}",
        ]
        return PlainTextResponse("\n".join(lines) + "\n")

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Starlette) -> Any:
        await self.batcher.start()
        self.ready_now = True
        try:
            yield
        finally:
            self.ready_now = False
            await self.batcher.stop()


async def _json_http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own refusals (a path no endpoint serves: 404; a method an endpoint does not take: 405) in the
    protocol's error form, ``{"error": ...}``, which tritonclient parses (plain text read as a parse error)."""
    reason = {404: f"{request.url.path} is not an endpoint of this server",
              405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return JSONResponse({"error": reason}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def create_app(runner: Runner, *, model_name: str, limits: ServeLimits | None = None) -> Any:
    """The ASGI application (Starlette) serving ``runner`` as model ``model_name``.

    Args:
        runner: a runner from :func:`resnet_deploy.target.runtime.load` (its backend names the platform).
        model_name: the model's name in every URL.
        limits: batching, queue and request limits (default :class:`ServeLimits`).

    Returns:
        The Starlette app; ``app.state.batcher`` is its :class:`DynamicBatcher`, ``app.state.limits`` the
        limits resolved against the runner.

    Raises:
        ArgumentError: a bad model name or limit.
    """
    if not MODEL_NAME.fullmatch(model_name):
        raise ArgumentError(f"--model-name {model_name!r}: a model name is letters, digits, '_', '.' and '-' "
                            "(it is part of every URL of the model)")
    limits = (limits or ServeLimits()).for_runner(runner)
    endpoints = _Endpoints(runner, model_name, limits)
    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    paths = [
        ("/v2/health/live", endpoints.live, "GET"), ("/v2/health/ready", endpoints.ready, "GET"),
        ("/v2", endpoints.server_metadata, "GET"), ("/metrics", endpoints.metrics, "GET"),
        (model, endpoints.model_metadata, "GET"), (versioned, endpoints.model_metadata, "GET"),
        (model + "/ready", endpoints.model_ready, "GET"), (versioned + "/ready", endpoints.model_ready, "GET"),
        (model + "/infer", endpoints.infer, "POST"), (versioned + "/infer", endpoints.infer, "POST"),
    ]
    routes = [Route(path, endpoints.answering_errors(handler), methods=[method]) for path, handler, method in paths]
    app = Starlette(routes=routes, lifespan=endpoints.lifespan,
                    exception_handlers={HTTPException: _json_http_error})
    app.state.batcher, app.state.limits = endpoints.batcher, limits
    return app
