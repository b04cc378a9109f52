#!/usr/bin/env python3
"""`resnet-deploy serve` against a real Triton Inference Server, measured by Triton's own load tool.

Why: a comparison with Triton made by a client we wrote ourselves (tools/load_test.py) can always be
suspected of favouring serve. perf_analyzer is the tool Triton and KServe users run to size a deployment,
so its figures on both servers, same artifact, same batching settings, same machine, are the ones they
will compare. It needs the model's JSON config (`GET /v2/models/NAME/config`) and speaks HTTP and gRPC.

What it does: starts (a) `resnet-deploy serve ARTIFACT` and (b) Triton 2.51 (the nvidia-pytriton wheel's
binary, started by tests/triton/server.py, with the Python-based onnxruntime backend of tests/triton: its
python backend's throughput, not Triton's C++ onnxruntime backend's) on the repository `resnet-deploy
triton` writes, both on free loopback ports, both with the same dynamic batching (--max-batch,
--max-delay-ms). Then perf_analyzer runs at each concurrency (`--concurrency-range N:N`, batch 1,
`--input-data zero`: its random default bytes hold NaN/Inf as FP32) against each server and protocol,
interleaved: every round visits every (concurrency, protocol, server), the server order alternating between
rounds. Throughput and p50/p99 latency come from its CSV report (-f); the table shows the median over
rounds. Servers are always stopped by PID (SIGTERM, then SIGKILL after a bound).

perf_analyzer's wheel needs glibc >= 2.38: run tools/fetch_perf_analyzer.sh first (no root, nothing on the
system changes). Run this with the project's venv (it imports tests.triton.server):

    .venv/bin/resnet-deploy export --arch resnet18 --out /tmp/r18
    .venv/bin/python tools/perf_compare.py /tmp/r18/resnet18.onnx [--protocols http,grpc] [--rounds 3]

Both servers and perf_analyzer share this machine's cores: the figures are for client and server on one
host, as a loopback benchmark always is.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' own server helpers: Triton's start and stop, readiness, free ports
sys.path.insert(0, str(ROOT / "tools"))
from benchmarks_md import replace_section  # noqa: E402  (tools/, the script's folder)
from tests.conftest import wait_until_ready  # noqa: E402
from tests.triton import server as triton_server  # noqa: E402
from tests.triton.server import free_ports  # noqa: E402
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resnet-deploy"
PERF_ANALYZER = CACHE / "perf_analyzer" / "perf_analyzer"  # tools/fetch_perf_analyzer.sh's default
SERVERS = ("serve", "serve-auto", "triton")
TITLES = {"serve": "serve", "serve-auto": "serve auto", "triton": "Triton"}
# serve: ONNX Runtime, the runtime behind the Triton measured here; serve-auto: tune's plan (run `resnet-deploy
# tune ARTIFACT` first; without a plan, auto is the file's own runtime, ONNX Runtime for an ONNX file)
SERVE_BACKENDS = {"serve": "ort", "serve-auto": "auto"}
PROTOCOLS = ("http", "grpc")
STOP_S = 30  # SIGTERM, then SIGKILL after this long
SECTION = "## Serving: perf_analyzer against serve and Triton"
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx")


class Failure(Exception):
    """One line for the user; the exit is non-zero."""


class Unstable(Failure):
    """perf_analyzer found no 3 windows in a row within --stability-percentage (exit 2, no CSV written)."""


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"positive integers, got {text!r}")
    return values


def _names(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in allowed]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"a comma-separated subset of {','.join(allowed)}, got {text!r}")
    return list(dict.fromkeys(names))


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one and the help does not already say it."""

    def _get_help_string(self, action):
        if action.default in (None, "") or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="perf_compare.py", description=__doc__.split("\n\n")[0],
        epilog="Example: .venv/bin/python tools/perf_compare.py /tmp/r18/resnet18.onnx --rounds 1 "
               "--measurement-interval 2000 --concurrency 1,8",
        formatter_class=_Help)
    parser.add_argument("artifact", type=Path, help="an exported ONNX file (resnet-deploy export's NAME.onnx)")
    parser.add_argument("--model-name", help="model name on both servers (default: the artifact's stem)")
    parser.add_argument("--servers", default="serve,triton", type=lambda t: _names(t, SERVERS, "--servers"),
                        help="which servers to measure")
    parser.add_argument("--protocols", default="http", type=lambda t: _names(t, PROTOCOLS, "--protocols"),
                        help="perf_analyzer -i values; grpc starts serve with --grpc-port")
    parser.add_argument("--concurrency", default="1,4,8,16", type=lambda t: _int_list(t, "--concurrency"),
                        help="concurrency levels, each one perf_analyzer run (--concurrency-range N:N)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table shows medians")
    parser.add_argument("--measurement-interval", type=int, default=5000, metavar="MS",
                        help="perf_analyzer's measurement window")
    parser.add_argument("--max-trials", type=int, default=10,
                        help="perf_analyzer -r: windows tried until 3 in a row are stable")
    parser.add_argument("--stability-percentage", type=float, default=10.0,
                        help="perf_analyzer -s: allowed max/min spread of those 3 windows")
    parser.add_argument("--warmup-requests", type=int, default=20,
                        help="perf_analyzer --warmup-request-count: requests sent before each measurement")
    parser.add_argument("--max-batch", type=int,
                        help="largest batch both dynamic batchers form (default: each tool's own, the profile's MAX)")
    parser.add_argument("--max-delay-ms", type=float, default=2.0,
                        help="batching delay of both: serve --max-delay-ms, Triton max_queue_delay_microseconds")
    parser.add_argument("--serve-args", default="", help="extra flags for `resnet-deploy serve`, given with '=': --serve-args='--backend auto'")
    parser.add_argument("--triton-args", default="",
                        help="extra flags for `resnet-deploy triton`, given with '=': --triton-args='--preferred 4,8'")
    parser.add_argument("--perf-analyzer", type=Path, default=Path(os.environ.get("PERF_ANALYZER", PERF_ANALYZER)),
                        help="the wrapper tools/fetch_perf_analyzer.sh writes (default: $PERF_ANALYZER, else "
                             f"{PERF_ANALYZER})")
    parser.add_argument("--triton-cache", type=Path,
                        help="folder of the Triton venv (default: the tests' .pytest_cache/d/triton when made, "
                             f"else {CACHE / 'triton'})")
    parser.add_argument("--ready-timeout", type=float, default=120.0, metavar="S", help="bound on serve's start")
    parser.add_argument("--pause", type=float, default=1.0, metavar="S",
                        help="idle time between perf_analyzer runs (lets the other runtime's threads settle)")
    parser.add_argument("--workdir", type=Path,
                        help="keep the model repository, server logs and perf_analyzer CSVs here "
                             "(default: a temporary folder, removed after a successful run)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every run's figures here")
    parser.add_argument("--write", action="store_true", help=f"put the table in BENCHMARKS.md ({SECTION!r})")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.measurement_interval < 100 or args.max_trials < 1 or args.warmup_requests < 0:
        parser.error("--rounds >= 1, --measurement-interval >= 100, --max-trials >= 1, --warmup-requests >= 0")
    if args.max_batch is not None and args.max_batch < 1:
        parser.error("--max-batch must be >= 1")
    if args.max_delay_ms < 0:
        parser.error("--max-delay-ms must be >= 0")
    return args


