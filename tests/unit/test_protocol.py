"""The server's request parsing against its schema: whatever the body, a parsed batch or a 4xx
RequestError, never another exception (which the server answers with a 500)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnet_deploy.artifacts import TensorSpec
from resnet_deploy.backends.base import Runner
from resnet_deploy.serving.codec import build_infer_response, parse_infer_request
from resnet_deploy.serving.limits import RequestError


class Spec(Runner):
    name = "spec"
    inputs = [TensorSpec("input", ["batch", 3, 4, 4])]
    outputs = [TensorSpec("logits", ["batch", 10])]


RUNNER = Spec()


def _parse(body: bytes, header: str | None = None):
    return parse_infer_request(body, header, RUNNER, 8)


def _request(**tensor) -> bytes:
    base = {"name": "input", "shape": [1, 3, 4, 4], "datatype": "FP32", "data": [0.5] * 48}
    return json.dumps({"inputs": [{**base, **tensor}]}).encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
fields = st.sampled_from(["name", "shape", "datatype", "data", "parameters"])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(body=json_values)
def test_any_json_body_is_parsed_or_refused_with_4xx(body):
    try:
        batch, _request_ = _parse(json.dumps(body).encode())
    except RequestError as exc:
        assert 400 <= exc.status < 500 and "\n" not in str(exc)
    else:
        assert batch.dtype == np.float32 and np.isfinite(batch).all()


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(field=fields, value=json_values, where=st.sampled_from(["tensor", "request"]))
def test_a_valid_request_with_one_field_replaced_is_parsed_or_refused_with_4xx(field, value, where):
    request = json.loads(_request())
    if where == "tensor":
        request["inputs"][0][field] = value
    else:
        request[field if field != "data" else "outputs"] = value
    try:
        _batch, parsed = _parse(json.dumps(request).encode())
        build_infer_response(parsed, {"logits": np.zeros((1, 10), np.float32)}, model_name="m", batch_size=1)
    except RequestError as exc:
        assert 400 <= exc.status < 500


@given(body=st.binary(max_size=200), header=st.one_of(st.none(), st.text(max_size=6)))
def test_any_bytes_are_parsed_or_refused_with_4xx(body, header):
    try:
        _parse(body, header)
    except RequestError as exc:
        assert 400 <= exc.status < 500


@pytest.mark.parametrize("body, message", [
    (json.dumps({"inputs": json.loads(_request())["inputs"], "parameters": 5}).encode(), "parameters"),
    (json.dumps({"inputs": json.loads(_request())["inputs"], "outputs": 5}).encode(), "outputs"),
    (json.dumps({"inputs": json.loads(_request())["inputs"], "outputs": [{"name": "logits", "parameters": 1}]}).encode(),
     "outputs.0.parameters"),
    (_request(parameters="x"), "inputs.0.parameters"),
    (_request(shape=[True, 3, 4, 4]), "inputs.0.shape.0"),
    (_request(shape=[1, 3, 0, 0], data=[]), "does not match the model's"),
    (b'{"inputs": [{"name": "input", "shape": [1, 3, 4, 4], "datatype": "FP32", "data": ' + b"[" * 100_000
     + b"]" * 100_000 + b"}]}", ""),
    (_request(data=[float("nan")] + [0.5] * 47), "NaN or infinite"),
    (_request(data=[1e39] + [0.5] * 47), "beyond float32"),
])
def test_requests_that_were_500s_are_400s(body, message):
    with pytest.raises(RequestError) as info:
        _parse(body)
    assert info.value.status == 400 and message in str(info.value)


def test_nan_outputs_are_a_500_not_invalid_json():
    _batch, parsed = _parse(_request())
    with pytest.raises(RequestError, match="NaN or infinite outputs") as info:
        build_infer_response(parsed, {"logits": np.full((1, 10), np.nan, np.float32)}, model_name="m", batch_size=1)
    assert info.value.status == 500


class PixelSpec(Runner):
    name = "pixels"
    inputs = [TensorSpec("input", ["batch", 2, 2, 3], "uint8")]
    outputs = [TensorSpec("logits", ["batch", 10])]


@pytest.mark.parametrize("value", ["7", True, 255.0000001, 7.5, 256, -1, None, [1]])
def test_uint8_json_data_takes_integers_0_to_255_only(value):
    """Pixels are JSON integers: a string, a boolean or a fraction among them is refused, not rounded into a
    pixel (were: "7" -> 7, true -> 1, 255.0000001 -> 255)."""
    data = [10] * 11 + [value]
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 2, 2, 3], "datatype": "UINT8", "data": data}]})
    with pytest.raises(RequestError, match="not pixels|not a list of numbers|has 13 values") as refused:
        parse_infer_request(body.encode(), None, PixelSpec(), 8)
    assert refused.value.status == 400
    nested = [[[[10, 20, 30]] * 2] * 2]
    batch, _ = parse_infer_request(json.dumps({"inputs": [{"name": "input", "shape": [1, 2, 2, 3], "datatype":
                                                           "UINT8", "data": nested}]}).encode(), None, PixelSpec(), 8)
    assert batch.dtype == np.uint8 and batch[0, 1, 1].tolist() == [10, 20, 30]


@pytest.mark.parametrize("value", ["0.5", True, None])
def test_fp32_json_data_takes_numbers_only(value):
    with pytest.raises(RequestError, match="not a list of numbers") as refused:
        _parse(_request(data=[value] * 48))
    assert refused.value.status == 400


class DynamicSpec(Runner):
    name = "dynamic"
    inputs = [TensorSpec("input", ["batch", 3, "height", "width"])]
    outputs = [TensorSpec("logits", ["batch", 10])]


def test_a_shape_whose_product_wraps_around_in_int64_is_refused():
    """[1, 3, 4096, 2**52 + 1] has 12288 elements modulo 2**64 (numpy's product): with 12288 values sent, the
    size check passed and reshape raised (a 500). Python's product refuses it."""
    shape = [1, 3, 4096, 2**52 + 1]
    body = json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                                   "parameters": {"binary_data_size": 4 * 12288}}]}).encode()
    with pytest.raises(RequestError, match="does not hold") as caught:
        parse_infer_request(body + b"\0" * (4 * 12288), str(len(body)), DynamicSpec(), 8)
    assert caught.value.status == 400


@pytest.mark.parametrize("accept, chosen", [
    ("gzip", "gzip"), ("deflate;q=0.1, gzip", "gzip"), ("gzip;q=0.2, deflate;q=0.9", "deflate"),
    ("x-gzip", "gzip"), ("gzip;q=0, deflate;q=0", None), ("br, *", None), (None, None), ("gzip;q=abc", None),
])
def test_answers_are_compressed_by_the_best_coding_the_client_accepts(accept, chosen):
    import gzip
    import zlib

    from resnet_deploy.serving.codec import compressed

    content = b'{"outputs": []}' * 10
    packed, coding = compressed(content, accept)
    assert coding == chosen
    assert (gzip.decompress(packed) if coding == "gzip" else zlib.decompress(packed) if coding else packed) == content
