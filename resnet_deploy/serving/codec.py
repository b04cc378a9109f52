"""The Open Inference Protocol's (KServe v2) inference request and response as bytes: JSON tensors and the
binary tensor data extension, read into a numpy batch checked against the model, and written back."""

from __future__ import annotations

import json
import math
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

from ..artifacts import LOGITS
from ..backends.base import Runner
from .limits import RequestError

if TYPE_CHECKING:  # pydantic is the serve extra's
    from .protocol import InferRequest, RequestedOutput

BINARY_HEADER = "Inference-Header-Content-Length"
MODEL_VERSION = "1"  # serve holds one version of its model
# HTTP content codings serve reads and writes -> zlib's window bits ("deflate" is the zlib format, RFC 9110)
CONTENT_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
CODING_ALIASES = {"x-gzip": "gzip"}  # RFC 9110 8.4.1.3: a recipient treats x-gzip as gzip
GZIP_MAGIC = b"\x1f\x8b"
RESPONSE_COMPRESSION_LEVEL = 1  # logits compress little: the fastest level, not the smallest answer
OIP_DATATYPES = {"float32": "FP32", "float16": "FP16", "int64": "INT64", "uint8": "UINT8"}  # numpy -> the protocol's (Triton's config: TYPE_ + it)


def tensor_meta(spec: Any) -> dict[str, Any]:
    return {"name": spec.name, "datatype": OIP_DATATYPES.get(spec.dtype, spec.dtype.upper()),
            "shape": [d if isinstance(d, int) else -1 for d in spec.shape]}


def parse_infer_request(body: bytes | bytearray, header_length: str | None, runner: Runner, max_batch: int) -> tuple[
        np.ndarray, InferRequest]:
    """The input batch of an inference request over HTTP (JSON or binary tensor data) and its JSON header,
    checked against the protocol's schema (:mod:`.protocol`) and then against the model (:func:`request_batch`)."""
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
    return request_batch(request, binary, runner, max_batch), request


def request_batch(request: InferRequest, binary: bytes | memoryview, runner: Runner, max_batch: int) -> np.ndarray:
    """The input batch of a request already read (HTTP's JSON header, or a gRPC request as the same schema,
    ``binary`` its raw contents), checked against the model: one input of its name, datatype and shape, within
    ``max_batch``, finite. JSON ``data`` is dropped from the request once it is an array: its Python floats
    are 8x the array's size."""
    if len(request.inputs) != 1:
        raise RequestError(f"the request needs \"inputs\": one tensor named {runner.input_name!r}")
    _check_extensions(request, runner)
    tensor = request.inputs[0]
    if tensor.name != runner.input_name:
        raise RequestError(f"unknown input {tensor.name!r}; the model's input is {runner.input_name!r}")
    dtype = runner.input_dtype  # float32 images, or uint8 pixels where the artifact embeds its preprocessing
    datatype = OIP_DATATYPES[dtype.name]
    if tensor.datatype != datatype:
        raise RequestError(f"input {runner.input_name!r} has datatype {tensor.datatype}; the model takes {datatype}")
    shape, expected = tensor.shape, runner.inputs[0].shape
    if (len(shape) != len(expected) or any(d < 1 for d in shape)
            or any(isinstance(e, int) and e != d for e, d in zip(expected[1:], shape[1:]))):
        raise RequestError(f"input shape {shape} does not match the model's {tensor_meta(runner.inputs[0])['shape']}")
    if not 1 <= shape[0] <= max_batch:
        raise RequestError(f"batch size {shape[0]} is outside 1 to {max_batch}, the server's max batch")
    count = math.prod(shape)  # Python's integers: a huge shape is refused below, never wrapped around
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
    return np.ascontiguousarray(array, dtype=dtype)


def _check_extensions(request: InferRequest, runner: Runner) -> None:
    """A tensor parameter this server does not implement (shared memory, ...) is a 400 naming it, never ignored;
    so is classification on an output that is not [batch, classes]."""
    tensors = [("input", t.name, t.parameters) for t in request.inputs]
    tensors += [("output", o.name, o.parameters) for o in request.outputs or []]
    for kind, name, parameters in tensors:
        unknown = sorted((parameters.model_extra or {}) if parameters else {})
        if unknown:
            raise RequestError(f"{kind} {name!r}: parameter {unknown[0]!r} is not supported by this server "
                               "(it takes binary_data, binary_data_size and classification)")
    shapes = {spec.name: spec.shape for spec in runner.outputs}
    for output in request.outputs or []:
        if output.parameters and output.parameters.classification and len(shapes.get(output.name, [])) != 2:
            raise RequestError(f"output {output.name!r}: classification needs a [batch, classes] output")