# ---------------------------------------------------------------- the machine

def machine() -> tuple[str, list[str]]:
    """CPU model and the ISA flags that decide ONNX Runtime's kernels (from /proc/cpuinfo)."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    if any(flag.startswith("amx") for flag in flags):  # amx_tile, amx_bf16, amx_int8
        flags.add("amx")
    return model, [flag for flag in ISA_FLAGS if flag in flags]


# ---------------------------------------------------------------- servers

def _tail(path: Path, lines: int = 1) -> str:
    try:
        text = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def _wait_port(port: int, process: subprocess.Popen, deadline: float) -> bool:
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


class Serve:
    """`resnet-deploy serve` in a session of its own (``name`` serve-auto: with ``--backend auto``); ``urls``
    maps protocol to host:port."""

    def __init__(self, name: str, artifact: Path, model: str, protocols: list[str], args: argparse.Namespace,
                 log: Path):
        self.name = name
        http, grpc = free_ports(2)
        self.urls = {"http": f"127.0.0.1:{http}"}
        command = [sys.executable, "-m", "resnet_deploy.cli", "serve", str(artifact), "--model-name", model,
                   "--host", "127.0.0.1", "--port", str(http), "--max-delay-ms", f"{args.max_delay_ms:g}"]
        if args.max_batch:
            command += ["--max-batch", str(args.max_batch)]
        if "grpc" in protocols:
            command += ["--grpc-port", str(grpc)]
            self.urls["grpc"] = f"127.0.0.1:{grpc}"
        command += ["--backend", SERVE_BACKENDS[name], *shlex.split(args.serve_args)]
        self.log = log
        print(f"starting: {shlex.join(command)}", file=sys.stderr)
        with log.open("w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                            start_new_session=True)
        try:
            self._wait_ready(args.ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            wait_until_ready(f"http://{self.urls['http']}/v2/health/ready", self.process, seconds,
                             lambda: f"{_tail(self.log)} (log: {self.log})")
        except RuntimeError as exc:
            raise Failure(f"serve: {' '.join(str(exc).split())}") from None
        if "grpc" in self.urls and not _wait_port(int(self.urls["grpc"].rsplit(":", 1)[1]), self.process, deadline):
            raise Failure(f"serve's gRPC port {self.urls['grpc']} did not open: {_tail(self.log)} (log: {self.log})")

    def stop(self) -> None:
        stop_group(self.process)


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process's session (its PID is the group's), SIGKILL after STOP_S, and reap it."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_S)
        except ProcessLookupError:
            process.wait(timeout=STOP_S)
    try:  # a child left in the group after its leader exited
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Triton:
    """Triton 2.51 on the repository `resnet-deploy triton` writes, through tests/triton/server.py."""

    name = "triton"

    def __init__(self, artifact: Path, model: str, args: argparse.Namespace, workdir: Path):
        repo = workdir / "repo"
        command = [sys.executable, "-m", "resnet_deploy.cli", "triton", str(artifact), "--repo", str(repo),
                   "--model-name", model, "--queue-delay-us", str(round(args.max_delay_ms * 1000))]
        if args.max_batch:
            command += ["--max-batch", str(args.max_batch)]
        command += shlex.split(args.triton_args)
        print(f"writing: {shlex.join(command)}", file=sys.stderr)
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            why = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
            raise Failure(f"resnet-deploy triton failed ({done.returncode}): {why}")
        venv = self._environment(triton_server, args.triton_cache)
        backends = triton_server.backends(venv, workdir / "backends")
        print(f"starting: tritonserver on {repo} (venv {venv})", file=sys.stderr)
        # Made in two steps so that an interrupt while Server waits for readiness (it stops itself only on
        # RuntimeError) still finds the process to stop.
        self.server = triton_server.Server.__new__(triton_server.Server)
        try:
            self.server.__init__(venv, backends, repo, workdir / "triton.log")
        except RuntimeError as exc:
            raise Failure(f"tritonserver did not start: {str(exc).splitlines()[0]} "
                          f"(log: {workdir / 'triton.log'})") from None
        except BaseException:
            if hasattr(self.server, "process"):
                self.server.stop()
            raise
        arguments = list(self.server.process.args)
        self.urls = {"http": self.server.url,
                     "grpc": f"127.0.0.1:{arguments[arguments.index('--grpc-port') + 1]}"}

    @staticmethod
    def _environment(triton_server, cache: Path | None) -> Path:
        import pytest  # tests.conftest's pip() skips or fails the way pytest does

        if cache is None:
            tests_cache = ROOT / ".pytest_cache" / "d" / "triton"
            cache = tests_cache if (tests_cache / "venv" / ".complete").exists() else CACHE / "triton"
        cache.mkdir(parents=True, exist_ok=True)
        if not (cache / "venv" / ".complete").exists():
            print(f"making Triton's environment in {cache / 'venv'} (once) ...", file=sys.stderr)
        try:
            return triton_server.environment(cache)
        except (pytest.skip.Exception, pytest.fail.Exception) as exc:
            raise Failure(f"Triton's environment could not be made in {cache}: "
                          f"{str(exc).strip().splitlines()[0]}") from None
        except subprocess.CalledProcessError as exc:
            raise Failure(f"Triton's environment could not be made in {cache}: {exc}") from None

    def stop(self) -> None:
        self.server.stop()


def preflight(server, model: str) -> None:
    """What perf_analyzer asks first (server metadata, model metadata, model config), over HTTP: a clear line
    now rather than its parse error after the other server's runs."""
    for path in ("/v2", f"/v2/models/{model}", f"/v2/models/{model}/config"):
        url = f"http://{server.urls['http']}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            raise Failure(f"{server.name} answers GET {path} with HTTP {exc.code}: perf_analyzer needs it") from None
        except (OSError, ValueError) as exc:
            raise Failure(f"{server.name} gives no JSON for GET {path} ({exc}): perf_analyzer needs it") from None


