"""The one model `serve` serves, apart from any transport: its metadata, Triton's model config, statistics and
repository index as values, and inference through the dynamic batcher. The REST endpoints (:mod:`.app`) and
the gRPC service (:mod:`.grpc_service`) are thin layers over it, so both answer alike and share one batcher, one
queue bound and one set of counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ..backends.base import Runner
from ..backends.registry import BACKENDS
from ..environment import package_version
from ..errors import first_line
from ..target.predict import class_names
from .batcher import Admission, DynamicBatcher
from .codec import MODEL_VERSION, tensor_meta
from .limits import RequestError, ServeLimits
from .triton import TritonOptions, config_message, to_json

EXTENSIONS = ["binary_tensor_data", "classification", "statistics", "model_configuration", "model_repository"]


class ServedModel:
    """One model behind one dynamic batcher: what every endpoint of every transport answers from."""

    def __init__(self, runner: Runner, name: str, limits: ServeLimits) -> None:
        self.runner, self.name, self.limits = runner, name, limits
        self.backend = BACKENDS.get(runner.backend) if runner.backend else None
        self.platform = self.backend.platform if self.backend else "unknown"
        self.batcher = DynamicBatcher(runner, max_batch=limits.max_batch, max_delay=limits.max_delay_ms / 1e3,
                                      queue_size=limits.queue_size, workers=limits.workers)
        self.ready = False
        self.fronts: list[Any] = []  # transports beside the ASGI app's (gRPC): started and stopped with the batcher
        self.start_failure: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.labels = class_names(runner.manifest.num_classes) if runner.manifest else None  # as predict names them

    async def start(self) -> None:
        """Start the batcher, then every front; ready once all listen. A front that cannot start stops what
        started before it, and its error is raised (and kept in :attr:`start_failure` for the host's message).
        """
        self._loop = asyncio.get_running_loop()
        await self.batcher.start()
        started = []
        try:
            for front in self.fronts:
                await front.start()
                started.append(front)
        except BaseException as exc:
            self.start_failure = first_line(exc)
            for front in reversed(started):
                await front.stop()
            await self.batcher.stop()
            raise
        self.ready = True

    def shutting_down(self) -> None:
        """The host began to stop (a signal): not ready from now on, and the fronts refuse new calls while those
        in flight are answered. Safe from a signal handler or another thread."""
        self.ready = False
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop_fronts_soon)

    def _stop_fronts_soon(self) -> None:
        for front in self.fronts:
            asyncio.ensure_future(front.stop())

    async def stop(self) -> None:
        """Not ready, the fronts stopped (their requests in flight answered), then the batcher."""
        self.ready = False
        for front in reversed(self.fronts):
            await front.stop()
        await self.batcher.stop()

    def check(self, name: str, version: str | None = None) -> None:
        """Refuse (404) a model name or version this server does not serve; ``version`` None or "" is any."""
        if name != self.name or version not in (None, "", MODEL_VERSION):
            raise RequestError(f"unknown model {name!r}" + (f" version {version}" if version else "") +
                               f"; this server serves {self.name!r} version {MODEL_VERSION}", 404)

    @staticmethod
    def server_metadata() -> dict[str, Any]:
        """The protocol's server metadata: name, version and the extensions served."""
        return {"name": "resnet-deploy", "version": package_version("resnet-deploy") or "unknown",
                "extensions": EXTENSIONS}

    def metadata(self) -> dict[str, Any]:
        """The protocol's model metadata, with how a client prepares an image and what runs the model."""
        metadata: dict[str, Any] = {
            "name": self.name, "versions": [MODEL_VERSION], "platform": self.platform,
            "inputs": [tensor_meta(t) for t in self.runner.inputs],
            "outputs": [tensor_meta(t) for t in self.runner.outputs]}
        if self.runner.manifest is not None:  # how a client turns an image into the input tensor
            metadata["parameters"] = {"preprocess": self.runner.manifest.preprocess.to_dict()}
        if self.runner.backend is not None:  # what runs it, and how --backend auto chose it
            metadata.setdefault("parameters", {})["configuration"] = {
                "artifact": Path(self.runner.artifact).name, "backend": self.runner.backend, "runner": self.runner.name,
                "precision": self.runner.precision, "selection": self.runner.selection}
        return metadata

    def config(self) -> dict[str, Any]:
        """Triton's model config (JSON form) of what serve runs: the batcher's max batch, delay and queue bound,
        its workers as instances, from the description the Triton repository writer renders
        (:func:`.triton.config_message`)."""
        options = TritonOptions(max_batch=self.limits.max_batch, queue_delay_us=round(self.limits.max_delay_ms * 1000),
                                instances=self.limits.workers,
                                kind="gpu" if self.runner.device.startswith("cuda") else "cpu")
        nhwc = bool(self.runner.manifest and self.runner.manifest.embedded_preprocess)
        message = config_message(self.name, self.backend, (self.runner.inputs[0], self.runner.outputs), options,
                                 nhwc=nhwc, labels=self.labels is not None)
        message.pop("default_model_filename", None)  # a repository's file name; serve runs the artifact itself
        message["dynamic_batching"]["default_queue_policy"] = {"max_queue_size": self.limits.queue_size}
        return to_json(message)

    def statistics(self) -> dict[str, Any]:
        """Triton's statistics answer for this model (``model_stats``: one entry, version 1)."""
        return {"model_stats": [self.batcher.stats.to_triton(self.name, MODEL_VERSION)]}

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Triton's repository index: this model, its version and state."""
        if ready_only and not self.ready:
            return []
        entry = {"name": self.name, "version": MODEL_VERSION, "state": "READY" if self.ready else "UNAVAILABLE"}
        return [entry] if self.ready else [{**entry, "reason": "the server is starting or stopping"}]

    @contextlib.asynccontextmanager
    async def answering(self, admission: Admission) -> AsyncIterator[None]:
        """The life of an admitted request (:meth:`DynamicBatcher.admit`, on arrival: a full queue is a 503
        before anything is read): its place in the queue given back however it ends, and the request counted
        as a success or a failure in the statistics by how the block ends."""
        started, ok = time.perf_counter_ns(), False
        try:
            yield
            ok = True
        finally:
            admission.leave()
            self.batcher.stats.answered(started, ok)
