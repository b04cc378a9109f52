#!/usr/bin/env python3
"""The reproducible CPU benchmark: every runtime and precision side by side, tune's pick, and the floor.

What it does, so the figures can be checked:
- exports ARCH (default resnet50) at 224 with random-init weights: the fp32 ONNX, the fp16 graph and two
  int8 ONNX for the `cpu` target (u8 activations, s8 per-channel weights), one with 8-bit weights and
  one with 7-bit weights (`--reduce-range`, the default on x86 without VNNI, where the 8-bit
  kernels saturate), calibrated on 32 random images (calibration data changes scales, not speed);
- measures the machine's physical floor: the multiply-accumulate rate of its fp32, bf16 and int8 matrix
  instructions on as many threads as the runtimes get (2048x2048 products, median of 20, through every
  library here that has them: torch.mm, numpy and ONNX Runtime's MatMul for fp32; torch.mm on bf16
  tensors, oneDNN's AVX512_BF16/AMX path, where the CPU has native bf16; torch._int_mm and ONNX Runtime's
  MatMulInteger, u8 x s8, for int8), the best of each; every row's GMAC/s is given as a share of the
  floor of the precision it computes in;
- loads the runners with `resnet_deploy.target.runtime.load` (torch backend, ORT fp32, fp16 and both int8 files,
  and where `openvino` is installed the fp32 and int8 files on OpenVINO, and the fp32 file computed in
  bf16 where the CPU has native bf16)
  and times them with `resnet_deploy.target.bench.bench`, the code behind `resnet-deploy bench`:
  interleaved blocks of about 0.25 s, each after one untimed call and a 50 ms pause, the order
  rotated every round, because runtimes keep thread pools spinning after a call and slow
  whichever runs next (seen here: a matmul fell from 270 to 116 GFLOP/s when alternated call by
  call with ONNX Runtime);
- checks that bench adds no overhead and hides none: bench's p50 for ORT fp32 at batch 1 against
  a plain `session.run` loop on the same session, alternated block by block;
- reports per runtime and batch size the latencies, images/s, and for batch 1 the ratios and
  ONNX Runtime fp32's achieved rate against the measured matmul rate;
- runs `resnet-deploy tune`'s code on the export (every file x backend that runs here, verified, timed
  side by side in its own run) and reports its pick and the pick's ratio to ONNX Runtime fp32 in that run;
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
from resnet_deploy import export  # noqa: E402
from resnet_deploy.target import runtime  # noqa: E402
from resnet_deploy.backends import detect  # noqa: E402
from resnet_deploy.target.bench import bench, stderr_progress  # noqa: E402
from resnet_deploy.data import random_images  # noqa: E402
from resnet_deploy.environment import bf16_problem, cpu_description, physical_cores, tool_versions  # noqa: E402
from resnet_deploy.target.tune import tune  # noqa: E402
from resnet_deploy.errors import DeployWarning  # noqa: E402
from resnet_deploy.models import get_model_info  # noqa: E402

# the runners, in table order, with the precision each computes in: PyTorch, then ONNX Runtime and OpenVINO
RUNNERS = {
    "torch eager fp32": "fp32", "onnxruntime fp32": "fp32", "onnxruntime fp16 graph": "fp16",
    "onnxruntime int8 (cpu target, 8-bit weights)": "int8",
    "onnxruntime int8 (cpu target, 7-bit weights: reduce_range)": "int8", "openvino fp32 (f32 pinned)": "fp32",
    "openvino int8 (cpu target, 8-bit weights)": "int8",
    "openvino int8 (cpu target, 7-bit weights: reduce_range)": "int8",
    "openvino bf16 (the fp32 file, bf16 inference precision)": "bf16",
}
LABELS = tuple(RUNNERS)
ISA_NAMES = {"vnni": "AVX-512 VNNI", "avx2": "AVX2, no VNNI", "other": "not x86"}


def section(isa: str, bf16: bool) -> str:
    """One BENCHMARKS.md section per kind of CPU (INT8 instructions, native bf16): one never replaces another's."""
    return (f"## CPU ({ISA_NAMES[isa]}{', AVX512_BF16' if bf16 else ''}): PyTorch eager, ONNX Runtime and "
            "OpenVINO, fp32, fp16, bf16 and int8, tune's pick")