# ---------------------------------------------------------------- perf_analyzer

def perf_analyzer_works(path: Path) -> str:
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise Failure(f"perf_analyzer not found at {path}: run tools/fetch_perf_analyzer.sh "
                      "(or give --perf-analyzer / $PERF_ANALYZER)")
    done = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60)
    version = (done.stdout + done.stderr).strip()
    if done.returncode != 0 or "Version" not in version:
        raise Failure(f"{path} --version failed ({done.returncode}): {version.splitlines()[-1] if version else ''}; "
                      "rerun tools/fetch_perf_analyzer.sh")
    return version.splitlines()[0]


# perf_analyzer's CSV header (2.60, seen here): "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,
# Server Queue,Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,
# p95 latency,p99 latency", times in microseconds (the Server columns from the model's /stats).
def read_csv(path: Path) -> dict[str, float]:
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise Failure(f"perf_analyzer wrote no measurement in {path}")
    row = {key.strip(): value for key, value in rows[0].items() if key}
    try:
        return {"infer_per_s": float(row["Inferences/Second"]), "p50_ms": float(row["p50 latency"]) / 1000,
                "p99_ms": float(row["p99 latency"]) / 1000}
    except (KeyError, ValueError) as exc:
        raise Failure(f"unexpected perf_analyzer CSV in {path}: {exc} (columns: {', '.join(row)})") from None


