"""Every numeric option of every command, fed hostile values (NaN, infinities, negatives, numbers far
past any sane bound, text): a one-line error and exit 2, or (where the value is one the option takes)
a normal run; never a traceback, never exit 1 (parity failures only), never a run that does not end.

The options are found by walking the CLI, so an option added later is covered without touching this
file; the artifact every command needs is the shared small export.
"""

from __future__ import annotations

import uuid

import click
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from resnet_deploy.cli import main
from tests.conftest import assert_one_line_error

HOSTILE_FLOATS = st.one_of(st.sampled_from(["nan", "inf", "-inf", "-0.5", "1e308", "1e400", "abc", ""]),
                           st.floats(max_value=-1e-6).map(repr), st.floats(min_value=1e13).map(repr))
HOSTILE_INTS = st.one_of(st.sampled_from(["-1", "abc", "1.5", "", "99999999999999999999999"]),
                         st.integers(max_value=-1).map(str), st.integers(min_value=10**13).map(str))


def _numeric_options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and p.type in (click.INT, click.FLOAT)]


def _base_args(name: str, small_export, tmp_path) -> list[str]:
    """The arguments that make each command run on the small export (a fresh output folder each time)."""
    artifact = str(small_export.onnx_path)
    image = tmp_path / "photo.png"
    if not image.exists():
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(image)
    return {
        "export": ["--arch", "resnet18", "--input-size", "64", "--out", str(tmp_path / "out")],
        "build": [artifact],
        "verify": [artifact, "--batch-sizes", "1"],
        "predict": [artifact, str(image)],
        "batch": [artifact, str(image), "--output", str(tmp_path / f"batch-{uuid.uuid4().hex}"), "-q"],
        "bench": [artifact, "--batch-sizes", "1", "--iters", "2", "--warmup", "0"],
        "triton": [artifact, "--repo", str(tmp_path / "repo")],
        "serve": [artifact],
        "kserve": [artifact, "--runtime", "serve", "--image", "registry.example.com/rd:1", "--name", "classifier",
                   "--storage-uri", "s3://models/resnet18", "--out", str(tmp_path / f"kserve-{uuid.uuid4().hex}")],
        "tune": [artifact, "--batch-sizes", "1", "--budget-s", "5", "--no-write"],
    }[name]


COMMANDS = sorted(name for name, command in main.commands.items() if _numeric_options(command))


def test_the_walk_finds_the_numeric_options():
    assert {"export", "verify", "bench", "triton", "serve", "predict", "tune", "batch", "kserve"} <= set(COMMANDS)
    assert "--max-request-mb" in {o.opts[0] for o in _numeric_options(main.commands["serve"])}


@pytest.mark.parametrize("name", COMMANDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_numbers_get_a_one_line_error(cli, small_export, tmp_path, name, data):
    command = main.commands[name]
    option = data.draw(st.sampled_from(_numeric_options(command)), label="option")
    value = data.draw(HOSTILE_FLOATS if option.type is click.FLOAT else HOSTILE_INTS, label="value")
    result = cli(name, *_base_args(name, small_export, tmp_path), option.opts[0], value)
    if result.exit_code == 0:  # a value the option takes (a huge --max-error, --topk): the run finished
        assert "Traceback" not in result.stderr
        return
    assert_one_line_error(result)
