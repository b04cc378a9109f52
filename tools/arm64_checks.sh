#!/usr/bin/env bash
# Run inside the arm64 root by tools/arm64_target.sh (the repository at /src, the artifact folders under
# /artifacts/NAME): doctor, verify --reference golden of every ONNX artifact (ONNX Runtime and OpenVINO against
# PyTorch's stored outputs), predict on OpenVINO, and tests/target (load, verify, predict, a serve request, doctor
# on ONNX Runtime) with the CPU unit tests. usage: arm64_checks.sh NAME (the artifact folder of the target tests)
set -uo pipefail
cd /src
failed=0
check() { "$@" || { echo "FAILED: $*"; failed=1; }; }
check resnet-deploy doctor
declare -A seen
for onnx in /artifacts/*/*.onnx; do
    name=$(basename "$(dirname "$onnx")")/$(basename "$onnx")
    sum=$(sha256sum "$onnx" | cut -c1-64)
    if [ -n "${seen[$sum]:-}" ]; then echo "-- $name: the same file as ${seen[$sum]}, verified once"; continue; fi
    seen[$sum]=$name
    echo "-- verify $name"
    if resnet-deploy verify "$onnx" --reference golden; then verdict=PASS; else verdict=FAIL; failed=1; fi
    printf '%-14s %-32s %s\n' "$QEMU_CPU" "$name" "$verdict" >> /artifacts/verdicts
done
python3 -c "from PIL import Image; Image.new('RGB', (96, 80), (200, 120, 40)).save('/tmp/orange.jpg')"
first=/artifacts/$1/resnet18.onnx  # $1: the folder tests/target run on (fp32, fp16 and INT8 for the CPU)
check resnet-deploy predict "$first" /tmp/orange.jpg --topk 3 --backend openvino  # ONNX Runtime's: tests/target
echo "-- tests/target, the CPU unit tests"
RESNET_DEPLOY_TARGET_ARTIFACTS=$(dirname "$first") check python3 -m pytest -q -n 0 -p no:cacheprovider tests/target \
    tests/unit/test_cpu.py tests/unit/test_batcher.py tests/unit/test_bounds.py
exit $failed