def run_perf_analyzer(args: argparse.Namespace, model: str, server: str, protocol: str, url: str,
                      concurrency: int, csv_path: Path, log: Path) -> dict[str, float]:
    command = [str(args.perf_analyzer), "-m", model, "-u", url, "-i", protocol, "-b", "1",
               "--concurrency-range", f"{concurrency}:{concurrency}", "--input-data", "zero",
               "--measurement-interval", str(args.measurement_interval), "-r", str(args.max_trials),
               "-s", f"{args.stability_percentage:g}", "--warmup-request-count", str(args.warmup_requests),
               "-f", str(csv_path)]
    # Every trial is one window; then a bound for its start, warm-up and the server's slowest answer.
    bound = args.measurement_interval / 1000 * (args.max_trials + 2) + 60
    with log.open("w") as out:
        out.write(shlex.join(command) + "\n")
        out.flush()
        try:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=bound)
        except subprocess.TimeoutExpired:  # subprocess.run kills it
            raise Failure(f"perf_analyzer against {server} ({protocol}, concurrency {concurrency}) ran past "
                          f"{bound:.0f} s (log: {log})") from None
    if done.returncode != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines()[1:] if line.strip()]
        errors = [line for line in lines if "rror" in line or "ailed" in line]
        why = (errors or lines or ["no output"])[0].strip()
        kind = Unstable if "Failed to obtain stable measurement" in why else Failure
        raise kind(f"perf_analyzer against {server} ({protocol}, concurrency {concurrency}) failed "
                      f"({done.returncode}): {why} (log: {log})")
    return read_csv(csv_path)


