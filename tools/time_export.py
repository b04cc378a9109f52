#!/usr/bin/env python3
"""Wall time of `resnet-deploy export` (export + simplify + check + parity gate).

Runs the real CLI in a fresh process per repeat (so import time and the
first-call costs a user pays are counted), into a temporary folder, and prints
the median with the per-step timings of the median run. Usage:

    python tools/time_export.py --arch resnet50 --repeats 3 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--input-size", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    runs = []
    for index in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, "-m", "resnet_deploy.cli", "export", "--arch", args.arch,
                       "--out", out, "--json", "-q"]
            if args.input_size:
                command += ["--input-size", args.input_size]
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return done.returncode
            summary = json.loads(done.stdout)
            runs.append({"wall_s": round(wall, 2), "timings": summary["timings"]})
            print(f"run {index + 1}/{args.repeats}: {wall:.1f} s", file=sys.stderr)

    walls = [r["wall_s"] for r in runs]
    median = statistics.median(walls)
    report = {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores",
        "arch": args.arch,
        "median_wall_s": median,
        "walls_s": walls,
        "steps_of_median_run": min(runs, key=lambda r: abs(r["wall_s"] - median))["timings"],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{args.arch}: export + simplify + check + parity gate, median {median:.1f} s wall over "
              f"{len(walls)} runs ({', '.join(f'{w:.1f}' for w in walls)})")
        for step, seconds in report["steps_of_median_run"].items():
            print(f"  {step:55s} {seconds:6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
