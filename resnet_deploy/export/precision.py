"""Precision decided in the ONNX graph, where it can be built and checked on any machine.

TensorRT 11 removed the builder's FP16/INT8 flags and its calibrators: an
engine's precision comes from the ONNX it is built from. FP16 here is a float16
graph with float32 inputs and outputs kept and the numerically fragile ops left
in float32; INT8 is a QuantizeLinear/DequantizeLinear graph made by ONNX
Runtime's static quantization with per-channel weights, for one of two targets.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..data import IMAGE_SUFFIXES, ImagePreprocess, batched, load_images, load_npy_batch, random_images
from ..errors import ExportError, first_line
from ..fileio import sha256_file
from . import graph

# InstanceNorm (IBN's IN half) over-/underflows in fp16; the split-attention
# softmax of ResNeSt normalises tiny differences. Both stay float32.
FP16_KEEP_FP32_OPS = ("InstanceNormalization", "Softmax")


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of ``model`` with float32 I/O and :data:`FP16_KEEP_FP32_OPS` in float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        converted = convert_float_to_float16(
            model, keep_io_types=True, op_block_list=list(FP16_KEEP_FP32_OPS), disable_shape_infer=False
        )
    graph.topological_sort(converted)
    return graph.check(converted)


# target -> (activation type, weight type, symmetric activations)
INT8_TARGETS = {
    # TensorRT's explicit quantization: signed, symmetric (zero point 0) activations and weights
    "trt": ("QInt8", "QInt8", True),
    # x86 with VNNI: unsigned activations with signed weights is the fast u8s8 kernel pair
    "cpu": ("QUInt8", "QInt8", False),
}
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
CALIBRATION_BATCH = 16


@dataclass
class Calibration:
    """Where calibration images come from, and a key that changes when they do."""

    source: str  # a folder, a .npy file, or "random"
    images: int
    key: str
    batches: Callable[[], Iterator[np.ndarray]]  # lazily decoded, so a cache hit reads nothing

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "images": self.images}


def calibration_data(
    source: str | os.PathLike[str] | None,
    *,
    preprocess: ImagePreprocess,
    shape: tuple[int, int, int],
    size: int,
    seed: int,
) -> Calibration:
    """Calibration images from a folder (searched recursively), a preprocessed .npy batch, or ``"random"``."""
    if source is None:
        raise ExportError(
            "--int8 needs --calib-data DIR|FILE.npy: activation ranges are measured on the data you give, and random "
            "pixels have none of the structure of real images, so their ranges (and the INT8 scales) are wrong for "
            "real inputs; pass --calib-data random to accept that on purpose"
        )
    if size < 1:
        raise ExportError("--calib-size must be at least 1")
    if str(source) == "random":
        def random_batches() -> Iterator[np.ndarray]:
            for start in range(0, size, CALIBRATION_BATCH):
                count = min(CALIBRATION_BATCH, size - start)
                yield random_images(count, shape, preprocess.mean, preprocess.std, seed=seed + 1000 + start)

        return Calibration("random", size, f"random:{seed}:{size}:{shape}", random_batches)
    path = Path(source)
    if path.is_file():
        array = load_npy_batch(path, shape)[:size]
        return Calibration(str(path), len(array), f"npy:{sha256_file(path)}:{size}",
                           lambda: iter(batched(array, CALIBRATION_BATCH)))
    if not path.is_dir():
        raise ExportError(f"calibration data {path} does not exist")
    found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not found:
        raise ExportError(f"{path} holds no images for calibration")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(found), size=min(size, len(found)), replace=False))
    paths = [found[i] for i in chosen]
    key = "dir:" + hashlib.sha256(
        "\n".join(f"{p.relative_to(path)}:{p.stat().st_size}" for p in paths).encode() + str(preprocess).encode()
    ).hexdigest()

    def image_batches() -> Iterator[np.ndarray]:
        for chunk in batched(paths, CALIBRATION_BATCH):
            yield load_images(chunk, preprocess)

    return Calibration(str(path), len(paths), key, image_batches)


def calibration_cache_name(stem: str, fp32_sha256: str, calibration: Calibration, method: str) -> str:
    """Ranges depend on the fp32 graph, the data and the method (not the target): all three key the cache."""
    key = hashlib.sha256(f"{fp32_sha256}|{calibration.key}|{method}".encode()).hexdigest()[:12]
    return f"{stem}.calib-{method}-{key}.json"


def to_int8(
    fp32_path: Path,
    out_path: Path,
    calibration: Calibration,
    *,
    target: str,
    method: str,
    cache_path: Path,
    on_progress: Callable[[int, int], None] | None = None,
) -> bool:
    """Write a QDQ INT8 model (weights per channel) of ``fp32_path`` to ``out_path``.

    Returns True when the activation ranges came from ``cache_path`` (no calibration run).
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if target not in INT8_TARGETS:
        raise ExportError(f"unknown --int8-target {target!r}; choose one of {', '.join(INT8_TARGETS)}")
    if method not in CALIBRATION_METHODS:
        raise ExportError(f"unknown --calib-method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    activation, weight, symmetric = INT8_TARGETS[target]
    supports_cache = "calibration_cache_path" in inspect.signature(quantize_static).parameters
    cached = supports_cache and cache_path.is_file()

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = calibration.batches()
            self.done = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            self.done += len(batch)
            if on_progress is not None:
                on_progress(self.done, calibration.images)
            return {"input": batch}

    prepared = out_path.with_name(out_path.name + ".pre.onnx")
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_logging():
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32_path), str(prepared))
            quantize_static(
                str(prepared), str(out_path), None if cached else Reader(),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=getattr(QuantType, activation), weight_type=getattr(QuantType, weight),
                calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
                **({"calibration_cache_path": str(cache_path)} if supports_cache else {}),
            )
    except ExportError:
        raise
    except Exception as exc:  # onnxruntime.quantization raises many types
        raise ExportError(f"INT8 quantization failed: {first_line(exc)}") from exc
    finally:
        prepared.unlink(missing_ok=True)
    graph.check(onnx.load(str(out_path)))
    return cached


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """onnxruntime.quantization logs through the root logger at INFO/WARNING."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
