#!/usr/bin/env python3
"""The reproducible CPU benchmark: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime int8, side by side.

What it does, so the figures can be checked:
- exports ARCH (default resnet50) at 224 with random-init weights: the fp32 ONNX and two int8
  ONNX for the `cpu` target (u8 activations, s8 per-channel weights), one with 8-bit weights and
  one with 7-bit weights (`--reduce-range`, the default on x86 without VNNI, where the 8-bit
  kernels saturate), calibrated on 32 random images (calibration data changes scales, not speed);
- measures the machine's float32 matrix-multiply rate: 2048x2048 products on as many threads
  as the runtimes get, median of 20, through torch.mm, numpy and ONNX Runtime's MatMul, and
  takes the best (on this AMD machine MKL's torch.mm is the slowest of the three);
- loads the runners with `resnet_deploy.runtime.load` (torch backend, ORT fp32 and both int8 files,
  and where `openvino` is installed the same three files on OpenVINO)
  and times them with `resnet_deploy.bench.bench`, the code behind `resnet-deploy bench`:
  interleaved blocks of about 0.25 s, each after one untimed call and a 50 ms pause, the order
  rotated every round, because runtimes keep thread pools spinning after a call and slow
  whichever runs next (seen here: a matmul fell from 270 to 116 GFLOP/s when alternated call by
  call with ONNX Runtime);
- checks that bench adds no overhead and hides none: bench's p50 for ORT fp32 at batch 1 against
  a plain `session.run` loop on the same session, alternated block by block;
- reports per runtime and batch size the latencies, images/s, and for batch 1 the ratios and
  ONNX Runtime fp32's achieved rate against the measured matmul rate;
- writes JSON (--json) and, with --write, replaces the CPU section of BENCHMARKS.md.

    python tools/bench_cpu.py [--arch resnet50] [--batch-sizes 1,8,32] [--duration 5] [--write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks_md import replace_section  # noqa: E402  (tools/, the script's folder)
from resnet_deploy import export, runtime  # noqa: E402
from resnet_deploy.backends import detect  # noqa: E402
from resnet_deploy.bench import bench, stderr_progress  # noqa: E402
from resnet_deploy.data import random_images  # noqa: E402
from resnet_deploy.environment import cpu_description, physical_cores, tool_versions  # noqa: E402
from resnet_deploy.errors import DeployWarning  # noqa: E402
from resnet_deploy.models import get_model_info  # noqa: E402

# the runners, in table order: PyTorch, then ONNX Runtime and OpenVINO on the same three files
LABELS = ("torch eager fp32", "onnxruntime fp32", "onnxruntime int8 (cpu target, 8-bit weights)",
          "onnxruntime int8 (cpu target, 7-bit weights: reduce_range)", "openvino fp32",
          "openvino int8 (cpu target, 8-bit weights)", "openvino int8 (cpu target, 7-bit weights: reduce_range)")
ISA_NAMES = {"vnni": "AVX-512 VNNI", "avx2": "AVX2, no VNNI", "other": "not x86"}


def section(isa: str) -> str:
    """One BENCHMARKS.md section per INT8 instruction set: the figures of one never replace the other's."""
    return f"## CPU ({ISA_NAMES[isa]}): PyTorch eager, ONNX Runtime and OpenVINO, fp32 and int8"


def former_section(isa: str) -> str:
    """The section's title before OpenVINO was measured too."""
    return f"## CPU ({ISA_NAMES[isa]}): PyTorch eager vs ONNX Runtime fp32 vs int8"


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


