"""Requests/s and latency of `serve` on this machine and of `serve --ray` (one replica of every CPU, and a
replica per CPU) on the same artifact under the same closed-loop load, measured side by side in one run
(issue 32's figures): what Ray Serve's proxy and routing cost on one machine, and what a replica per core
gives back.

Each configuration serves in its own processes (`serve` as a subprocess, Ray Serve in Ray's workers on a
local Ray started once); the clients are threads of this process sending one image per request as a binary
tensor (tritonclient), so the servers' CPUs are shared with them alike. Rounds are interleaved and medians
quoted.

    python tools/ray_serve_bench.py ARTIFACT [--clients 8] [--duration 10] [--rounds 3] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from resnet_deploy.artifacts import manifest_for
from resnet_deploy.environment import cpu_description, physical_cores, tool_versions
from resnet_deploy.serving.limits import ServeLimits
from resnet_deploy.serving.ray_serve import RayServeOptions, serve_on_ray

READY_S = 300


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(port: int, alive) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        assert alive(), "the server stopped before it was ready"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the server was not ready in time")


def load(port: int, model: str, batch: np.ndarray, clients: int, duration: float) -> dict[str, float]:
    """``clients`` threads each sending ``batch`` in a closed loop for ``duration`` s after a 2 s warm-up."""
    import tritonclient.http as httpclient

    latencies: list[float] = []
    lock, stop_at = threading.Lock(), time.monotonic() + 2 + duration
    start_at = stop_at - duration

    def client() -> None:
        connection = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        while (now := time.monotonic()) < stop_at:
            connection.infer(model, [tensor])
            if now >= start_at:
                with lock:
                    latencies.append(time.monotonic() - now)

    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    ordered = sorted(latencies)
    return {"requests_per_s": len(ordered) / duration, "p50_ms": ordered[len(ordered) // 2] * 1e3,
            "p99_ms": ordered[int(len(ordered) * 0.99)] * 1e3}


def run_local(artifact: str, model: str, batch: np.ndarray, args: argparse.Namespace) -> dict[str, float]:
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "resnet_deploy.cli", "serve", artifact, "--port", str(port),
                                "--threads", str(physical_cores()), "--backend", args.backend],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_ready(port, lambda: process.poll() is None)
        return load(port, model, batch, args.clients, args.duration)
    finally:
        process.terminate()
        process.wait(timeout=30)


def run_ray(artifact: str, model: str, batch: np.ndarray, options: RayServeOptions,
            args: argparse.Namespace) -> dict[str, float]:
    port, stop, failures = _free_port(), threading.Event(), []

    def run() -> None:
        try:
            serve_on_ray(artifact, options, port=port, limits=ServeLimits(), backend=args.backend, stop=stop)
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        _wait_ready(port, lambda: not failures)
        return load(port, model, batch, args.clients, args.duration)
    finally:
        stop.set()
        thread.join(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact")
    parser.add_argument("--backend", default="ort")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    import ray

    manifest, _ = manifest_for(args.artifact)
    model = manifest.stem
    batch = np.random.default_rng(0).standard_normal((1, *manifest.example_shape)).astype(np.float32)
    cores = physical_cores()
    configurations = {"serve": None, f"ray 1 x {cores} CPU": RayServeOptions(replicas=1, replica_cpus=cores),
                      f"ray {cores} x 1 CPU": RayServeOptions(replicas=cores, replica_cpus=1)}
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in configurations}
    try:
        for round_index in range(args.rounds):
            for name, options in configurations.items():
                figures = (run_local(args.artifact, model, batch, args) if options is None
                           else run_ray(args.artifact, model, batch, options, args))
                results[name].append(figures)
                print(f"round {round_index + 1} {name}: {figures}", flush=True)
    finally:
        ray.shutdown()
    medians = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for name, runs in results.items()}
    for name, figures in medians.items():
        print(f"{name:>16}: {figures['requests_per_s']:7.1f} req/s  p50 {figures['p50_ms']:6.1f} ms  "
              f"p99 {figures['p99_ms']:6.1f} ms  ({figures['requests_per_s'] / medians['serve']['requests_per_s']:.2f} "
              "x serve)")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({
            "artifact": args.artifact, "clients": args.clients, "duration_s": args.duration, "rounds": args.rounds,
            "cpu": cpu_description(), "machine": platform.node(), "versions": tool_versions(),
            "date": time.strftime("%Y-%m-%d"), "medians": medians, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
