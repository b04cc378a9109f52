"""The Open Inference Protocol's REST endpoints (Starlette), with Triton's model configuration, statistics and
repository extensions, over one :class:`~.served.ServedModel`. Imported by ``serve`` alone: Starlette is the
serve extra's."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..backends.base import Runner
from ..errors import ArgumentError
from .codec import BINARY_HEADER, build_infer_response, compressed, decompressed, parse_infer_request
from .limits import MODEL_NAME, RequestError, ServeLimits
from .served import ServedModel


INDEX_BODY_BYTES = 64 << 10  # a repository index request holds one flag


class _Endpoints:
    """The protocol's REST endpoints for one :class:`ServedModel`."""

    def __init__(self, model: ServedModel) -> None:
        self.model, self.limits = model, model.limits

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
        self.model.check(request.path_params["name"], request.path_params.get("version"))

    async def live(self, _: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, _: Request) -> Response:
        return JSONResponse({"ready": self.model.ready}, status_code=200 if self.model.ready else 503)

    async def server_metadata(self, _: Request) -> Response:
        return JSONResponse(self.model.server_metadata())

    async def model_metadata(self, request: Request) -> Response:
        self.check_model(request)
        return JSONResponse(self.model.metadata())

    async def model_ready(self, request: Request) -> Response:
        self.check_model(request)
        return JSONResponse({"name": self.model.name, "ready": self.model.ready},
                            status_code=200 if self.model.ready else 503)

    async def model_config(self, request: Request) -> Response:
        self.check_model(request)
        return JSONResponse(self.model.config())

    async def statistics(self, request: Request) -> Response:
        """``/v2/models/stats`` (every model: this one) or ``/v2/models/NAME[/versions/V]/stats``."""
        if "name" in request.path_params:
            self.check_model(request)
        return JSONResponse(self.model.statistics())

    async def repository_index(self, request: Request) -> Response:
        """Triton's ``POST /v2/repository/index`` (body ``{"ready": true}`` lists ready models only). Its body
        is a flag: read up to :data:`INDEX_BODY_BYTES`, so parsing it on the event loop is microseconds."""
        body = decompressed(await self.read_body(request, INDEX_BODY_BYTES),
                            request.headers.get("content-encoding", ""), INDEX_BODY_BYTES)
        try:
            asked = json.loads(body) if body.strip() else {}
        except (ValueError, RecursionError):
            asked = None
        if not isinstance(asked, dict) or not isinstance(asked.get("ready", False), bool):
            raise RequestError('the repository index request is not a JSON object like {"ready": true}')
        return JSONResponse(self.model.index(ready_only=asked.get("ready", False)))

    async def read_body(self, request: Request, limit: int | None = None) -> bytearray:
        """The body as sent (compressed or not), refused (413) past ``limit`` (default: the request size limit)
        and (408) where it stalls between two chunks."""
        limit, timeout = limit or self.limits.max_request_bytes, self.limits.read_timeout_s
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise RequestError(f"request of {declared} bytes is over the {limit}-byte limit", 413)
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
            admission = self.model.batcher.admit()
        except RequestError as exc:  # the body is then read and dropped, so the client reads the 503, not a reset
            return JSONResponse({"error": str(exc)}, status_code=exc.status, headers={"connection": "close"},
                                background=BackgroundTask(self.discard_body, request))
        async with self.model.answering(admission):
            body = await self.read_body(request)
            # parsed and answered off the event loop: a large JSON body takes seconds, and health checks wait
            batch, parsed = await run_in_threadpool(self._parse, body, request.headers)
            del body
            outputs, batch_size = await self.model.batcher.submit(batch, admission)
            content, headers = await run_in_threadpool(self._response, parsed, outputs, batch_size,
                                                       request.headers.get("accept-encoding"))
        return Response(content, headers=headers)

    def _parse(self, body: bytearray, headers: Any) -> tuple[Any, Any]:
        """The batch and the request of a body as sent (gzip or deflate: decompressed within the size limit)."""
        body = decompressed(body, headers.get("content-encoding", ""), self.limits.max_request_bytes)
        return parse_infer_request(body, headers.get(BINARY_HEADER), self.model.runner, self.limits.max_batch)

    def _response(self, parsed: Any, outputs: dict[str, Any], batch_size: int,
                  accept_encoding: str | None) -> tuple[bytes, dict[str, str]]:
        """The response's body and headers, compressed where the client accepts it."""
        content, headers = build_infer_response(parsed, outputs, model_name=self.model.name, batch_size=batch_size,
                                                labels=self.model.labels)
        content, coding = compressed(content, accept_encoding)
        headers["vary"] = "accept-encoding"  # a cache keeps the answer per coding
        return content, {**headers, "content-encoding": coding} if coding else headers

    async def metrics(self, _: Request) -> Response:
        return PlainTextResponse(self.model.batcher.stats.to_prometheus(self.model.batcher.waiting))

    @contextlib.asynccontextmanager
    async def lifespan(self, _: Starlette) -> Any:
        await self.model.start()
        try:
            yield
        finally:
            await self.model.stop()


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
    served = ServedModel(runner, model_name, limits)
    endpoints = _Endpoints(served)
    paths = [
        ("/v2/health/live", endpoints.live, "GET"), ("/v2/health/ready", endpoints.ready, "GET"),
        ("/v2", endpoints.server_metadata, "GET"), ("/metrics", endpoints.metrics, "GET"),
        ("/v2/models/stats", endpoints.statistics, "GET"),
        ("/v2/repository/index", endpoints.repository_index, "POST"),
    ]
    for model in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        paths += [(model, endpoints.model_metadata, "GET"), (model + "/ready", endpoints.model_ready, "GET"),
                  (model + "/config", endpoints.model_config, "GET"), (model + "/stats", endpoints.statistics, "GET"),
                  (model + "/infer", endpoints.infer, "POST")]
    routes = [Route(path, endpoints.answering_errors(handler), methods=[method]) for path, handler, method in paths]
    app = Starlette(routes=routes, lifespan=endpoints.lifespan,
                    exception_handlers={HTTPException: _json_http_error})
    app.state.batcher, app.state.limits, app.state.model = served.batcher, limits, served
    return app
