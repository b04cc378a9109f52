"""An export stopped from outside (SIGTERM, SIGHUP, a full disk, SIGKILL) leaves no partial artifact:
its temporaries are removed on the way out, or by the next export into the folder."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from resnet_deploy import fileio
from tests.conftest import assert_one_line_error

EXPORT = ["-m", "resnet_deploy.cli", "export", "--arch", "resnet18", "--input-size", "64", "--fp16", "--no-engine"]


def _start_export(out) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *EXPORT, "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_temporaries(process: subprocess.Popen, out) -> None:
    """Until the export has staged a file (it is mid-way), bounded."""
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(fileio.TEMP_PREFIX) and p.suffix == ".onnx" for p in _entries(out)):
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "the export staged no file in time"
        time.sleep(0.05)


def _entries(out) -> list:
    return list(out.iterdir()) if out.exists() else []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_stopping_signal_mid_export_unwinds_like_ctrl_c(tmp_path, signum):
    out = tmp_path / "out"
    process = _start_export(out)
    _wait_for_temporaries(process, out)
    process.send_signal(signum)
    _stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr
    assert f"stopped by {signal.Signals(signum).name}" in stderr and "Traceback" not in stderr
    assert _entries(out) == []  # nothing staged is left, and nothing was committed


def test_sigkilled_export_is_swept_by_the_next(tmp_path):
    out = tmp_path / "out"
    process = _start_export(out)
    _wait_for_temporaries(process, out)
    process.kill()
    process.wait(timeout=60)
    left = [p.name for p in _entries(out) if p.name.startswith(fileio.TEMP_PREFIX)]
    assert left  # SIGKILL cannot be handled: the files stay ...
    done = subprocess.run([sys.executable, *EXPORT, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "temporaries of exports that were killed" in done.stderr
    assert not [p for p in _entries(out) if p.name.startswith(fileio.TEMP_PREFIX)]  # ... until the next export


def test_full_disk_is_one_line_and_leaves_nothing(cli, tmp_path, monkeypatch):
    def no_space(self, staged, target):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(fileio.Staging, "commit", no_space)
    out = tmp_path / "out"
    result = cli("export", "--arch", "resnet18", "--input-size", "64", "--no-engine", "--out", str(out))
    assert_one_line_error(result, 2, "No space left on device")
    assert _entries(out) == []