def plain_loop_check(runner, rounds: int = 8, calls: int = 10) -> dict[str, float]:
    """bench's p50 vs a bare ``session.run`` loop on the same ORT session, alternated block by block."""
    batch = random_images(1, runner.example_batch(1).shape[1:], (0.5,) * 3, (0.25,) * 3)
    feed = {runner.input_name: batch}
    plain, measured = [], []
    for _ in range(rounds):
        measured += bench([("ort", runner)], [1], iterations=calls, warmup=1)[0].samples_s
        runner.session.run(None, feed)
        for _ in range(calls):
            start = time.perf_counter()
            runner.session.run(None, feed)
            plain.append(time.perf_counter() - start)
        time.sleep(0.05)
    bench_ms, plain_ms = statistics.median(measured) * 1e3, statistics.median(plain) * 1e3
    return {"bench_p50_ms": round(bench_ms, 2), "plain_loop_p50_ms": round(plain_ms, 2),
            "ratio": round(bench_ms / plain_ms, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--duration", type=float, default=5.0, help="timed seconds per runtime and batch size")
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
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory() as out:
        print("exporting fp32 and int8 (cpu target, 8-bit and 7-bit weights) ...", file=sys.stderr)
        common = {"batch": f"1:{max(sizes)}:{max(sizes)}", "int8": True, "int8_target": "cpu", "calib_data": "random",
                  "calib_size": 32, "quiet": True}
        result = export(args.arch, out=out, reduce_range=False, **common)
        reduced = export(args.arch, out=out, name=f"{args.arch}-rr", reduce_range=True, **common)
        with warnings.catch_warnings():  # the 8-bit artifact on a CPU without VNNI: measured on purpose
            warnings.simplefilter("ignore", DeployWarning)
            runners = [
                (LABELS[0], runtime.load(result.paths["fp32"], backend="torch", threads=threads)),
                (LABELS[1], runtime.load(result.paths["fp32"], threads=threads)),
                (LABELS[2], runtime.load(result.paths["int8"], threads=threads)),
                (LABELS[3], runtime.load(reduced.paths["int8"], threads=threads)),
            ]
            if detect.openvino().available:  # the same files on OpenVINO's CPU plugin
                runners += [(label, runtime.load(path, backend="openvino", threads=threads)) for label, path in zip(
                    LABELS[4:], (result.paths["fp32"], result.paths["int8"], reduced.paths["int8"]))]
        results = bench(runners, sizes, duration=args.duration, progress=stderr_progress)
        print(file=sys.stderr)
        print("bench vs a plain session.run loop ...", file=sys.stderr)
        overhead = plain_loop_check(runners[1][1])
    rows = [{
        "runtime": r.label, "batch": r.batch, "calls": r.iterations,
        **{f"{k}_ms": round(v, 2) for k, v in r.latency_ms.items()},
        "images_per_s": round(r.images_per_s, 1),
        "gflops": round(gflop_per_image * r.batch / r.latency_ms["p50"] * 1e3, 1),
    } for r in results]
    batch1 = {r["runtime"]: r["p50_ms"] for r in rows if r["batch"] == 1}
    eager, fp32, int8, int8_reduced, ov_fp32, ov_int8, ov_int8_reduced = (batch1.get(label) for label in LABELS)
    cpu = cpu_description()
    report = {
        "date": date.today().isoformat(),
        "machine": f"{cpu['model']}, {cpu['logical_cores']} logical / {cpu['physical_cores']} physical cores",
        "cpu_flags": cpu["isa"],
        "int8_isa": cpu["int8_isa"],
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
            "ort_int8_reduce_range_over_ort_fp32": round(int8_reduced / fp32, 3) if fp32 else None,
            "ort_fp32_share_of_matmul_rate": round(gflop_per_image / (fp32 / 1e3) / peak, 3) if fp32 else None,
            "openvino_fp32_over_ort_fp32": round(ov_fp32 / fp32, 3) if ov_fp32 else None,
            "openvino_int8_over_ort_int8": round(ov_int8 / int8, 3) if ov_int8 else None,
            "openvino_int8_reduce_range_over_ort_int8_reduce_range":
                round(ov_int8_reduced / int8_reduced, 3) if ov_int8_reduced else None,
        },
        "bench_overhead": overhead,
    }
    text = _markdown(report)
    print(json.dumps(report, indent=2) if args.json else text)
    if args.write:
        replace_section(section(report["int8_isa"]), text, formerly=(former_section(report["int8_isa"]),))
    return 0


def _markdown(report: dict) -> str:
    b1 = report["batch1"]
    lines = [
        section(report["int8_isa"]),
        "",
        f"{report['date']}, {report['machine']} ({', '.join(report['cpu_flags'])}; INT8 kernels: "
        f"{ISA_NAMES[report['int8_isa']]}), {report['threads']} threads; "
        + ", ".join(f"{k} {v}" for k, v in report["tools"].items()) + ".",
        f"{report['arch']} at 224, random-init weights, {report['gflop_per_image']:.2f} GFLOP per image. "
        "Measured float32 matmul rate, 2048^2, median of 20: "
        + ", ".join(f"{k} {v}" for k, v in report["matmul_gflops"].items())
        + f" GFLOP/s; the machine's rate is the best, {report['matmul_peak_gflops']} GFLOP/s. "
        "Command: `python tools/bench_cpu.py --write`.",
        "",
        "| runtime | batch | calls | min ms | mean ms | p50 ms | p90 ms | p99 ms | images/s | GFLOP/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['runtime']} | {r['batch']} | {r['calls']} | {r['min_ms']} | {r['mean_ms']} | "
                     f"{r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['images_per_s']} | {r['gflops']} |")
    lines += [
        "",
        f"Batch 1, medians side by side: ONNX Runtime fp32 / PyTorch eager = **{b1['ort_fp32_over_torch_eager']}** "
        f"(goal <= 0.5); ONNX Runtime int8 / fp32 = **{b1['ort_int8_over_ort_fp32']}** with 8-bit weights, "
        f"**{b1['ort_int8_reduce_range_over_ort_fp32']}** with 7-bit weights (reduce_range) (goal <= 0.45); "
        f"ONNX Runtime fp32 reaches **{b1['ort_fp32_share_of_matmul_rate']:.0%}** of the measured matmul rate "
        "(goal >= 75%)."
        + (f" OpenVINO / ONNX Runtime on the same files: fp32 **{b1['openvino_fp32_over_ort_fp32']}**, "
           f"int8 8-bit weights **{b1['openvino_int8_over_ort_int8']}**, 7-bit weights "
           f"**{b1['openvino_int8_reduce_range_over_ort_int8_reduce_range']}**."
           if b1["openvino_fp32_over_ort_fp32"] else " (OpenVINO not installed: not measured.)"),
        "",
        f"bench's own figure against a plain `session.run` loop on the same session (ORT fp32, batch 1, alternated "
        f"blocks): {report['bench_overhead']['bench_p50_ms']} vs {report['bench_overhead']['plain_loop_p50_ms']} ms, "
        f"ratio **{report['bench_overhead']['ratio']}** (goal within 10%).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
