"""A real Triton Inference Server for the tests: the `tritonserver` binary (Triton 2.51, python backend
only) of the nvidia-pytriton wheel, in an environment of its own made on first use in pytest's cache
(the python backend's stub runs the first `python3` on PATH and needs numpy 1.x, onnxruntime and Pillow).
Started on free loopback ports, ready within a bound, stopped by its PID, its shared-memory regions removed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import cached_venv, wait_until_ready

HERE = Path(__file__).resolve().parent
PACKAGES = ["numpy<2", "onnxruntime>=1.18", "pillow>=10"]
PYTRITON = "nvidia-pytriton==0.7.0"  # installed without its dependencies: the binary needs none of them
READY_S = 60


def environment(cache: Path) -> Path:
    """The venv the server and its stub run in (made once, then reused)."""
    return cached_venv(cache / "venv", PACKAGES, ["--no-deps", PYTRITON])


def backends(venv: Path, folder: Path) -> Path:
    """Triton's backend folder: its python backend with this Python's stub, and the onnxruntime one."""
    site = next((venv / "lib").glob("python3*/site-packages"))
    shipped = site / "pytriton" / "tritonserver"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(shipped / "backends" / "python", folder / "python")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy(shipped / "python_backend_stubs" / version / "triton_python_backend_stub", folder / "python")
    (folder / "onnxruntime").mkdir()
    shutil.copy(HERE / "onnxruntime_backend.py", folder / "onnxruntime" / "model.py")
    return folder


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (held together while chosen, so never the same one twice)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Server:
    """``tritonserver`` on ``repo``; ``url`` is its HTTP endpoint (host:port)."""

    def __init__(self, venv: Path, backend_folder: Path, repo: Path, log: Path) -> None:
        site = next((venv / "lib").glob("python3*/site-packages"))
        binary = site / "pytriton" / "tritonserver" / "bin" / "tritonserver"
        http, grpc, metrics = free_ports(3)
        env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
               "LD_LIBRARY_PATH": f"{sysconfig.get_config_var('LIBDIR')}:{site / 'nvidia_pytriton.libs'}"}
        self.shm_before = set(Path("/dev/shm").glob("triton_*"))
        self.log = log
        self.process = subprocess.Popen(
            [str(binary), "--model-repository", str(repo), "--backend-directory", str(backend_folder),
             "--http-address", "127.0.0.1", "--http-port", str(http), "--grpc-address", "127.0.0.1",
             "--grpc-port", str(grpc), "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics),
             "--allow-gpu-metrics=false", "--exit-on-error=false"],
            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.url, self.metrics_url = f"127.0.0.1:{http}", f"127.0.0.1:{metrics}"
        self._wait_ready()

    def _wait_ready(self) -> None:
        try:
            wait_until_ready(f"http://{self.url}/v2/health/ready", self.process, READY_S,
                             lambda: self.log.read_text()[-3000:])
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        for region in set(Path("/dev/shm").glob("triton_*")) - self.shm_before:
            region.unlink(missing_ok=True)
