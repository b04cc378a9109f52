"""Shared fixtures: a CLI runner that keeps stderr apart, and small-model helpers."""

from __future__ import annotations

import os

import pytest
import torch
from click.testing import CliRunner

# Two cores here: let torch use both, and keep test output free of exporter chatter.
torch.set_num_threads(max(1, os.cpu_count() or 1))


@pytest.fixture
def cli():
    """Invoke ``resnet-deploy ARGS``; returns click's Result with .stdout/.stderr apart."""
    from resnet_deploy.cli import main

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


def assert_one_line_error(result, code: int = 2, contains: str | None = None) -> None:
    """The CLI's contract for bad input: exit code, one 'error:' line on stderr, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    if contains is not None:
        assert contains in lines[-1], lines[-1]
