"""An Open Inference Protocol (KServe v2) HTTP server for one artifact, with dynamic batching.

The REST endpoints Triton and KServe speak, so a ``tritonclient.http`` client does not care which
one answers: ``/v2/health/live``, ``/v2/health/ready``, ``/v2``, ``/v2/models/NAME[/versions/V]``,
``.../ready`` and ``.../infer`` with JSON tensors and the binary tensor data extension.

Concurrent requests wait up to ``max_delay`` in a bounded queue and are run as one batch of at
most ``max_batch`` images; a full queue answers 503 at once instead of growing memory. Each
response says in ``parameters.server_batch_size`` how many images shared its runner call, and
``/metrics`` counts requests, batches and rejections (Prometheus text format).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backends.base import Runner
from ..errors import DeployError, first_line, within

if TYPE_CHECKING:  # pydantic is the serve extra's: the CLI imports this module's defaults without it
    from .protocol import InferRequest

DEFAULT_MAX_DELAY_MS = 2.0
DEFAULT_QUEUE = 64
DEFAULT_WORKERS = 1
DEFAULT_REQUEST_MB = 64.0
MAX_DELAY_MS = 10_000.0  # a batch waiting longer than this is a misconfiguration, not batching
MAX_QUEUE = 100_000  # queued requests before 503
MAX_WORKERS = 64
MAX_REQUEST_MB = 4096.0
DEFAULT_READ_TIMEOUT_S = 30.0  # a request body that stalls this long is answered 408 and its connection freed

BINARY_HEADER = "Inference-Header-Content-Length"
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a path segment of every model URL, as Triton's names
_NUMPY_TO_OIP = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "uint8": "UINT8"}


class RequestError(Exception):
    """A request the server refuses: ``status`` is the HTTP code (400, 404, 413, 503)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Admission:
    """A request's place in the queue, from its arrival (before its body is read) until a worker takes it
    into a batch, or it fails first: what ``--queue`` bounds."""

    def __init__(self, batcher: DynamicBatcher) -> None:
        self._batcher, self._holding = batcher, True

    def leave(self) -> None:
        """Give the place back (once: a worker taking the request, or the request failing before)."""
        if self._holding:
            self._holding = False
            self._batcher.waiting -= 1


@dataclass
class _Pending:
    batch: np.ndarray
    future: asyncio.Future
    admission: Admission


@dataclass
class BatchStats:
    requests: int = 0
    batches: int = 0
    images: int = 0
    rejected_overload: int = 0
    failed: int = 0
    largest_batch: int = 0
    deepest_queue: int = 0  # the most requests ever waiting at once (never over the queue bound)
    batch_sizes: collections.Counter = field(default_factory=collections.Counter)


class DynamicBatcher:
    """Queues requests and runs them together: a batch closes when it would exceed ``max_batch``
    images, ``max_delay`` seconds after its first request arrived, or before a request whose images
    are of another size. At most ``queue_size`` requests wait at once (from admission, before their
    bodies are read, until a worker takes them): one more is refused (503) at once."""

    def __init__(self, runner: Runner, *, max_batch: int, max_delay: float, queue_size: int, workers: int = 1) -> None:
        self.runner, self.max_batch, self.max_delay = runner, max_batch, max_delay
        self.queue_size, self.workers = queue_size, workers
        self.pending: collections.deque[_Pending] = collections.deque()
        self.waiting = 0  # admitted and not yet taken into a batch
        self.stats = BatchStats()
        self._tasks: list[asyncio.Task] = []
        self._executor: ThreadPoolExecutor | None = None
        self._condition: asyncio.Condition | None = None

    async def start(self) -> None:
        self._condition = asyncio.Condition()
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="runner")
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for item in self.pending:
            if not item.future.done():
                item.future.set_exception(RequestError("server shutting down", 503))
        if self._executor:
            self._executor.shutdown(wait=True)

    def admit(self) -> Admission:
        """A place in the queue for a request that has just arrived, or a 503 at once where ``queue_size``
        requests are waiting. No await between the check and the count: the bound holds exactly."""
        if self.waiting >= self.queue_size:
            self.stats.rejected_overload += 1
            raise RequestError(f"server overloaded: {self.waiting} requests already waiting", 503)
        self.waiting += 1
        self.stats.deepest_queue = max(self.stats.deepest_queue, self.waiting)
        return Admission(self)

    async def submit(self, batch: np.ndarray, admission: Admission | None = None) -> tuple[dict[str, np.ndarray], int]:
        """The runner's outputs for ``batch`` and the size of the batch it ran in (admitted here unless the
        request was admitted on arrival)."""
        admission = admission or self.admit()
        self.stats.requests += 1
        item = _Pending(batch, asyncio.get_running_loop().create_future(), admission)
        self.pending.append(item)
        async with self._condition:
            self._condition.notify()
        return await item.future

    async def _take(self) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        async with self._condition:
            await self._condition.wait_for(lambda: self.pending)
            items = [self._pop()]
        count, deadline = len(items[0].batch), loop.time() + self.max_delay
        while count < self.max_batch:
            async with self._condition:
                if not self.pending:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    # asyncio's own TimeoutError: the built-in one only from Python 3.11 on
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._condition.wait_for(lambda: self.pending), remaining)
                    if not self.pending:
                        break
                following = self.pending[0].batch
                if count + len(following) > self.max_batch or following.shape[1:] != items[0].batch.shape[1:]:
                    break  # full, or an image of another size (a --dynamic-hw model): the next batch's
                item = self._pop()
            items.append(item)
            count += len(item.batch)
        return items

    def _pop(self) -> _Pending:
        item = self.pending.popleft()
        item.admission.leave()
        return item

    async def _work(self) -> None:
        """Take a batch, run it, answer its requests; forever. Whatever goes wrong with one batch is that
        batch's requests' answer: the worker itself never dies (a dead worker hangs every later request
        while the server still says it is ready)."""
        loop = asyncio.get_running_loop()
        while True:
            items = await self._take()
            sizes = [len(i.batch) for i in items]
            total = sum(sizes)
            try:
                batch = np.concatenate([i.batch for i in items]) if len(items) > 1 else items[0].batch
                outputs = await loop.run_in_executor(self._executor, self.runner.run_padded, batch)
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the failure
                self.stats.failed += len(items)
                error = RequestError(first_line(exc),
                                     400 if isinstance(exc, DeployError) else 500)
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            self.stats.batches += 1
            self.stats.images += total
            self.stats.largest_batch = max(self.stats.largest_batch, total)
            self.stats.batch_sizes[total] += 1
            start = 0
            for item, size in zip(items, sizes):
                if not item.future.done():
                    item.future.set_result(({k: v[start: start + size] for k, v in outputs.items()}, total))
                start += size


