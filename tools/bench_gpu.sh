#!/usr/bin/env bash
# The GPU benchmark: resnet50 on a machine with an NVIDIA GPU, every backend that can run there,
# side by side through `resnet-deploy bench` (host and device time apart, CUDA events).
#
#   bash tools/bench_gpu.sh [OUT_DIR]        (default: artifacts/bench-gpu)
#
# It exports resnet50 at 224 with a 1:32:256 batch profile (fp32 and fp16 ONNX; a TensorRT
# engine from the fp16 ONNX where TensorRT is installed), then times at batch 1, 32 and 256:
#   - PyTorch on CUDA: fp32, fp16, each channels_last, and fp16 channels_last under
#     torch.compile(mode="reduce-overhead"), which replays CUDA graphs;
#   - ONNX Runtime's CUDA provider, where onnxruntime-gpu is installed (and its TensorRT provider where present);
#   - the TensorRT engine with CUDA graphs, where TensorRT is installed.
# What cannot run is skipped with the reason `resnet-deploy doctor` gives. Every result is kept as
# JSON in OUT_DIR, with doctor's report, for BENCHMARKS.md. The card's peak is measured by
# tools/gpu_peak.py (dense fp32/fp16 matmul) in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-artifacts/bench-gpu}
mkdir -p "$OUT"
RD="python -m resnet_deploy.cli"
SIZES=1,32,256

$RD doctor --json > "$OUT/doctor.json"
$RD doctor
python tools/gpu_peak.py --json > "$OUT/peak.json"
cat "$OUT/peak.json"

engine=--no-engine
if python -c "import tensorrt" 2>/dev/null; then engine=--engine; fi
$RD export --arch resnet50 --batch 1:32:256 --fp16 $engine --out "$OUT/models"
MODEL="$OUT/models/resnet50.onnx"

$RD bench "$MODEL" --backend torch --device cuda --batch-sizes $SIZES --channels-last --json \
    > "$OUT/torch-fp32-nhwc.json"
$RD bench "$MODEL" --backend torch --device cuda --batch-sizes $SIZES --channels-last --torch-fp16 --json \
    > "$OUT/torch-fp16-nhwc.json"
$RD bench "$MODEL" --backend torch --device cuda --batch-sizes $SIZES --channels-last --torch-fp16 --compile \
    --warmup 20 --json > "$OUT/torch-fp16-nhwc-cudagraphs.json"

if python -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
    $RD bench "$MODEL" "$OUT/models/resnet50.fp16.onnx" --backend ort --device cuda --batch-sizes $SIZES --json \
        > "$OUT/ort-cuda.json"
else
    echo "skipped ONNX Runtime CUDA: onnxruntime-gpu is not installed"
fi
if python -c "import onnxruntime as o, sys; sys.exit('TensorrtExecutionProvider' not in o.get_available_providers())"; then
    $RD bench "$OUT/models/resnet50.fp16.onnx" --backend ort --ort-tensorrt --device cuda --batch-sizes $SIZES --json \
        > "$OUT/ort-tensorrt-ep.json"
fi
if [ -f "$OUT/models/resnet50.engine" ]; then
    $RD bench "$OUT/models/resnet50.engine" --cuda-graphs --batch-sizes $SIZES --json > "$OUT/tensorrt.json"
else
    echo "skipped TensorRT: $(python -c 'from resnet_deploy.backends import detect; print(detect.tensorrt().reason)')"
fi
python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
peak = json.loads((out / "peak.json").read_text())
for path in sorted(out.glob("*.json")):
    if path.name in ("doctor.json", "peak.json"):
        continue
    for r in json.loads(path.read_text())["results"]:
        device = r["device_ms"]["p50"] if r["device_ms"] else float("nan")
        print(f"{path.stem:28} batch {r['batch']:>3}  p50 {r['latency_ms']['p50']:8.2f} ms  device {device:8.2f} ms"
              f"  {r['images_per_s']:9.1f} img/s  ({peak['gpu']})")
PY