def former_sections(isa: str) -> tuple[str, ...]:
    """The section's titles before bf16, fp16 and tune were measured too."""
    return (f"## CPU ({ISA_NAMES[isa]}): PyTorch eager, ONNX Runtime and OpenVINO, fp32 and int8",
            f"## CPU ({ISA_NAMES[isa]}): PyTorch eager vs ONNX Runtime fp32 vs int8")


def _median_rate(run, size: int, repeats: int) -> float:
    """Median GMAC/s of ``run``, one size^3 matrix product."""
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return size**3 / statistics.median(times) / 1e9


def _ort_matmul(op: str, types: tuple[int, int, int], threads: int, size: int) -> object:
    import onnxruntime as ort
    from onnx import helper

    spec = [helper.make_tensor_value_info(n, t, [size, size]) for n, t in zip(("a", "b", "c"), types)]
    model = helper.make_model(helper.make_graph([helper.make_node(op, ["a", "b"], ["c"])], "mm", spec[:2], spec[2:]),
                              opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def floor_rates(threads: int, size: int = 2048, repeats: int = 20) -> dict[str, dict[str, float]]:
    """The physical floor: median GMAC/s of fp32, bf16 and int8 matrix products on ``threads`` threads, through
    every library here that has them (the machine's rate for a precision is the best of them)."""
    from onnx import TensorProto

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    a, b = rng.random((size, size), dtype=np.float32), rng.random((size, size), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    fp32 = _ort_matmul("MatMul", (TensorProto.FLOAT,) * 3, threads, size)
    rates = {"fp32": {"torch.mm": _median_rate(lambda: torch.mm(ta, tb), size, repeats),
                      "numpy": _median_rate(lambda: a @ b, size, repeats),
                      "onnxruntime MatMul": _median_rate(lambda: fp32.run(None, {"a": a, "b": b}), size, repeats)}}
    if bf16_problem() is None:  # emulated bf16 is no floor
        ha, hb = ta.bfloat16(), tb.bfloat16()
        rates["bf16"] = {"torch.mm bf16": _median_rate(lambda: torch.mm(ha, hb), size, repeats)}
    ua = rng.integers(0, 256, (size, size), dtype=np.uint8)
    sb = rng.integers(-128, 128, (size, size), dtype=np.int8)
    int8 = _ort_matmul("MatMulInteger", (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32), threads, size)
    rates["int8"] = {"onnxruntime MatMulInteger": _median_rate(lambda: int8.run(None, {"a": ua, "b": sb}), size,
                                                                repeats)}
    ia, ib = torch.from_numpy(ua.astype(np.int16) - 128).to(torch.int8), torch.from_numpy(sb)
    try:
        rates["int8"]["torch._int_mm"] = _median_rate(lambda: torch._int_mm(ia, ib), size, repeats)
    except (RuntimeError, AttributeError):  # a torch without a CPU int8 matmul
        pass
    time.sleep(0.2)  # let ORT's spinning threads settle before the next measurement
    return {precision: {k: round(v, 1) for k, v in by.items()} for precision, by in rates.items()}


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


# the floor a row is measured against: an fp16 graph on an x86 CPU without AVX512-FP16 is computed in float32
FLOOR_OF = {"fp32": "fp32", "fp16": "fp32", "bf16": "bf16", "int8": "int8"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--duration", type=float, default=5.0, help="timed seconds per runtime and batch size")
    parser.add_argument("--tune-budget", type=float, default=180.0, help="tune's --budget-s")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--write", action="store_true", help="replace this CPU kind's section of BENCHMARKS.md")
    args = parser.parse_args()

    threads = physical_cores()
    torch.set_num_threads(threads)
    info = get_model_info(args.arch)
    print("measuring the fp32, bf16 and int8 matmul rates (the physical floor) ...", file=sys.stderr)
    rates = floor_rates(threads)  # before any model session exists, so nothing else spins
    floor = {precision: max(by.values()) for precision, by in rates.items()}
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    native_bf16 = detect.openvino_bf16()
    with tempfile.TemporaryDirectory() as out:
        print("exporting fp32, fp16 and int8 (cpu target, 8-bit and 7-bit weights) ...", file=sys.stderr)
        common = {"batch": f"1:{max(sizes)}:{max(sizes)}", "int8": True, "int8_target": "cpu", "calib_data": "random",
                  "calib_size": 32, "quiet": True}
        result = export(args.arch, out=out, reduce_range=False, fp16=True, **common)
        reduced = export(args.arch, out=out, name=f"{args.arch}-rr", reduce_range=True, **common)
        paths = {"fp32": result.paths["fp32"], "fp16": result.paths["fp16"], "int8": result.paths["int8"],
                 "int8-rr": reduced.paths["int8"]}
        plan = [(LABELS[0], paths["fp32"], "torch", {}), (LABELS[1], paths["fp32"], "ort", {}),
                (LABELS[2], paths["fp16"], "ort", {}), (LABELS[3], paths["int8"], "ort", {}),
                (LABELS[4], paths["int8-rr"], "ort", {})]
        if detect.openvino().available:  # the same files on OpenVINO's CPU plugin
            plan += [(LABELS[5], paths["fp32"], "openvino", {}), (LABELS[6], paths["int8"], "openvino", {}),
                     (LABELS[7], paths["int8-rr"], "openvino", {})]
        if native_bf16.available:
            plan.append((LABELS[8], paths["fp32"], "openvino", {"bf16": True}))
        with warnings.catch_warnings():  # the 8-bit artifact on a CPU without VNNI: measured on purpose
            warnings.simplefilter("ignore", DeployWarning)
            runners = [(label, runtime.load(path, backend=backend, threads=threads, **own))
                       for label, path, backend, own in plan]
        results = bench(runners, sizes, duration=args.duration, progress=stderr_progress)
        print(file=sys.stderr)
        print("bench vs a plain session.run loop ...", file=sys.stderr)
        overhead = plain_loop_check(runners[1][1])
        for _, runner in runners:
            runner.close()
        print("tune: every file x backend that runs here, verified and timed side by side ...", file=sys.stderr)
        tuned = tune(paths["fp32"], batch_sizes=[1], budget_s=args.tune_budget, write=False, progress=stderr_progress)
        print(file=sys.stderr)
    rows = []
    for r in results:
        gmacs = info.gmacs * r.batch / r.latency_ms["p50"] * 1e3
        precision = RUNNERS[r.label]
        rows.append({
            "runtime": r.label, "computes": precision, "batch": r.batch, "calls": r.iterations,
            **{f"{k}_ms": round(v, 2) for k, v in r.latency_ms.items()},
            "images_per_s": round(r.images_per_s, 1), "gmacs": round(gmacs, 1),
            "floor_share": round(gmacs / floor[FLOOR_OF[precision]], 3) if FLOOR_OF[precision] in floor else None,
        })
    batch1 = {r["runtime"]: r["p50_ms"] for r in rows if r["batch"] == 1}
    eager, fp32 = batch1.get(LABELS[0]), batch1[LABELS[1]]
    choice = tuned.choice
    cpu = cpu_description()
    report = {
        "date": date.today().isoformat(),
        "machine": f"{cpu['model']}, {cpu['logical_cores']} logical / {cpu['physical_cores']} physical cores",
        "cpu_flags": cpu["isa"],
        "int8_isa": cpu["int8_isa"],
        "bf16": native_bf16.available,
        "bf16_reason": native_bf16.reason or None,
        "tools": tool_versions(),
        "arch": args.arch,
        "gmacs_per_image": info.gmacs,
        "threads": threads,
        "floor_gmacs": rates,
        "floor": floor,
        "rows": rows,
        "batch1_vs_ort_fp32": {label: round(ms / fp32, 3) for label, ms in batch1.items()},
        "ort_fp32_over_torch_eager": round(fp32 / eager, 3) if eager else None,
        "bench_overhead": overhead,
        "tune": {
            "choice": choice.config.label if choice else None, "computes": choice.config.precision if choice else None,
            "why": tuned.why, "p50_ms": round(choice.timings[1]["p50_ms"], 2) if choice else None,
            "vs_ort_fp32": round(choice.timings[1]["vs_baseline"], 3) if choice and "vs_baseline" in choice.timings[1]
            else None,
            "candidates": len(tuned.candidates), "passed": sum(bool(c.passed) for c in tuned.candidates),
            "not_available": [f"{s['variant']}: {s['reason']}" for s in tuned.skipped if "cuda" not in s["variant"]
                              and "tensorrt" not in s["variant"]],
            "seconds": round(tuned.seconds, 1),
        },
    }
    text = _markdown(report)
    print(json.dumps(report, indent=2) if args.json else text)
    if args.write:
        replace_section(section(report["int8_isa"], report["bf16"]), text, formerly=former_sections(report["int8_isa"]))
    return 0


def _markdown(report: dict) -> str:
    tuned = report["tune"]
    floor = report["floor"]
    lines = [
        section(report["int8_isa"], report["bf16"]),
        "",
        f"{report['date']}, {report['machine']} ({', '.join(report['cpu_flags'])}; INT8 kernels: "
        f"{ISA_NAMES[report['int8_isa']]}; bf16: {'native' if report['bf16'] else report['bf16_reason']}), "
        f"{report['threads']} threads; " + ", ".join(f"{k} {v}" for k, v in report["tools"].items()) + ".",
        f"{report['arch']} at 224, random-init weights, {report['gmacs_per_image']:.2f} GMAC per image. "
        "Command: `python tools/bench_cpu.py --write`.",
        "",
        "The physical floor (2048^2 matrix products on every thread, median of 20, GMAC/s; the machine's rate for "
        "a precision is the best library's): "
        + "; ".join(f"{precision} **{floor[precision]}** (" + ", ".join(f"{k} {v}" for k, v in by.items()) + ")"
                    for precision, by in report["floor_gmacs"].items())
        + ". At those rates one image takes at least " + ", ".join(
            f"{report['gmacs_per_image'] / rate * 1e3:.1f} ms in {precision}" for precision, rate in floor.items())
        + ".",
        "",
        "Batch 1, medians measured side by side in one run:",
        "",
        "| runtime, precision | p50 | vs ONNX Runtime fp32 | share of its precision's floor |",
        "|---|---:|---:|---:|",
    ]
    for r in (r for r in report["rows"] if r["batch"] == 1):
        share = f"{r['floor_share']:.0%}" if r["floor_share"] is not None else "-"
        lines.append(f"| {r['runtime']} | {r['p50_ms']} ms | {report['batch1_vs_ort_fp32'][r['runtime']]:.2f} | "
                     f"{share} |")
    lines += [
        "",
        f"**tune's pick** (its own run: {tuned['candidates']} configurations, {tuned['passed']} passed verification, "
        f"{tuned['seconds']} s): `{tuned['choice']}` ({tuned['computes']}), p50 **{tuned['p50_ms']} ms**, "
        f"**{tuned['vs_ort_fp32']}x** ONNX Runtime fp32 in the same run; {tuned['why']}."
        + ("".join(f" Not available here: {line}." for line in tuned["not_available"])),
        "",
        "| runtime | computes | batch | calls | min ms | mean ms | p50 ms | p90 ms | p99 ms | images/s | GMAC/s | "
        "share of floor |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        share = f"{r['floor_share']:.0%}" if r["floor_share"] is not None else "-"
        lines.append(f"| {r['runtime']} | {r['computes']} | {r['batch']} | {r['calls']} | {r['min_ms']} | "
                     f"{r['mean_ms']} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['images_per_s']} | "
                     f"{r['gmacs']} | {share} |")
    lines += [
        "",
        f"ONNX Runtime fp32 / PyTorch eager at batch 1: **{report['ort_fp32_over_torch_eager']}** (goal <= 0.5). "
        f"bench's own figure against a plain `session.run` loop on the same session (ORT fp32, batch 1, alternated "
        f"blocks): {report['bench_overhead']['bench_p50_ms']} vs {report['bench_overhead']['plain_loop_p50_ms']} ms, "
        f"ratio **{report['bench_overhead']['ratio']}** (goal within 10%).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