def tensor_meta(spec: Any) -> dict[str, Any]:
    return {"name": spec.name, "datatype": _NUMPY_TO_OIP.get(spec.dtype, spec.dtype.upper()),
            "shape": [d if isinstance(d, int) else -1 for d in spec.shape]}


def parse_infer_request(body: bytes | bytearray, header_length: str | None, runner: Runner, max_batch: int) -> tuple[
        np.ndarray, InferRequest]:
    """The input batch of an inference request (JSON or binary tensor data) and its JSON header, checked
    against the protocol's schema (:mod:`.protocol`) and then against the model. JSON ``data`` is
    dropped from the returned request once it is an array: its Python floats are 8x the array's size."""
    from .protocol import InferRequest, ValidationError, describe_error

    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise RequestError(f"{BINARY_HEADER} must be an integer") from None
        if not 0 < split <= len(body):
            raise RequestError(f"{BINARY_HEADER} {split} does not fit a body of {len(body)} bytes")
        view = memoryview(body)  # slices without copies of a body that may be hundreds of MB
        head, binary = view[:split], view[split:]
    else:
        head, binary = body, b""
    try:
        request = InferRequest.model_validate_json(bytes(head) if isinstance(head, memoryview) else head)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise RequestError(f"the request is not valid JSON: {describe_error(exc)}") from None
        if any(e["loc"][:1] == ("inputs",) and len(e["loc"]) == 1 for e in exc.errors()):
            raise RequestError(f"the request needs \"inputs\": one tensor named {runner.input_name!r}") from None
        raise RequestError(f"invalid request: {describe_error(exc)}") from None
    if len(request.inputs) != 1:
        raise RequestError(f"the request needs \"inputs\": one tensor named {runner.input_name!r}")
    tensor = request.inputs[0]
    if tensor.name != runner.input_name:
        raise RequestError(f"unknown input {tensor.name!r}; the model's input is {runner.input_name!r}")
    dtype = runner.input_dtype  # float32 images, or uint8 pixels where the artifact embeds its preprocessing
    datatype = _NUMPY_TO_OIP[dtype.name]
    if tensor.datatype != datatype:
        raise RequestError(f"input {runner.input_name!r} has datatype {tensor.datatype}; the model takes {datatype}")
    shape, expected = tensor.shape, runner.inputs[0].shape
    if (len(shape) != len(expected) or any(d < 1 for d in shape)
            or any(isinstance(e, int) and e != d for e, d in zip(expected[1:], shape[1:]))):
        raise RequestError(f"input shape {shape} does not match the model's {tensor_meta(runner.inputs[0])['shape']}")
    if not 1 <= shape[0] <= max_batch:
        raise RequestError(f"batch size {shape[0]} is outside 1 to {max_batch}, the server's max batch")
    count = int(np.prod(shape))
    declared = tensor.parameters.binary_data_size if tensor.parameters else None
    if declared is not None:
        if declared != count * dtype.itemsize or len(binary) != declared:
            raise RequestError(f"binary input of {len(binary)} bytes (declared {declared}) does not hold "
                               f"{count} {datatype} values of shape {shape}")
        array = np.frombuffer(binary, dtype=dtype.newbyteorder("<")).reshape(shape)
    else:
        if tensor.data is None:
            raise RequestError(f"input {runner.input_name!r} has neither \"data\" nor binary data")
        array = _json_values(tensor.data, dtype, runner.input_name)
        if array.size != count:
            raise RequestError(f"input {runner.input_name!r} has {array.size} values; shape {shape} needs {count}")
        array, tensor.data = array.reshape(shape).astype(dtype), None
    if not np.isfinite(array).all():  # NaN in, NaN out, and a JSON answer no client can parse
        raise RequestError(f"input {runner.input_name!r} holds NaN or infinite values (or values beyond float32)")
    return np.ascontiguousarray(array, dtype=dtype), request


