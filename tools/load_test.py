#!/usr/bin/env python3
"""Load test of `resnet-deploy serve` on loopback: throughput and latency with and without dynamic
batching, and what happens above the overload point.

For each scenario it starts the real server (`python -m resnet_deploy.cli serve`, 127.0.0.1, a
free port), waits for /v2/health/ready, and runs N client threads for S seconds, each sending
one-image binary requests with tritonclient.http back to back (a closed loop). It counts every
answer by status (200, 503, other, connection error): a request is either answered or counted as
failed, never lost. Scenarios:
  - batching:    --max-batch 8 --max-delay-ms 5, N clients;
  - no batching: --max-batch 1, N clients;
  - overload:    --max-batch 8 --queue 4, --overload-clients (200) clients (expects 503s, no crash, no
                 lost request, and a queue never deeper than 4);
  - overload, 32-image requests: --max-batch 32 --queue 4, 32 clients each sending 32 images.
The overload clients run at nice 10: on a machine whose cores they share with the server, what is
measured is the server under that load, not the load generator taking its cores.
In every scenario a process of its own polls /v2/health/ready every 50 ms, as a readiness probe would;
the server's resident memory is read (/proc) after a one-image warm-up, at its peak and after the load,
and its deepest queue from /metrics.

    python tools/load_test.py [--artifact FILE.onnx] [--clients 8] [--overload-clients 200] [--seconds 15] [--json] [--write]

With --vs-triton it measures `resnet-deploy serve` and a real Triton Inference Server side by side
instead: the same artifact (written by `resnet-deploy triton --kind cpu`), the same dynamic batching
(max batch 8, 5 ms queue delay), at 1, 8 and 32 closed-loop clients sending --requests one-image
requests in all per level; requests/s, p50, p99, and the batch sizes each server formed (serve's
`server_batch_size` per answer, Triton's per-model batch statistics). Triton here is 2.51 from the
nvidia-pytriton wheel with the Python-based onnxruntime backend of tests/triton (the environment the
tests make, cached in .pytest_cache): Triton's python-backend throughput, not its C++ backend's.

Without --artifact it exports resnet50 at 224 (batch profile 1:8:32) to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks_md import replace_section  # noqa: E402  (tools/, the script's folder)
from resnet_deploy import export  # noqa: E402
from resnet_deploy.artifacts import manifest_for  # noqa: E402
from resnet_deploy.environment import cpu_description, tool_versions  # noqa: E402

SECTION = "## Serving: Open Inference Protocol server under load"
VS_SECTION = "## Serving: resnet-deploy serve and Triton side by side"
LEVELS = (1, 8, 32)
# Overload clients share the server's cores here, 100 threads a core retrying at once: they run at this nice
# value, so what is measured is the server under that load, not the load generator taking its cores.
OVERLOAD_NICE = 10
# label, serve's options, clients ("clients": --clients, "overload": --overload-clients, or a number), images a
# request, the clients' nice value
SCENARIOS = (
    ("dynamic batching", ["--max-batch", "8", "--max-delay-ms", "5"], "clients", 1, 0),
    ("no batching", ["--max-batch", "1"], "clients", 1, 0),
    ("overload", ["--max-batch", "8", "--max-delay-ms", "5", "--queue", "4"], "overload", 1, OVERLOAD_NICE),
    ("overload, 32-image requests", ["--max-batch", "32", "--queue", "4"], 32, 32, OVERLOAD_NICE),
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(artifact: Path, port: int, options: list[str]) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "resnet_deploy.cli", "serve", str(artifact), "--port", str(port),
                                *options], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {process.stderr.read().decode()[-500:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("server did not become ready in 120 s")


def _client(url: str, name: str, batch: np.ndarray, stop: float, record: list, nice: int) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    if nice:
        os.nice(nice)  # this thread only (Linux: a thread's own priority), relative to the tool's
    client = httpclient.InferenceServerClient(url, connection_timeout=30, network_timeout=30)
    tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)
    while time.monotonic() < stop:
        start = time.perf_counter()
        try:
            result = client.infer(name, [tensor])
            size = result.get_response()["parameters"]["server_batch_size"]
            record.append(("200", time.perf_counter() - start, size))
        except InferenceServerException as exc:
            status = str(exc.status() or "error")
            record.append(("503" if "overloaded" in str(exc) else status, time.perf_counter() - start, 0))
        except Exception as exc:  # noqa: BLE001 - a connection failure is a failed request, counted
            record.append((f"error: {type(exc).__name__}", time.perf_counter() - start, 0))


PROBE = """
import json, sys, time, urllib.request
url, stop, times = sys.argv[1], time.monotonic() + float(sys.argv[2]), []
while time.monotonic() < stop:
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            answer.read()
        times.append((time.perf_counter() - start) * 1e3)
    except OSError:
        times.append(float("inf"))
    time.sleep(0.05)
