"""Print, as JSON, the API of the ``tensorrt`` module importable here: for each class its methods (the
parameter lists of every overload, read from pybind11's signature lines) and properties (writable or
not), for each enum its members, and the module's functions. Run in a subprocess by
tests/tensorrt_api/conftest.py, one TensorRT version per process (two cannot share one)."""

from __future__ import annotations

import inspect
import json
import re
import sys

import tensorrt as trt

SIGNATURE = re.compile(r"^(?:\d+\. )?(\w+)\((.*)\)(?: -> .*)?$")


def split_top_level(text: str) -> list[str]:
    """``a: int, b: tuple[int, int] = (1, 2)`` -> the two parameters, commas inside brackets kept."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "([{<":
            depth += 1
        elif char in ")]}>":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current.strip())
    return parts


def overloads(name: str, doc: str | None) -> list[list[dict]]:
    """Each overload's parameters after ``self``: name and whether it has a default."""
    found = []
    for line in (doc or "").splitlines():
        match = SIGNATURE.match(line.strip())
        if not match or match.group(1) != name or match.group(2) == "*args, **kwargs":
            continue
        params = []
        for part in split_top_level(match.group(2)):
            pname = part.split(":")[0].split("=")[0].strip()
            if pname == "self":
                continue
            params.append({"name": pname.lstrip("*"), "default": "=" in part, "star": pname.startswith("*")})
        found.append(params)
    return found


def describe_class(cls: type) -> dict:
    """Methods (overloads' parameters), properties (writable or not) and other class attributes (enum
    values such as ``Logger.WARNING``, nested types)."""
    methods, properties, attributes = {}, {}, []
    for name in dir(cls):
        if name.startswith("__") and name not in ("__init__", "__call__"):
            continue
        attribute = inspect.getattr_static(cls, name)
        if isinstance(attribute, property):
            properties[name] = {"writable": attribute.fset is not None}
        elif inspect.isroutine(attribute) or isinstance(attribute, (staticmethod, classmethod)):
            function = getattr(cls, name)
            methods[name] = overloads(name, getattr(function, "__doc__", None))
        else:
            attributes.append(name)
    return {"methods": methods, "properties": properties, "attributes": attributes}


def python_signature(function) -> list[list[dict]]:
    """A function written in Python (``trt.nptype``): its one signature."""
    return [[{"name": p.name, "default": p.default is not p.empty, "star": p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
             for p in inspect.signature(function).parameters.values()]]


def nptype_outcomes() -> dict[str, str | None]:
    """What ``trt.nptype`` makes of each DataType member: a numpy type name, or None where it raises."""
    outcomes = {}
    for name, member in trt.DataType.__members__.items():
        try:
            outcomes[name] = trt.nptype(member).__name__
        except TypeError:
            outcomes[name] = None
    return outcomes


def is_enum(cls: type) -> bool:
    return hasattr(cls, "__members__") and isinstance(getattr(cls, "__members__"), dict)


def main() -> None:
    spec = {"version": trt.__version__, "classes": {}, "enums": {}, "functions": {}, "names": sorted(dir(trt)),
            "nptype": nptype_outcomes()}
    for name in dir(trt):
        value = getattr(trt, name)
        if inspect.isclass(value):
            if is_enum(value):
                spec["enums"][name] = sorted(value.__members__)
            spec["classes"][name] = describe_class(value)
        elif inspect.isfunction(value):
            spec["functions"][name] = python_signature(value)
        elif callable(value):
            spec["functions"][name] = overloads(name, getattr(value, "__doc__", None))
    json.dump(spec, sys.stdout, indent=None, sort_keys=True)


if __name__ == "__main__":
    main()
