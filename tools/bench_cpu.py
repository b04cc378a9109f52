#!/usr/bin/env python3
"""The reproducible CPU benchmark: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime int8, side by side.

What it does, so the figures can be checked:
- exports ARCH (default resnet50) at 224 with random-init weights: the fp32 ONNX and an int8
  ONNX for the `cpu` target (u8 activations, s8 per-channel weights), calibrated on 32 random
  images (calibration data changes scales, not speed);
- measures the machine's float32 matrix-multiply rate: 2048x2048 products on as many threads
  as the runtimes get, median of 20, through torch.mm, numpy and ONNX Runtime's MatMul, and
  takes the best (on this AMD machine MKL's torch.mm is the slowest of the three);
- times the three runtimes in short interleaved blocks (one warm-up call, then CALLS timed
  calls, then a 50 ms pause), rotating the order every round, because runtimes keep thread
  pools spinning after a call and slow whichever runs next (seen here: a matmul fell from
  270 to 116 GFLOP/s when alternated call by call with ONNX Runtime);
- reports per runtime and batch size the median latency, images/s, and for batch 1 the ratios
  and ONNX Runtime fp32's achieved rate against the measured matmul rate;
- writes JSON (--json) and, with --write, replaces the CPU section of BENCHMARKS.md.

    python tools/bench_cpu.py [--arch resnet50] [--batch-sizes 1,8,32] [--rounds 15] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_deploy import export  # noqa: E402
from resnet_deploy.backends.onnxrt import OnnxRuntimeRunner, physical_cores  # noqa: E402
from resnet_deploy.backends.pytorch import TorchRunner  # noqa: E402
from resnet_deploy.data import random_images  # noqa: E402
from resnet_deploy.environment import tool_versions  # noqa: E402
from resnet_deploy.models import create_model, get_model_info  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
SECTION = "## CPU: PyTorch eager vs ONNX Runtime fp32 vs int8"


def _median_rate(run, size: int, repeats: int) -> float:
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def matmul_rates(threads: int, size: int = 2048, repeats: int = 20) -> dict[str, float]:
    """Median float32 GEMM GFLOP/s on ``threads`` threads through each library here: torch.mm (MKL),
    numpy (its BLAS) and ONNX Runtime's MatMul (MLAS, what its convolutions use). The machine's
    rate is the best of them."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    torch.set_num_threads(threads)
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    b = np.random.default_rng(1).random((size, size), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    rates = {"torch.mm": _median_rate(lambda: torch.mm(ta, tb), size, repeats)}
    rates["numpy"] = _median_rate(lambda: a @ b, size, repeats)
    spec = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in ("a", "b", "c")]
    model = helper.make_model(helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm", spec[:2], spec[2:]),
                              opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rates["onnxruntime MatMul"] = _median_rate(lambda: session.run(None, {"a": a, "b": b}), size, repeats)
    time.sleep(0.2)  # let ORT's spinning threads settle before the next measurement
    return {k: round(v, 1) for k, v in rates.items()}


def interleaved(runners: dict, batch: np.ndarray, rounds: int, calls: int) -> dict[str, list[float]]:
    """Latencies (s) per runner, measured in blocks rotated across rounds."""
    names = list(runners)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for round_index in range(rounds):
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            run = runners[name]
            run(batch)  # the first call of a block warms caches and thread pools: not counted
            for _ in range(calls):
                start = time.perf_counter()
                run(batch)
                samples[name].append(time.perf_counter() - start)
            time.sleep(0.05)
        print(f"\rround {round_index + 1}/{rounds}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=3, help="timed calls per block at batch 1 (fewer at larger)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--write", action="store_true", help="replace the CPU section of BENCHMARKS.md")
    args = parser.parse_args()

    threads = physical_cores()
    torch.set_num_threads(threads)
    info = get_model_info(args.arch)
    gflop_per_image = 2 * info.gmacs
    print("measuring the float32 matmul rate ...", file=sys.stderr)
    rates = matmul_rates(threads)  # before any model session exists, so nothing else spins
    peak = max(rates.values())
    with tempfile.TemporaryDirectory() as out:
        print("exporting fp32 and int8 (cpu target) ...", file=sys.stderr)
        result = export(args.arch, out=out, int8=True, int8_target="cpu", calib_data="random", calib_size=32,
                        quiet=True)
        torch.manual_seed(0)
        runners = {
            "torch eager fp32": TorchRunner(create_model(args.arch), ["logits"]),
            "onnxruntime fp32": OnnxRuntimeRunner(result.paths["fp32"], threads=threads),
            "onnxruntime int8 (cpu target)": OnnxRuntimeRunner(result.paths["int8"], threads=threads),
        }
        rows = []
        for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
            batch = random_images(batch_size, info.input_size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
            calls = max(1, args.calls // batch_size) if batch_size > 1 else args.calls
            rounds = args.rounds if batch_size == 1 else max(3, args.rounds // 3)
            print(f"batch {batch_size}: {rounds} rounds x {calls} calls per runtime", file=sys.stderr)
            samples = interleaved(runners, batch, rounds, calls)
            for name, times in samples.items():
                median = statistics.median(times)
                rows.append({
                    "runtime": name, "batch": batch_size, "calls": len(times),
                    "median_ms": round(median * 1e3, 2), "p90_ms": round(float(np.percentile(times, 90)) * 1e3, 2),
                    "min_ms": round(min(times) * 1e3, 2), "images_per_s": round(batch_size / median, 1),
                    "gflops": round(gflop_per_image * batch_size / median, 1),
                })
    batch1 = {r["runtime"]: r["median_ms"] for r in rows if r["batch"] == 1}
    eager, fp32, int8 = (batch1.get(name) for name in runners)
    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical / {threads} physical cores",
        "cpu_flags": sorted(f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if _has_flag(f)),
        "tools": tool_versions(),
        "arch": args.arch,
        "gflop_per_image": gflop_per_image,
        "threads": threads,
        "matmul_gflops": rates,
        "matmul_peak_gflops": peak,
        "rows": rows,
        "batch1": {
            "ort_fp32_over_torch_eager": round(fp32 / eager, 3) if eager else None,
            "ort_int8_over_ort_fp32": round(int8 / fp32, 3) if fp32 else None,
            "ort_fp32_share_of_matmul_rate": round(gflop_per_image / (fp32 / 1e3) / peak, 3) if fp32 else None,
        },
    }
    text = _markdown(report)
    print(json.dumps(report, indent=2) if args.json else text)
    if args.write:
        _write_section(text)
    return 0


def _has_flag(flag: str) -> bool:
    try:
        return flag in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def _markdown(report: dict) -> str:
    b1 = report["batch1"]
    lines = [
        SECTION,
        "",
        f"{report['date']}, {report['machine']} ({', '.join(report['cpu_flags'])}), {report['threads']} threads; "
        + ", ".join(f"{k} {v}" for k, v in report["tools"].items()) + ".",
        f"{report['arch']} at 224, random-init weights, {report['gflop_per_image']:.2f} GFLOP per image. "
        "Measured float32 matmul rate, 2048^2, median of 20: "
        + ", ".join(f"{k} {v}" for k, v in report["matmul_gflops"].items())
        + f" GFLOP/s; the machine's rate is the best, {report['matmul_peak_gflops']} GFLOP/s. "
        "Command: `python tools/bench_cpu.py --write`.",
        "",
        "| runtime | batch | median ms | p90 ms | min ms | images/s | GFLOP/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['runtime']} | {r['batch']} | {r['median_ms']} | {r['p90_ms']} | {r['min_ms']} | "
                     f"{r['images_per_s']} | {r['gflops']} |")
    lines += [
        "",
        f"Batch 1, medians side by side: ONNX Runtime fp32 / PyTorch eager = **{b1['ort_fp32_over_torch_eager']}** "
        f"(goal <= 0.5); ONNX Runtime int8 / fp32 = **{b1['ort_int8_over_ort_fp32']}** (goal <= 0.45); "
        f"ONNX Runtime fp32 reaches **{b1['ort_fp32_share_of_matmul_rate']:.0%}** of the measured matmul rate "
        "(goal >= 75%).",
    ]
    return "\n".join(lines)


def _write_section(text: str) -> None:
    current = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n\nFigures measured by the scripts in tools/, with date and machine.\n"
    if SECTION in current:
        head, _, rest = current.partition(SECTION)
        tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
        current = head + text + "\n" + tail
    else:
        current = current.rstrip("\n") + "\n\n" + text + "\n"
    BENCHMARKS.write_text(current)


if __name__ == "__main__":
    sys.exit(main())