# ---------------------------------------------------------------- the report

def _median(runs: list[dict[str, float]], key: str) -> float | None:
    return statistics.median(run[key] for run in runs) if runs else None


def markdown(results: dict, unstable: dict, args: argparse.Namespace, model: str, version: str,
             load: float) -> str:
    cpu, flags = machine()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    batching = (f"max batch {args.max_batch or 'profile MAX'}, delay {args.max_delay_ms:g} ms"
                + (f", serve {args.serve_args}" if args.serve_args else "")
                + (f", triton {args.triton_args}" if args.triton_args else ""))
    lines = [f"{when}; {cpu}, {os.cpu_count()} CPUs, ISA: {', '.join(flags) or 'none of ' + '/'.join(ISA_FLAGS)}; "
             f"artifact {args.artifact} (model {model}); batch 1; {batching}; perf_analyzer ({version}) "
             f"--input-data zero, {args.measurement_interval} ms windows, median of {args.rounds} interleaved "
             f"round(s); Triton 2.51 with the Python-based onnxruntime backend of tests/triton; "
             f"1-min load average before the start {load:.2f}.", ""]
    several, names = len(args.protocols) > 1, args.servers
    versus = [name for name in names if name != "triton"] if "triton" in names else []
    head = (["protocol"] if several else []) + ["concurrency"] + [f"{TITLES[n]} infer/s" for n in names] \
        + [f"{TITLES[n]}/Triton" for n in versus] + [f"{TITLES[n]} p50/p99 ms" for n in names]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(head))) + "|"]

    def mark(key: tuple) -> str:  # how many rounds are in the median, when unstable runs were left out
        return f" ({len(results.get(key, []))}/{args.rounds})" if unstable.get(key) else ""

    def throughput(key: tuple) -> str:
        value = _median(results.get(key, []), "infer_per_s")
        if value is None:
            return "unstable" if unstable.get(key) else "n/a"
        return f"{value:.1f}{mark(key)}"

    def ratio(key: tuple, triton: tuple) -> str:
        ours, theirs = (_median(results.get(k, []), "infer_per_s") for k in (key, triton))
        return f"{ours / theirs:.2f}" if ours is not None and theirs else "n/a"

    def latency(key: tuple) -> str:
        runs = results.get(key, [])
        if not runs:
            return "unstable" if unstable.get(key) else "n/a"
        return f"{_median(runs, 'p50_ms'):.1f} / {_median(runs, 'p99_ms'):.1f}"

    for protocol in args.protocols:
        for concurrency in args.concurrency:
            keys = {name: (name, protocol, concurrency) for name in names}
            cells = ([protocol] if several else []) + [str(concurrency)] + [throughput(keys[n]) for n in names] \
                + [ratio(keys[n], ("triton", protocol, concurrency)) for n in versus] + [latency(keys[n]) for n in names]
            lines.append("| " + " | ".join(cells) + " |")
    if unstable:
        lines += ["", f"(k/{args.rounds}): median of the k rounds where perf_analyzer found a stable measurement "
                      f"(3 windows in a row within {args.stability_percentage:g}%, at most {args.max_trials} "
                      "windows, tried twice); the others are left out."]
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def benchmark(args: argparse.Namespace, workdir: Path) -> tuple[dict, dict, str, str]:
    artifact = args.artifact.resolve()
    if not artifact.is_file():
        raise Failure(f"no such file: {args.artifact}")
    model = args.model_name or artifact.name.split(".")[0]
    version = perf_analyzer_works(args.perf_analyzer)
    servers = []
    results: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    unstable: dict[tuple[str, str, int], int] = {}  # runs left out, by (server, protocol, concurrency)
    try:
        for name in args.servers:
            if name.startswith("serve"):
                servers.append(Serve(name, artifact, model, args.protocols, args, workdir / f"{name}.log"))
            else:
                servers.append(Triton(artifact, model, args, workdir))
            preflight(servers[-1], model)
        total = args.rounds * len(args.concurrency) * len(args.protocols) * len(servers)
        count = 0
        for round_ in range(args.rounds):
            order = servers if round_ % 2 == 0 else servers[::-1]
            for concurrency in args.concurrency:
                for protocol in args.protocols:
                    for server in order:
                        count += 1
                        stem = f"{server.name}-{protocol}-c{concurrency}-r{round_ + 1}"
                        key = (server.name, protocol, concurrency)
                        for attempt in (1, 2):  # an unstable run is tried once more, then left out
                            time.sleep(args.pause)
                            try:
                                figures = run_perf_analyzer(args, model, server.name, protocol, server.urls[protocol],
                                                            concurrency, workdir / f"{stem}.csv",
                                                            workdir / f"{stem}-{attempt}.log")
                                break
                            except Unstable as exc:
                                print(f"[{count}/{total}] {'retrying' if attempt == 1 else 'left out'}: {exc}",
                                      file=sys.stderr)
                        else:
                            unstable[key] = unstable.get(key, 0) + 1
                            continue
                        results.setdefault(key, []).append(figures)
                        print(f"[{count}/{total}] round {round_ + 1} {server.name} {protocol} concurrency "
                              f"{concurrency}: {figures['infer_per_s']:.1f} infer/s, p50 {figures['p50_ms']:.1f} ms, "
                              f"p99 {figures['p99_ms']:.1f} ms", file=sys.stderr)
    finally:
        for server in reversed(servers):
            server.stop()
    return results, unstable, model, version


