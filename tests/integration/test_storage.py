"""Artifacts on storage that will not take a write: a read-only model volume (an edge box's) and a full disk.
Both are made for real in a private mount namespace (`unshare -m`: a read-only bind mount, a tmpfs just large
enough for the artifacts), and the toolkit runs there as a user would run it: the caches it keeps beside the
artifacts are skipped with a warning, never a crash or a lie about a good file."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_deploy.backends import detect


def _namespace_works() -> str | None:
    """Why a private mount namespace cannot be made here, or None."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    done = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    return None if done.returncode == 0 else f"unshare -m is not permitted here: {done.stderr.strip()}"


pytestmark = pytest.mark.skipif(_namespace_works() is not None, reason=str(_namespace_works()))


def _copy_files(export, folder: Path) -> Path:
    """The export's fp32 file and manifest alone (no caches), in ``folder``."""
    folder.mkdir(parents=True)
    for name in ("resnet18.onnx", "resnet18.json"):
        shutil.copy(export.onnx_path.parent / name, folder / name)
    return folder


def _in_namespace(mount: str, command: list[str]) -> subprocess.CompletedProcess:
    """``mount`` (shell commands run as root in a new mount namespace) then ``command`` there."""
    script = f"set -e; {mount}; exec {shlex.join(command)}"
    return subprocess.run(["unshare", "-m", "bash", "-c", script], capture_output=True, text=True, timeout=300)


def _bench(artifact: Path, backends: str) -> list[str]:
    return [sys.executable, "-m", "resnet_deploy.cli", "bench", str(artifact), "--backend", backends,
            "--batch-sizes", "1", "--iters", "2", "--warmup", "1", "--json", "-q"]


def test_a_read_only_model_volume_runs_without_caches(small_export, tmp_path):
    """ONNX Runtime's graph cache and OpenVINO's model cache cannot be made on a read-only volume: both run
    without them, each saying so once (OpenVINO crashed creating .ov-cache)."""
    folder = _copy_files(small_export, tmp_path / "models")
    backends = "ort,openvino" if detect.openvino().available else "ort"
    done = _in_namespace(f"mount --bind {folder} {folder}; mount -o remount,ro,bind {folder}",
                         _bench(folder / "resnet18.onnx", backends))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    rows = json.loads(done.stdout)["results"]
    assert len(rows) == len(backends.split(",")) and all(r["iterations"] == 2 for r in rows)
    assert "the optimised graph cannot be cached in .ort-cache/ (Read-only file system)" in done.stderr
    if "openvino" in backends:
        assert "OpenVINO's model cache in .ov-cache/ is not used" in done.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["resnet18.json", "resnet18.onnx"]  # nothing written


def test_a_full_disk_is_named_not_blamed_on_the_artifact(small_export, tmp_path):
    """A disk with room for the artifact but not for ONNX Runtime's optimised graph: the model runs without
    the cache, with a warning; before, the user read `cannot load resnet18.onnx: INVALID_PROTOBUF` about a good
    file."""
    source = _copy_files(small_export, tmp_path / "source")
    folder = tmp_path / "disk"
    folder.mkdir()
    size_kb = sum(p.stat().st_size for p in source.iterdir()) // 1024 + 512
    copy = f"cp {source}/resnet18.onnx {source}/resnet18.json {folder}/"
    done = _in_namespace(f"mount -t tmpfs -o size={size_kb}k tmpfs {folder}; {copy}",
                         _bench(folder / "resnet18.onnx", "ort"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "INVALID_PROTOBUF" not in done.stderr and "Traceback" not in done.stderr
    assert "the optimised graph cannot be cached in .ort-cache/" in done.stderr
    assert json.loads(done.stdout)["results"][0]["iterations"] == 2