print(json.dumps(times))
"""


def _readiness_probe(port: int, seconds: float) -> subprocess.Popen:
    """A process of its own (no GIL shared with the clients) polling /v2/health/ready every 50 ms for
    ``seconds``: what a Kubernetes readiness probe sees under the load."""
    return subprocess.Popen([sys.executable, "-c", PROBE, f"http://127.0.0.1:{port}/v2/health/ready", str(seconds)],
                            stdout=subprocess.PIPE, text=True)


def _resident_mib(pid: int) -> dict[str, int]:
    """The server's resident memory now (VmRSS) and its peak so far (VmHWM), MiB."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status if line.startswith(("VmRSS", "VmHWM")))
    return {key: int(value.split()[0]) // 1024 for key, value in fields.items()}


def _deepest_queue(port: int) -> int | None:
    """The most requests ever waiting at once in the server's queue, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("resnet_deploy_deepest_queue "):
                return int(line.split()[1])
    return None


def scenario(artifact: Path, name: str, options: list[str], clients: int, seconds: float,
             images: int = 1, nice: int = 0) -> dict:
    port = _free_port()
    process = _start(artifact, port, options)
    try:
        return _measure(artifact, name, options, clients, seconds, images, nice, port, process)
    finally:  # whatever failed, the server started here stops
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)


def _measure(artifact: Path, name: str, options: list[str], clients: int, seconds: float, images: int, nice: int,
             port: int, process: subprocess.Popen) -> dict:
    shape = manifest_for(artifact)[0].input.shape[1:]
    batch = np.random.default_rng(0).standard_normal((images, *shape)).astype(np.float32)
    _closed_loop(f"127.0.0.1:{port}", name, batch[:1], 1, 2)  # warm: the memory a one-image request needs
    memory_before = _resident_mib(process.pid)["VmRSS"]
    probe = _readiness_probe(port, seconds)
    records: list[list] = [[] for _ in range(clients)]
    stop = time.monotonic() + seconds
    threads = [threading.Thread(target=_client, args=(f"127.0.0.1:{port}", name, batch, stop, records[i], nice))
               for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ready_ms = json.loads(probe.communicate(timeout=120)[0])
    alive = process.poll() is None
    memory = _resident_mib(process.pid) if alive else {}
    deepest = _deepest_queue(port) if alive else None
    every = [r for rec in records for r in rec]
    ok = [r for r in every if r[0] == "200"]
    latencies = [r[1] * 1e3 for r in ok]
    statuses: dict[str, int] = {}
    for status, _, _ in every:
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "options": " ".join(options), "clients": clients, "seconds": seconds, "requests": len(every),
        "statuses": statuses, "server_alive_after": alive,
        "throughput_rps": round(len(ok) / seconds, 1),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None,
        "mean_server_batch": round(statistics.mean(r[2] for r in ok), 2) if ok else None,
        "ready_p50_ms": round(statistics.median(ready_ms), 1) if ready_ms else None,
        "ready_max_ms": round(max(ready_ms), 1) if ready_ms else None,
        "deepest_queue": deepest,
        "rss_mib": {"before": memory_before, "peak": memory.get("VmHWM"), "after": memory.get("VmRSS")},
    }


def _closed_loop(url: str, name: str, batch: np.ndarray, clients: int, requests: int) -> tuple[list, float]:
    """``requests`` one-image requests from ``clients`` threads back to back: (records, wall seconds)."""
    import tritonclient.http as httpclient

    left = [requests]
    lock = threading.Lock()
    records: list = []

    def client() -> None:
        connection = httpclient.InferenceServerClient(url, connection_timeout=60, network_timeout=60)
        tensor = httpclient.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=True)
        try:
            while True:
                with lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                start = time.perf_counter()
                result = connection.infer(name, [tensor])
                size = (result.get_response().get("parameters") or {}).get("server_batch_size")
                with lock:
                    records.append((time.perf_counter() - start, size))
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return records, time.perf_counter() - start


def _summary(records: list, wall: float, batches: dict[int, int]) -> dict:
    latencies = [r[0] * 1e3 for r in records]
    return {"requests": len(records), "throughput_rps": round(len(records) / wall, 1),
            "p50_ms": round(statistics.median(latencies), 1), "p99_ms": round(float(np.percentile(latencies, 99)), 1),
            "batches": dict(sorted(batches.items()))}


def _triton_batches(url: str, name: str) -> dict[int, int]:
    """Executions per batch size so far, from Triton's statistics of ``name``."""
    with urllib.request.urlopen(f"http://{url}/v2/models/{name}/stats") as response:
        stats = json.loads(response.read())["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def vs_triton(artifact: Path, requests: int) -> dict:
    """serve and Triton on ``artifact`` at each of LEVELS clients: the same requests, batching and threads."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from resnet_deploy.serving.triton import TritonOptions, write_model_repository
    from tests.triton import server as triton_server

    name = artifact.name.split(".")[0]
    shape = manifest_for(artifact)[0].input.shape[1:]
    batch = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    results: dict[str, dict] = {"serve": {}, "triton": {}}
    port = _free_port()
    process = _start(artifact, port, ["--max-batch", "8", "--max-delay-ms", "5"])
    try:
        for clients in LEVELS:
            print(f"serve: {clients} clients, {requests} requests ...", file=sys.stderr)
            _closed_loop(f"127.0.0.1:{port}", name, batch, clients, min(requests, 2 * clients))  # warm
            records, wall = _closed_loop(f"127.0.0.1:{port}", name, batch, clients, requests)
            formed: dict[int, int] = {}
            for _, size in records:  # an answer per request: a batch of n images is n answers
                formed[size] = formed.get(size, 0) + 1
            results["serve"][clients] = _summary(records, wall, {n: count // n for n, count in formed.items()})
    finally:
        process.terminate()
        process.wait(timeout=30)
    cache = Path(__file__).resolve().parents[1] / ".pytest_cache" / "d" / "triton"
    cache.mkdir(parents=True, exist_ok=True)
    venv = triton_server.environment(cache)
    with tempfile.TemporaryDirectory() as folder:
        repo = Path(folder) / "repo"
        write_model_repository(artifact, repo, TritonOptions(max_batch=8, queue_delay_us=5000, kind="cpu"))
        server = triton_server.Server(venv, triton_server.backends(venv, Path(folder) / "backends"), repo,
                                      Path(folder) / "triton.log")
        try:
            for clients in LEVELS:
                print(f"triton: {clients} clients, {requests} requests ...", file=sys.stderr)
                _closed_loop(server.url, name, batch, clients, min(requests, 2 * clients))  # warm
                before = _triton_batches(server.url, name)
                records, wall = _closed_loop(server.url, name, batch, clients, requests)
                after = _triton_batches(server.url, name)
                results["triton"][clients] = _summary(records, wall, {n: c - before.get(n, 0) for n, c in after.items()
                                                                      if c > before.get(n, 0)})
        finally:
            server.stop()
    return results


def _vs_markdown(report: dict) -> str:
    lines = [VS_SECTION, "",
             f"{report['date']}, {report['machine']} ({report['isa']}), loopback; " + ", ".join(
                 f"{k} {v}" for k, v in report["tools"].items()) + f". {report['artifact']} on ONNX Runtime's CPU "
             "provider (intra-op threads = physical cores) behind each server, both batching up to 8 images with "
             "a 5 ms queue delay; closed-loop clients sending one image each as binary tensors (tritonclient.http), "
             f"{report['requests']} requests per level after a warm-up. Triton is 2.51 with the Python-based "
             "onnxruntime backend of tests/triton (its python backend's throughput, not the C++ onnxruntime "
             "backend's). Command: `python tools/load_test.py --vs-triton --write`.", "",
             "| clients | server | requests/s | p50 ms | p99 ms | batches formed (size: count) |",
             "|---:|---|---:|---:|---:|---|"]
    for clients in LEVELS:
        for server in ("serve", "triton"):
            run = report["runs"][server][clients]
            formed = ", ".join(f"{n}: {c}" for n, c in run["batches"].items())
            lines.append(f"| {clients} | {server} | {run['throughput_rps']} | {run['p50_ms']} | {run['p99_ms']} | "
                         f"{formed} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", help="an exported .onnx (default: export resnet50 now)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--overload-clients", type=int, default=200,
                        help="clients of the overload scenario (the 32-image one has 32)")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--only", action="append", choices=[s[0] for s in SCENARIOS],
                        help="run this scenario (repeatable; not with --write, which replaces the whole table)")
    parser.add_argument("--vs-triton", action="store_true", help="serve and a real Triton side by side")
    parser.add_argument("--requests", type=int, default=320, help="--vs-triton: requests per concurrency level")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--write", action="store_true", help="replace the serving section of BENCHMARKS.md")
    args = parser.parse_args()
    if args.only and args.write:
        parser.error("--only runs part of the table: --write replaces the whole section, so give one or the other")
    with tempfile.TemporaryDirectory() as out:
        if args.artifact:
            artifact = Path(args.artifact)
        else:
            print("exporting resnet50 ...", file=sys.stderr)
            artifact = export("resnet50", out=out, batch="1:8:32", quiet=True).onnx_path
        if args.vs_triton:
            return _report_vs_triton(artifact, args)
        name = artifact.name.split(".")[0]
        runs = {}
        for label, options, clients, images, nice in SCENARIOS:
            clients = {"clients": args.clients, "overload": args.overload_clients}.get(clients, clients)
            if args.only and label not in args.only:
                continue
            print(f"{label}: {clients} clients for {args.seconds:g} s ...", file=sys.stderr)
            runs[label] = scenario(artifact, name, options, clients, args.seconds, images, nice)
    cpu = cpu_description()
    report = {"date": date.today().isoformat(), "machine": f"{cpu['model']}, {cpu['physical_cores']} cores",
              "isa": ", ".join(cpu["isa"]), "tools": tool_versions(), "artifact": artifact.name, "runs": runs}
    text = _markdown(report)
    print(json.dumps(report, indent=2) if args.json else text)
    if args.write:
        replace_section(SECTION, text)
    failed = sum(n for run in runs.values() for status, n in run["statuses"].items() if status not in ("200", "503"))
    overfull = [label for label, run in runs.items() if run["deepest_queue"] is None or run["deepest_queue"] > _queue(
        run["options"])]
    if overfull:
        print(f"the queue bound did not hold (or /metrics did not answer) in: {', '.join(overfull)}", file=sys.stderr)
    return 1 if failed or overfull or not all(run["server_alive_after"] for run in runs.values()) else 0


def _queue(options: str) -> int:
    """The --queue a scenario's server ran with (serve's default where not given)."""
    from resnet_deploy.serving.limits import DEFAULT_QUEUE

    words = options.split()
    return int(words[words.index("--queue") + 1]) if "--queue" in words else DEFAULT_QUEUE


def _report_vs_triton(artifact: Path, args: argparse.Namespace) -> int:
    cpu = cpu_description()
    report = {"date": date.today().isoformat(), "machine": f"{cpu['model']}, {cpu['physical_cores']} cores",
              "isa": ", ".join(cpu["isa"]), "tools": tool_versions(), "artifact": artifact.name,
              "requests": args.requests, "runs": vs_triton(artifact, args.requests)}
    text = _vs_markdown(report)
    print(json.dumps(report, indent=2) if args.json else text)
    if args.write:
        replace_section(VS_SECTION, text)
    return 0


def _markdown(report: dict) -> str:
    lines = [SECTION, "",
             f"{report['date']}, {report['machine']} ({report['isa']}), loopback; "
             + ", ".join(f"{k} {v}" for k, v in report["tools"].items())
             + f". {report['artifact']} (ONNX Runtime CPU) behind `resnet-deploy serve`; closed-loop clients sending one "
             "image each (the last scenario: 32) as binary tensors (tritonclient.http), the overload clients at nice "
             f"{OVERLOAD_NICE} (they share the server's cores); a readiness probe in a process of its own every 50 ms; "
             "server RSS after a one-image warm-up, at its peak, after the load. Command: "
             "`python tools/load_test.py --write`.", "",
             "| scenario | server options | clients | requests | answers | requests/s | p50 ms | p99 ms | mean server batch "
             "| deepest queue | readiness p50 / max ms | server RSS MiB before / peak / after |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, run in report["runs"].items():
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(run["statuses"].items()))
        lines.append(f"| {label} | `{run['options']}` | {run['clients']} | {run['requests']} | {answers} | "
                     f"{run['throughput_rps']} | {run['p50_ms']} | {run['p99_ms']} | {run['mean_server_batch']} | "
                     f"{run['deepest_queue']} | {run['ready_p50_ms']} / {run['ready_max_ms']} | "
                     f"{run['rss_mib']['before']} / {run['rss_mib']['peak']} / {run['rss_mib']['after']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
