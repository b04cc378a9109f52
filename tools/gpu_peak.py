#!/usr/bin/env python3
"""The card's measured dense matmul rate (fp32 with TF32 off and on, fp16), for bench_gpu.sh's
images/s-against-peak figures: 8192^2 products, median of 20, timed with CUDA events.

    python tools/gpu_peak.py [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch


def rate(dtype: torch.dtype, size: int = 8192, repeats: int = 20, tf32: bool = False) -> float:
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a = torch.randn(size, size, device="cuda", dtype=dtype)
    b = torch.randn(size, size, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * size**3 / statistics.median(times) / 1e12


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA GPU visible to torch", file=sys.stderr)
        return 2
    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "tflops": {"fp32": round(rate(torch.float32), 1), "tf32": round(rate(torch.float32, tf32=True), 1),
                         "fp16": round(rate(torch.float16), 1)}}
    print(json.dumps(report, indent=2) if args.json else
          f"{report['gpu']}: " + ", ".join(f"{k} {v} TFLOP/s" for k, v in report["tflops"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