def classified(scores: np.ndarray, count: int, labels: list[str] | None) -> np.ndarray:
    """The classification extension's answer, as Triton gives it: per row, the ``count`` highest scores (or
    all, where fewer) as ``"score:index:label"`` (``"score:index"`` without labels), highest first."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :min(count, scores.shape[1])]
    return np.array([[f"{row[i]:f}:{i}" + (f":{labels[i]}" if labels else "") for i in ranked]
                     for row, ranked in zip(scores, order)], dtype=object)


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


def output_tensors(request: InferRequest, outputs: dict[str, np.ndarray],
                   labels: list[str] | None = None) -> list[tuple[RequestedOutput, str, np.ndarray]]:
    """Each output the request asks for (all, where it names none), with its datatype and values: FP32, or
    for an output asked with ``classification`` its top classes as BYTES (``labels``: the names of the
    classifier's classes, as Triton's label file gives them)."""
    from .protocol import RequestedOutput

    wanted = request.outputs if request.outputs is not None else [RequestedOutput(name=name) for name in outputs]
    tensors = []
    for spec in wanted:
        if spec.name not in outputs:
            raise RequestError(f"unknown output {spec.name!r}; the model's outputs are {list(outputs)}")
        array = np.ascontiguousarray(outputs[spec.name], dtype=np.float32)
        top = spec.parameters.classification if spec.parameters else None
        if top:
            tensors.append((spec, "BYTES", classified(array, top, labels if spec.name == LOGITS else None)))
        else:
            tensors.append((spec, "FP32", array))
    return tensors


def tensor_bytes(datatype: str, array: np.ndarray) -> bytes:
    """A tensor's raw contents, as the binary tensor data extension and gRPC's ``raw_output_contents`` carry
    them: little-endian values, or BYTES elements each after its 4-byte little-endian length."""
    if datatype == "BYTES":
        return b"".join(len(v).to_bytes(4, "little") + v for v in (s.encode() for s in array.ravel()))
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def build_infer_response(request: InferRequest, outputs: dict[str, np.ndarray], *, model_name: str,
                         batch_size: int, labels: list[str] | None = None) -> tuple[bytes, dict[str, str]]:
    """The HTTP response body and headers for :func:`output_tensors`: JSON, or JSON then binary tensors where
    the client asked for them."""
    default_binary = bool(request.parameters and request.parameters.binary_data_output)
    response_outputs, chunks = [], []
    for spec, datatype, array in output_tensors(request, outputs, labels):
        entry: dict[str, Any] = {"name": spec.name, "datatype": datatype, "shape": list(array.shape)}
        binary = spec.parameters.binary_data if spec.parameters and spec.parameters.binary_data is not None \
            else default_binary
        if binary:
            data = tensor_bytes(datatype, array)
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = array.ravel().tolist()
        response_outputs.append(entry)
    response = {"model_name": model_name, "model_version": MODEL_VERSION, "outputs": response_outputs,
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


def decompressed(body: bytes | bytearray, coding: str, limit: int) -> bytes | bytearray:
    """A request body by its ``Content-Encoding`` (gzip, deflate, identity), refused (413) where it would
    decompress past ``limit`` bytes: the size limit holds for what the request holds, not what it sent.
    A gzip body may be several members (RFC 1952), as concatenated gzip files are; bytes after the last
    member, or after a deflate stream, are refused rather than dropped."""
    coding = CODING_ALIASES.get(coding.strip().lower(), coding.strip().lower())
    if coding in ("", "identity"):
        return body
    if coding not in CONTENT_CODINGS:
        raise RequestError(f"Content-Encoding {coding!r} is not supported (gzip, deflate or identity)", 415)
    data, rest = bytearray(), memoryview(body)
    while True:
        inflater = zlib.decompressobj(CONTENT_CODINGS[coding])
        try:
            data += inflater.decompress(rest, limit + 1 - len(data))
        except zlib.error as exc:
            raise RequestError(f"the {coding} request body does not decompress: {exc}") from None
        if len(data) > limit or inflater.unconsumed_tail:
            raise RequestError(f"the {coding} request decompresses to over the {limit}-byte limit", 413)
        if not inflater.eof:
            raise RequestError(f"the {coding} request body is truncated")
        rest = memoryview(inflater.unused_data)
        if not rest:
            return data
        if coding != "gzip" or bytes(rest[:2]) != GZIP_MAGIC:
            raise RequestError(f"{len(rest)} bytes follow the {coding} request body")


def compressed(content: bytes, accept_encoding: str | None) -> tuple[bytes, str | None]:
    """``content`` compressed by the coding of ``Accept-Encoding`` with the highest q (above 0) that serve
    writes, and the coding's name; unchanged and None where the client takes none of them."""
    best, best_quality = None, 0.0
    for item in (accept_encoding or "").split(","):
        coding, *parameters = [part.strip() for part in item.lower().split(";")]
        coding = CODING_ALIASES.get(coding, coding)
        quality = _quality(next((p[2:] for p in parameters if p.startswith("q=")), "1"))
        if coding in CONTENT_CODINGS and quality > best_quality:
            best, best_quality = coding, quality
    if best is None:
        return content, None
    packer = zlib.compressobj(RESPONSE_COMPRESSION_LEVEL, zlib.DEFLATED, CONTENT_CODINGS[best])
    return packer.compress(content) + packer.flush(), best


def _quality(text: str) -> float:
    try:
        quality = float(text)
    except ValueError:
        return 0.0
    return quality if 0 < quality <= 1 else 0.0
