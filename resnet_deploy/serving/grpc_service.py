"""The Open Inference Protocol over gRPC (Triton's ``inference.GRPCInferenceService``, KServe v2's superset),
beside the REST endpoints on the same event loop: one :class:`~.served.ServedModel`, so one batcher, one queue
bound and one set of statistics for both. The messages are Triton's own, as its client ships them
(``tritonclient.grpc``: the ``grpc`` extra), so perf_analyzer and tritonclient read them unchanged.

Served: live, ready, model ready, server and model metadata, model config, statistics, repository index and
ModelInfer (``raw_input_contents``/``raw_output_contents``, or typed contents in). Anything else (streaming,
shared memory, repository load/unload, trace and log settings) answers UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from ..errors import DeployError
from .codec import MODEL_VERSION, OIP_DATATYPES, output_tensors, request_batch, tensor_bytes
from .limits import RequestError, address
from .served import ServedModel

# a refusal's HTTP status -> the gRPC status Triton answers with
STATUS_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
                408: grpc.StatusCode.DEADLINE_EXCEEDED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
                415: grpc.StatusCode.INVALID_ARGUMENT, 503: grpc.StatusCode.UNAVAILABLE}
# the typed contents a request may carry instead of raw bytes, by the input's datatype (FP16 has none: raw only)
CONTENTS = {OIP_DATATYPES[dtype]: field for dtype, field in
            (("float32", "fp32_contents"), ("uint8", "uint_contents"), ("int64", "int64_contents"))}
GRACE_S = 5.0  # requests in flight when the server stops get this long to be answered
MAX_MESSAGE_BYTES = 2**31 - 1  # gRPC's message lengths are C ints


class GrpcFront:
    """The gRPC server of one served model on ``host:port``, started and stopped with its batcher (a front of
    :attr:`ServedModel.fronts`)."""

    def __init__(self, model: ServedModel, host: str, port: int) -> None:
        self.model, self.address = model, address(host, port)
        self.server: Any = None
        self._stopping: asyncio.Future | None = None

    async def start(self) -> None:
        """Listen (on the running event loop, the batcher's).

        Raises:
            DeployError: the address cannot be listened on.
        """
        limit = min(self.model.limits.max_request_bytes, MAX_MESSAGE_BYTES)
        # so_reuseport 0: a second server on the same port fails to start instead of sharing its connections
        self.server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                               ("grpc.max_send_message_length", -1), ("grpc.so_reuseport", 0)])
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(self.model), self.server)
        try:
            bound = self.server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise DeployError(f"cannot listen for gRPC on {self.address}: {exc}") from None
        if not bound:
            raise DeployError(f"cannot listen for gRPC on {self.address}")
        await self.server.start()

    async def stop(self) -> None:
        """Refuse new calls and give those in flight :data:`GRACE_S` to be answered; again: wait for that."""
        if self.server is not None:
            self._stopping = self._stopping or asyncio.ensure_future(self.server.stop(GRACE_S))
            await asyncio.shield(self._stopping)


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Triton's gRPC inference service over one :class:`ServedModel`: each method the REST endpoint's answer
    as Triton's message."""

    def __init__(self, model: ServedModel) -> None:
        self.model = model

    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802 - the service's method names
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        return service_pb2.ServerReadyResponse(ready=self.model.ready)

    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        try:
            self.model.check(request.name, request.version)
        except RequestError:  # as Triton: an unknown model is not ready
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=self.model.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        return service_pb2.ServerMetadataResponse(**self.model.server_metadata())

    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        await _checked(self.model, request.name, request.version, context)
        metadata = self.model.metadata()
        return service_pb2.ModelMetadataResponse(
            name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"],
            inputs=[service_pb2.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["inputs"]],
            outputs=[service_pb2.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["outputs"]])

    async def ModelConfig(self, request: Any, context: Any) -> Any:  # noqa: N802
        await _checked(self.model, request.name, request.version, context)
        config = json_format.ParseDict(self.model.config(), model_config_pb2.ModelConfig())
        return service_pb2.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:  # noqa: N802
        if request.name:  # none: every model, as /v2/models/stats
            await _checked(self.model, request.name, request.version, context)
        return json_format.ParseDict(self.model.statistics(), service_pb2.ModelStatisticsResponse(),
                                     ignore_unknown_fields=True)

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:  # noqa: N802
        models = [service_pb2.RepositoryIndexResponse.ModelIndex(**entry)
                  for entry in self.model.index(ready_only=request.ready)]
        return service_pb2.RepositoryIndexResponse(models=models)

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        """One inference through the batcher the REST endpoint uses: admitted first (a full queue is
        UNAVAILABLE at once), parsed and answered off the event loop."""
        try:
            self.model.check(request.model_name, request.model_version)
            admission = self.model.batcher.admit()
            async with self.model.answering(admission):
                batch, parsed = await asyncio.to_thread(self._parse, request)
                outputs, batch_size = await self.model.batcher.submit(batch, admission)
                return await asyncio.to_thread(self._response, request.id, parsed, outputs, batch_size)
        except RequestError as exc:
            await context.abort(STATUS_CODES.get(exc.status, grpc.StatusCode.INTERNAL), str(exc))

    def _parse(self, message: Any) -> tuple[Any, Any]:
        """The batch and the request (the REST endpoint's schema) of a ModelInferRequest."""
        from .protocol import InferRequest, ValidationError, describe_error

        raw = list(message.raw_input_contents)
        if raw and len(raw) != len(message.inputs):
            raise RequestError(f"{len(raw)} raw input contents for {len(message.inputs)} inputs")
        inputs = [_input(tensor, raw[index] if index < len(raw) else None)
                  for index, tensor in enumerate(message.inputs)]
        outputs = [{"name": o.name, "parameters": _parameters(o.parameters)} for o in message.outputs]
        try:
            request = InferRequest.model_validate({"id": message.id or None, "inputs": inputs,
                                                   "outputs": outputs or None,
                                                   "parameters": _parameters(message.parameters)})
        except ValidationError as exc:
            raise RequestError(f"invalid request: {describe_error(exc)}") from None
        binary = raw[0] if raw else b""
        return request_batch(request, binary, self.model.runner, self.model.limits.max_batch), request

    def _response(self, request_id: str, parsed: Any, outputs: dict[str, Any], batch_size: int) -> Any:
        response = service_pb2.ModelInferResponse(model_name=self.model.name, model_version=MODEL_VERSION,
                                                  id=request_id)
        response.parameters["server_batch_size"].int64_param = batch_size
        for spec, datatype, array in output_tensors(parsed, outputs, self.model.labels):
            response.outputs.add(name=spec.name, datatype=datatype, shape=array.shape)
            response.raw_output_contents.append(tensor_bytes(datatype, array))
        return response


async def _checked(model: ServedModel, name: str, version: str, context: Any) -> None:
    """Abort the call (NOT_FOUND) where it names a model or version this server does not serve."""
    try:
        model.check(name, version)
    except RequestError as exc:
        await context.abort(STATUS_CODES[exc.status], str(exc))


def _parameters(parameters: Any) -> dict[str, Any]:
    """A protobuf map of InferParameter as plain values (each its one set field)."""
    return {key: getattr(value, value.WhichOneof("parameter_choice")) for key, value in parameters.items()
            if value.WhichOneof("parameter_choice")}


def _input(tensor: Any, raw: bytes | None) -> dict[str, Any]:
    """An input tensor in the REST schema: raw contents declared by their size, typed contents as data
    (their count checked against the shape before they become a list: a message of 16 M values is 1 GB
    of Python floats)."""
    entry = {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype,
             "parameters": _parameters(tensor.parameters)}
    typed = tensor.HasField("contents")
    if raw is not None and typed:
        raise RequestError(f"input {tensor.name!r} has both raw and typed contents: send one")
    declared = entry["parameters"].get("binary_data_size")  # HTTP's; the KServe SDK sends it over gRPC too
    if declared is not None and (raw is None or declared != len(raw)):
        raise RequestError(f"input {tensor.name!r}: binary_data_size {declared} is not the size of its raw "
                           f"contents ({'none' if raw is None else len(raw)} bytes)")
    if raw is not None:
        entry["parameters"]["binary_data_size"] = len(raw)
    elif typed and tensor.datatype in CONTENTS:
        values = getattr(tensor.contents, CONTENTS[tensor.datatype])
        count = math.prod(max(d, 0) for d in tensor.shape)
        if len(values) != count:
            raise RequestError(f"input {tensor.name!r} has {len(values)} values; shape {list(tensor.shape)} "
                               f"needs {count}")
        entry["data"] = list(values)
    return entry
