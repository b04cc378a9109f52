"""tools/bench_gpu.sh on a machine without a GPU: every step that cannot run is skipped with doctor's
reason, the script goes on to the end and exits 0 (a GPU session runs it once, with no time to mend it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_deploy.backends import detect

from ..conftest import TOOLS


@pytest.mark.skipif(detect.cuda_gpu(), reason="a GPU is here: the script runs its GPU steps instead of skipping them")
def test_bench_gpu_script_skips_with_reasons_and_finishes(tmp_path):
    env = {**os.environ, "BENCH_GPU_ARCH": "resnet18", "BENCH_GPU_INPUT": "64", "BENCH_GPU_PROFILE": "1:2:4",
           "BENCH_GPU_SIZES": "1,4", "BENCH_GPU_BUDGET_S": "240", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(TOOLS / "bench_gpu.sh"), str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    steps = (tmp_path / "steps.txt").read_text().splitlines()
    assert steps[0].startswith("ok      doctor") and any(s.startswith("ok      export") for s in steps), steps
    torch_reason = detect.torch_cuda().reason
    for name in ("gpu-peak", "torch-fp32-nhwc", "torch-fp16-nhwc-cudagraphs"):
        assert f"skipped {name}: torch-cuda: {torch_reason}" in steps
    assert f"skipped TensorRT: {detect.tensorrt().reason}" in steps
    assert not [s for s in steps if s.startswith("failed")], steps
    assert (tmp_path / "models" / "resnet18.fp16.onnx").exists()
