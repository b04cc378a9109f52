"""What an export makes and how: the options of :func:`resnet_deploy.export.pipeline.export`, their
defaults and choices, in one place the CLI reads too (PyTorch-free, so the CLI starts without it)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..artifacts import DEFAULT_PROFILE, BatchProfile
from ..precisions import Int8Options
from .engine import BuildOptions

DEFAULT_OPSET = 18
DEFAULT_BATCH = str(DEFAULT_PROFILE)
EXPORTERS = ("dynamo", "torchscript")
LAST_STRIDES = (1, 2)


@dataclass(frozen=True)
class ExportOptions:
    """What :func:`export` makes and how (its keywords; see there)."""

    weights: str | os.PathLike[str] | None = None
    num_classes: int | None = None
    input_size: int | str | tuple[int, int] | None = None
    batch: str | BatchProfile = DEFAULT_BATCH
    dynamic_hw: bool = False
    opset: int = DEFAULT_OPSET
    exporter: str = "dynamo"
    simplify: bool = True
    out: str | os.PathLike[str] = "artifacts"
    name: str | None = None
    seed: int = 0
    features_only: bool = False
    last_stride: int = 2
    precisions: tuple[str, ...] = ()  # made besides fp32: names of resnet_deploy.precisions rows ("fp16", "int8")
    calib_data: str | os.PathLike[str] | None = None
    calib_size: int = 512
    calib_method: str = Int8Options.method
    int8_target: str = Int8Options.target
    reduce_range: bool | None = None
    max_drop: float | None = None
    eval_data: str | os.PathLike[str] | None = None
    preprocess: dict[str, Any] | None = None
    embed_preprocess: bool = False  # the graph takes uint8 NHWC pixels and normalises them itself
    engine: bool | None = None
    build_options: BuildOptions | None = None
    quiet: bool = False
