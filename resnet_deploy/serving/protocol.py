"""The Open Inference Protocol's (KServe v2) inference request, as a schema: what a request may hold,
checked in one place by pydantic before any of it is used, so a request of the wrong shape is a 400
naming the field, never a 500 from code that met a number where it expected a mapping.

Only what this server reads is constrained; other fields and parameters pass, as the protocol allows.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, TypeAdapter, ValidationError
from typing_extensions import TypeAliasType

__all__ = ["InferRequest", "ValidationError", "describe_error"]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TensorParameters(_Open):
    binary_data_size: StrictInt | None = Field(default=None, ge=0)
    binary_data: StrictBool | None = None


class RequestParameters(_Open):
    binary_data_output: StrictBool | None = None


class InputTensor(_Open):
    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: TensorParameters | None = None
    data: list[Any] | None = None


class OutputParameters(TensorParameters):
    classification: StrictInt | None = Field(default=None, ge=1)  # the classification extension: top-k as BYTES


class RequestedOutput(_Open):
    name: StrictStr
    parameters: OutputParameters | None = None


class InferRequest(_Open):
    id: StrictStr | None = None
    parameters: RequestParameters | None = None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None = None


_Integers = TypeAliasType("_Integers", "list[StrictInt | _Integers]")  # JSON integers, nested as a tensor's data
_INTEGERS = TypeAdapter(_Integers)


def check_integers(data: list[Any]) -> bool:
    """Whether ``data`` holds JSON integers alone, at any nesting (no strings, booleans or fractions)."""
    try:
        _INTEGERS.validate_python(data)
    except ValidationError:
        return False
    return True


def describe_error(error: ValidationError) -> str:
    """The first problem of a request, as one line naming where it is: ``inputs.0.shape.0: ...``."""
    first = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "the request"
    return f"{where}: {first['msg']}"
