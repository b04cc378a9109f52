#!/usr/bin/env python3
"""What ONNX Runtime's x86 INT8 kernels do to a trained model on this CPU, by INT8 flavour.

Trains (or finds cached) tools/train_cifar.py's digits model, exports it three ways, and runs
each INT8 graph on the 450 held-out digits two ways, with plain onnxruntime sessions:
- as written (graph optimisations off: every Q/DQ executed, the quantization itself, what
  TensorRT computes with int32 accumulation);
- with every optimisation (ONNX Runtime's fused integer kernels, what a CPU deployment runs).
It reports top-1 of both, and the kernels' worst per-image cosine against the graph as
written: 1.0000 where the kernels are exact, lower where they saturate (x86 without VNNI
adds pairs of u8 x s8 products in int16). The flavours: `trt` target (s8 activations, 8-bit
weights), `cpu` target with 8-bit weights, `cpu` target with 7-bit weights (reduce_range).

    python tools/int8_kernels.py [--digits artifacts/digits] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_deploy import export  # noqa: E402
from resnet_deploy.data import ImagePreprocess, labelled_images, load_images  # noqa: E402
from resnet_deploy.environment import cpu_description, tool_versions  # noqa: E402
from resnet_deploy.errors import DeployWarning  # noqa: E402
from resnet_deploy.parity.metrics import compare_arrays  # noqa: E402

FLAVOURS = {
    "trt target (s8 activations, 8-bit weights)": {"int8_target": "trt"},
    "cpu target, 8-bit weights": {"int8_target": "cpu", "reduce_range": False},
    "cpu target, 7-bit weights (reduce_range)": {"int8_target": "cpu", "reduce_range": True},
}


def logits(path: Path, images: np.ndarray, *, optimize: bool) -> np.ndarray:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": images[i: i + 64]})[0] for i in range(0, len(images), 64)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", default="artifacts/digits", help="tools/train_cifar.py's --out folder")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folder = Path(args.digits)
    trained = subprocess.run([sys.executable, str(Path(__file__).with_name("train_cifar.py")), "--out", str(folder),
                              "--json"], check=True, capture_output=True, text=True)
    record = json.loads(trained.stdout)
    settings = record["settings"]
    common = {"weights": folder / record["checkpoint"], "input_size": settings["size"], "int8": True,
              "calib_data": folder / "data" / "train", "quiet": True,
              "preprocess": {"mean": (settings["mean"],) * 3, "std": (settings["std"],) * 3}}
    rows = []
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeployWarning)
        fp32 = None
        for label, options in FLAVOURS.items():
            result = export(settings["arch"], out=out, name=options["int8_target"] + str(options.get("reduce_range")),
                            **common, **options)
            if fp32 is None:
                preprocess = ImagePreprocess.from_manifest(result.manifest.preprocess)
                paths, labels, _ = labelled_images(folder / "data" / "test")
                images = load_images(paths, preprocess)
                fp32 = float((logits(result.paths["fp32"], images, optimize=True).argmax(1) == labels).mean())
            written = logits(result.paths["int8"], images, optimize=False)
            kernels = logits(result.paths["int8"], images, optimize=True)
            rows.append({"int8": label, "top1_as_written": float((written.argmax(1) == labels).mean()),
                         "top1_kernels": float((kernels.argmax(1) == labels).mean()),
                         "kernel_cosine": compare_arrays(written, kernels).cosine})
    cpu = cpu_description()
    report = {"date": date.today().isoformat(), "cpu": cpu, "tools": tool_versions(), "images": len(labels),
              "top1_fp32": fp32, "rows": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['date']}, {cpu['model']} ({', '.join(cpu['isa'])}; INT8 kernels: {cpu['int8_isa']}), "
          f"{len(labels)} held-out digits, fp32 top-1 {fp32:.2%}")
    print("| INT8 | top-1 as written | top-1 on the optimised kernels | kernels vs as written, worst cosine |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['int8']} | {row['top1_as_written']:.2%} | {row['top1_kernels']:.2%} | "
              f"{row['kernel_cosine']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
