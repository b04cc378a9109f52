#!/usr/bin/env bash
# The GPU benchmark, one prepared script for a session with a GPU machine: resnet50, every backend that
# can run there, side by side through `resnet-deploy bench` (host time, and device time from CUDA
# events each runner records on its own stream).
#
#   bash tools/bench_gpu.sh [OUT_DIR]        (default: artifacts/bench-gpu)
#   BENCH_GPU_BUDGET_S=450 (default): the whole run stays under it, so it fits an 8-minute device call
#   BENCH_GPU_ARCH, BENCH_GPU_INPUT, BENCH_GPU_PROFILE, BENCH_GPU_SIZES: resnet50, 224, 1:32:256, 1,32,256
#
# Steps, each under its own time limit and never past the budget; one that cannot run here is
# skipped with the reason `resnet-deploy doctor` gives, one that fails is recorded with its last
# error line, and the script goes on either way:
#   doctor and the card's measured matmul peak (tools/gpu_peak.py);
#   export resnet50 at 224, batch profile 1:32:256, fp32 + fp16 ONNX (+ a TensorRT engine where it runs);
#   PyTorch on CUDA: fp32 and fp16 channels_last, fp16 under torch.compile(mode="reduce-overhead") (CUDA graphs);
#   ONNX Runtime's CUDA (and TensorRT) execution providers where onnxruntime-gpu is installed;
#   the TensorRT engine: verify, bench with and without CUDA graphs; the INT8 (trt target) engine likewise.
# OUT_DIR/steps.txt lists what ran, was skipped or failed; OUT_DIR/*.json keep every result for BENCHMARKS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-artifacts/bench-gpu}
BUDGET=${BENCH_GPU_BUDGET_S:-450}
ARCH=${BENCH_GPU_ARCH:-resnet50}
INPUT=${BENCH_GPU_INPUT:-224}
PROFILE=${BENCH_GPU_PROFILE:-1:32:256}
SIZES=${BENCH_GPU_SIZES:-1,32,256}
RD=(python -m resnet_deploy.cli)
BENCH=(--batch-sizes "$SIZES" --duration 1 --warmup 10 --json -q)
START=$SECONDS
mkdir -p "$OUT/models"
: > "$OUT/steps.txt"

note() { echo "$*" | tee -a "$OUT/steps.txt"; }

# step NAME LIMIT_S CMD...: CMD's stdout to OUT/NAME.json (or .txt), stderr to OUT/NAME.err, within LIMIT_S
step() {
    local name=$1 limit=$2 started=$SECONDS left
    shift 2
    left=$((BUDGET - (SECONDS - START)))
    if ((left < 15)); then note "skipped $name: the ${BUDGET} s budget is spent"; return 1; fi
    ((limit > left)) && limit=$left
    echo "== $name (at most $limit s)"
    if timeout --signal=TERM --kill-after=10 "$limit" "$@" > "$OUT/$name.out" 2> "$OUT/$name.err"; then
        note "ok      $name ($((SECONDS - started)) s)"
        return 0
    fi
    local code=$?
    local why
    why=$(grep -v '^\s*$' "$OUT/$name.err" | tail -n 1)
    [ "$code" = 124 ] && why="stopped at its $limit s limit"
    note "failed  $name (exit $code after $((SECONDS - started)) s): $why"
    return 1
}

# why_not VARIANT: empty where doctor says the backend variant runs here, else doctor's reason
why_not() {
    python - "$OUT/doctor.out" "$1" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
state = report["backends"].get(sys.argv[2], {"usable": False, "reason": "unknown backend"})
print("" if state["usable"] else state["reason"])
PY
}

# run_if VARIANT NAME LIMIT CMD...: the step where VARIANT runs here, else skipped with the reason
run_if() {
    local variant=$1 reason
    shift
    reason=$(why_not "$variant")
    if [ -n "$reason" ]; then note "skipped $1: $variant: $reason"; return 1; fi
    step "$@"
}

step doctor 60 "${RD[@]}" doctor --json || { echo "resnet-deploy does not run here: see $OUT/doctor.err"; exit 2; }
"${RD[@]}" doctor
run_if torch-cuda gpu-peak 60 python tools/gpu_peak.py --json

engine=--no-engine
[ -z "$(why_not tensorrt)" ] && engine=--engine
EXPORT=(export --arch "$ARCH" --input-size "$INPUT" --batch "$PROFILE" --quiet)
step export 180 "${RD[@]}" "${EXPORT[@]}" --fp16 "$engine" --out "$OUT/models"
MODEL=$OUT/models/$ARCH.onnx
ENGINE=$OUT/models/$ARCH.engine

if [ -f "$MODEL" ]; then
    run_if torch-cuda torch-fp32-nhwc 60 "${RD[@]}" bench "$MODEL" --backend torch --device cuda --channels-last "${BENCH[@]}"
    run_if torch-cuda torch-fp16-nhwc 60 "${RD[@]}" bench "$MODEL" --backend torch --device cuda --channels-last \
        --torch-fp16 "${BENCH[@]}"
    run_if torch-cuda torch-fp16-nhwc-cudagraphs 150 "${RD[@]}" bench "$MODEL" --backend torch --device cuda \
        --channels-last --torch-fp16 --compile "${BENCH[@]}"
    run_if onnxruntime-cuda ort-cuda 60 "${RD[@]}" bench "$MODEL" "$OUT/models/$ARCH.fp16.onnx" --backend ort \
        --device cuda "${BENCH[@]}"
    run_if onnxruntime-tensorrt ort-tensorrt-ep 120 "${RD[@]}" bench "$OUT/models/$ARCH.fp16.onnx" --backend ort \
        --ort-tensorrt --device cuda "${BENCH[@]}"
else
    note "skipped the PyTorch and ONNX Runtime benches: the export did not finish"
fi

if [ -f "$ENGINE" ]; then
    step verify-engine 90 "${RD[@]}" verify "$ENGINE" --json
    step tensorrt-fp16 60 "${RD[@]}" bench "$ENGINE" "${BENCH[@]}"
    step tensorrt-fp16-cudagraphs 60 "${RD[@]}" bench "$ENGINE" --cuda-graphs "${BENCH[@]}"
    if step export-int8 180 "${RD[@]}" "${EXPORT[@]}" --int8 --int8-target trt --calib-data random --engine \
        --out "$OUT/models-int8"; then
        step tensorrt-int8-cudagraphs 60 "${RD[@]}" bench "$OUT/models-int8/$ARCH.engine" --cuda-graphs "${BENCH[@]}"
    fi
elif [ "$engine" = --engine ]; then
    note "skipped the TensorRT benches: the engine export did not finish"
else
    note "skipped TensorRT: $(why_not tensorrt)"
fi

python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
peak_file = out / "gpu-peak.out"
gpu = json.loads(peak_file.read_text())["gpu"] if peak_file.exists() and peak_file.stat().st_size else "GPU"
for path in sorted(out.glob("*.out")):
    try:
        results = json.loads(path.read_text())["results"]
    except (ValueError, KeyError, TypeError):
        continue
    for r in results:
        device = r["device_ms"]["p50"] if r["device_ms"] else float("nan")
        print(f"{path.stem:28} batch {r['batch']:>3}  p50 {r['latency_ms']['p50']:8.2f} ms  p99 "
              f"{r['latency_ms']['p99']:8.2f} ms  device {device:8.2f} ms  {r['images_per_s']:9.1f} img/s  ({gpu})")
PY
echo "done in $((SECONDS - START)) s; steps:"
cat "$OUT/steps.txt"