def _json_values(data: list[Any], dtype: np.dtype, name: str) -> np.ndarray:
    """A JSON tensor's values as float32, refused unless they are numbers of the datatype: JSON numbers for
    FP32 (not strings, not booleans); for UINT8 pixels, integers 0 to 255 as JSON writes integers ("7", true
    and 255.0000001 are not pixels)."""
    if dtype == np.uint8:
        from .protocol import check_integers

        if not check_integers(data):
            raise RequestError(f"input {name!r} holds values that are not pixels (JSON integers 0 to 255)")
    try:
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused by the caller
            raw = np.asarray(data)
            array = raw.astype(np.float32) if raw.dtype.kind in "iuf" else None
    except (TypeError, ValueError, RecursionError, OverflowError):
        array = None
    if array is None:
        raise RequestError(f"input {name!r} \"data\" is not a list of numbers")
    if dtype == np.uint8 and array.size and (array.min() < 0 or array.max() > 255):
        raise RequestError(f"input {name!r} holds values that are not pixels (JSON integers 0 to 255)")
    return array


def build_infer_response(request: InferRequest, outputs: dict[str, np.ndarray], *, model_name: str,
                         batch_size: int) -> tuple[bytes, dict[str, str]]:
    """The response body and headers: JSON, or JSON then binary tensors where the client asked for them."""
    from .protocol import RequestedOutput

    default_binary = bool(request.parameters and request.parameters.binary_data_output)
    wanted = request.outputs if request.outputs is not None else [RequestedOutput(name=name) for name in outputs]
    response_outputs, chunks = [], []
    for spec in wanted:
        if spec.name not in outputs:
            raise RequestError(f"unknown output {spec.name!r}; the model's outputs are {list(outputs)}")
        array = np.ascontiguousarray(outputs[spec.name], dtype=np.float32)
        entry: dict[str, Any] = {"name": spec.name, "datatype": "FP32", "shape": list(array.shape)}
        binary = spec.parameters.binary_data if spec.parameters and spec.parameters.binary_data is not None \
            else default_binary
        if binary:
            data = array.astype("<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = array.ravel().tolist()
        response_outputs.append(entry)
    response = {"model_name": model_name, "model_version": "1", "outputs": response_outputs,
                "parameters": {"server_batch_size": batch_size}}
    if request.id is not None:
        response["id"] = request.id
    try:
        head = json.dumps(response, allow_nan=False).encode()
    except ValueError:
        raise RequestError("the model produced NaN or infinite outputs, which JSON cannot carry", 500) from None
    if not chunks:
        return head, {"content-type": "application/json"}
    return head + b"".join(chunks), {"content-type": "application/octet-stream", BINARY_HEADER: str(len(head))}


@dataclass
class ServeLimits:
    """What the server accepts and how long it waits (the serve command's options, checked)."""

    max_batch: int = 8
    max_delay_ms: float = DEFAULT_MAX_DELAY_MS
    queue_size: int = DEFAULT_QUEUE
    workers: int = DEFAULT_WORKERS
    max_request_mb: float = DEFAULT_REQUEST_MB
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S

    def check(self, runner: Runner) -> None:
        high = runner.batch_range[1] if runner.batch_range else self.max_batch
        within("--max-batch", self.max_batch, 1, high, "the artifact's profile")
        within("--max-delay-ms", self.max_delay_ms, 0, MAX_DELAY_MS)
        within("--queue", self.queue_size, 1, MAX_QUEUE)
        within("--workers", self.workers, 1, MAX_WORKERS, "runner calls in flight at once")
        if self.workers > 1 and not runner.concurrent:
            raise DeployError(f"--workers {self.workers}: {runner.name} cannot take calls at once "
                              f"({runner.serial_reason}): give --workers 1")
        within("--max-request-mb", self.max_request_mb, 0.001, MAX_REQUEST_MB)

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * (1 << 20))
