"""One place for each fact and each default: the literals that were typed in several modules appear in one
module (read from the package's syntax trees, so a docstring or a comment does not count), and each CLI
option's default is its library call's default."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import resnet_deploy

PACKAGE = Path(resnet_deploy.__file__).parent

# literal -> the modules (relative to the package) allowed to hold it
ONE_SOURCE = {
    "logits": {"artifacts.py"},  # the classifier's output name: artifacts.LOGITS
    "features": {"artifacts.py"},
    "1:8:32": set(),  # the default profile: artifacts.DEFAULT_PROFILE
    "minmax": {"precisions.py", "export/quantize.py"},  # Int8Options' default; the calibration methods' table
    "TYPE_FP32": set(),  # Triton's config types: "TYPE_" + the protocol's datatype
    "FP32": {"serving/codec.py"},  # the protocol's datatypes: codec.OIP_DATATYPES
    "matplotlib": {"backends/doctor.py"},  # doctor's optional tools
    300.0: {"target/tune.py"},  # tune's budget
}


def _literals() -> dict[object, set[str]]:
    found: dict[object, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and type(node.value) in (str, float) and node.value in ONE_SOURCE:
                found.setdefault(node.value, set()).add(path.relative_to(PACKAGE).as_posix())
    return found


def test_each_repeated_fact_lives_in_one_module():
    found = _literals()
    strays = {literal: sorted(found.get(literal, set()) - allowed) for literal, allowed in ONE_SOURCE.items()}
    assert not any(strays.values()), {k: v for k, v in strays.items() if v}


def test_the_walk_finds_a_literal():
    assert _literals()["logits"] == {"artifacts.py"}


def _command(name: str):
    from resnet_deploy.cli import main

    return main.commands[name]


def _library(dotted: str):
    module, _, function = dotted.rpartition(".")
    return getattr(__import__(module, fromlist=[function]), function)


# command -> its library call, and option names that are the same default under another name
CALLS = {
    "tune": ("resnet_deploy.target.tune.tune", {}),
    "bench": ("resnet_deploy.target.bench.bench_artifacts", {}),
    "predict": ("resnet_deploy.target.predict.classify", {}),
    "verify": ("resnet_deploy.parity.verify.verify", {}),
    "serve": ("resnet_deploy.serving.server.serve", {}),
}


@pytest.mark.parametrize("command", sorted(CALLS))
def test_every_cli_default_is_the_library_default(command):
    function, renamed = CALLS[command]
    signature = inspect.signature(_library(function))
    shared = 0
    for option in _command(command).params:
        name = renamed.get(option.name, option.name)
        parameter = signature.parameters.get(name)
        given = option.default
        if parameter is None or parameter.default is inspect.Parameter.empty or given is None or \
                type(given).__name__ == "Sentinel":  # click's "no default"
            continue
        if isinstance(given, str) and isinstance(parameter.default, (tuple, list)):  # a comma-separated list
            given = tuple(type(parameter.default[0])(v) for v in given.split(","))
        elif isinstance(parameter.default, tuple):
            given = tuple(given)
        shared += 1
        assert given == parameter.default, (
            f"{command} --{option.name}: the CLI's default {option.default!r}, the library's {parameter.default!r}")
    assert shared or command == "serve", f"{command}: no option shares a name with {function}'s parameters"


def test_no_function_over_sixty_lines():
    """A function longer than a screen does more than one thing (docstrings count)."""
    long = [f"{path.relative_to(PACKAGE)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in PACKAGE.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60]
    assert not long, long


def test_the_export_extra_is_read_from_one_list(monkeypatch):
    """The modules that make a command export-side are the `export` extra's, read from the installed metadata,
    or from pyproject.toml in a source tree that is not installed: the same set either way."""
    import importlib.metadata

    from resnet_deploy.environment import extra_modules

    installed = extra_modules("export")
    assert "torch" in installed and "uvicorn" not in installed

    def not_installed(_name):
        raise importlib.metadata.PackageNotFoundError(_name)

    monkeypatch.setattr(importlib.metadata, "requires", not_installed)
    assert extra_modules("export") == installed