def _terminate(signum, frame):  # SIGTERM/SIGHUP: leave through the finally blocks that stop the servers
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    load = os.getloadavg()[0]  # another job on these shared cores shows here
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="perf_compare-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        results, unstable, model, version = benchmark(args, workdir)
    except BaseException as exc:  # the servers are stopped by now (benchmark's finally)
        if args.workdir is None:  # keep the logs, not the temporary model copies
            for folder in ("repo", "backends"):
                shutil.rmtree(workdir / folder, ignore_errors=True)
            if not any(workdir.iterdir()):
                workdir.rmdir()
        if isinstance(exc, KeyboardInterrupt):
            why, code = "interrupted", 130
        elif isinstance(exc, SystemExit):  # from _terminate
            why, code = f"terminated by signal {int(exc.code) - 128}", int(exc.code)
        elif isinstance(exc, Failure):
            print(f"perf_compare: error: {exc}", file=sys.stderr)
            return 1
        elif isinstance(exc, Exception):
            why, code = f"{type(exc).__name__}: {exc}", 1
        else:
            raise
        print(f"perf_compare: error: {why} (logs: {workdir})", file=sys.stderr)
        return code
    table = markdown(results, unstable, args, model, version, load)
    print(table)
    if args.write:
        command = shlex.join(["python", "tools/perf_compare.py", *(argv if argv is not None else sys.argv[1:])])
        replace_section(SECTION, f"{SECTION}\n\n{table}\n\nCommand: `{command}`.")
    if args.json:
        args.json.write_text(json.dumps(
            {"artifact": str(args.artifact), "model": model, "perf_analyzer": version,
             "runs": [{"server": s, "protocol": p, "concurrency": c, "figures": results.get((s, p, c), []),
                       "unstable_left_out": unstable.get((s, p, c), 0)}
                      for (s, p, c) in sorted(set(results) | set(unstable))]}, indent=2) + "\n")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
