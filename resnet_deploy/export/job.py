"""What an export's steps share: the frozen plan they all read, the products each step hands on, and the
one :class:`Job` that carries both through the step list of :mod:`.pipeline`.

Read top to bottom it is the export's data flow: :class:`ExportPlan` is made once, before any work, and never
changes; each later field of :class:`Job` is written by the one step named beside it and only read after.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from torch import nn

from ..artifacts import BatchProfile, Manifest, ParityRecord, PreprocessRecord
from ..backends.detect import Availability
from ..data import Calibration, ImagePreprocess
from ..fileio import Staging
from ..models import pretrained
from ..parity.inputs import InputSet
from ..parity.results import RunResults
from ..progress import StepLog
from .options import ExportOptions
from .quantize import Int8Writer


@dataclass(frozen=True)
class ExportPlan:
    """One export's request, checked and resolved before any work (defaults decided, a published tag
    fetched, the output folder made) by ``pipeline._plan``: what every step reads, and none changes."""

    arch: str
    options: ExportOptions  # resolved: ``weights`` a file (a tag's, once fetched), ``reduce_range`` decided
    stem: str
    profile: BatchProfile
    shape: tuple[int, int, int]  # C, H, W of the example and check images
    preprocess: PreprocessRecord
    precisions: tuple[str, ...]  # the ONNX artifacts to make, in the registry's order
    trt: Availability  # whether engines run here
    folder: Path
    random_init: bool  # seeded random weights: int8's top-1 is not judged (parity.tolerances)
    calibration: Calibration | None = None  # with int8
    published: pretrained.PublishedWeights | None = None  # for a tag
    weights_sha256: str | None = None  # a tag's file, as fetched

    @property
    def image_preprocess(self) -> ImagePreprocess:
        """The preprocessing run on images: calibration's, the gates' random inputs."""
        return ImagePreprocess.from_manifest(self.preprocess)

    @property
    def build_engine(self) -> bool:
        """TensorRT runs here and the engine was not declined."""
        return bool(self.trt.available) and self.options.engine is not False


@dataclass(frozen=True)
class Built:
    """The build step's network (for ``build``, the reference model rebuilt from the manifest)."""

    model: nn.Module
    exported: nn.Module  # what goes to ONNX: the model, or the model behind its input normalisation
    outputs: list[str]


@dataclass(frozen=True)
class Int8Made:
    """What the INT8 step leaves for the mixed-precision search, the gates and the commit."""

    prepared: Path  # the fp32 graph prepared for quantization
    writer: Int8Writer  # writes the INT8 file; the accuracy-bounded search calls it again
    holdout: np.ndarray | None  # calibration images the ranges never saw, decoded once
    range_cache: tuple[Path, Path] | None  # (staged, final) activation ranges this export measured


@dataclass
class Job:
    """One export in progress: its plan, and what the steps have made so far. Each product is written by the
    step named beside it; ``staged``, ``precision_options`` and ``parity`` gain an entry for each precision
    from the step that makes or gates it; the manifest is made from them at the end."""

    plan: ExportPlan
    resources: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)  # closed after the last step
    staging: Staging | None = None  # the folder's staging, open while the steps run
    built: Built | None = None  # build
    raw: onnx.ModelProto | None = None  # export to ONNX; dropped once the fp32 gate passed
    final: onnx.ModelProto | None = None  # simplify and check: the checked fp32 graph
    int8: Int8Made | None = None  # INT8
    gate_sets: list[InputSet] | None = None  # the first gate (its title): the gates' inputs
    reference: RunResults | None = None  # the first gate: PyTorch's outputs on them
    staged: dict[str, Path] = field(default_factory=dict)  # artifact kind -> staged file: simplify, converters, engine
    precision_options: dict[str, Any] = field(default_factory=dict)  # converters, mixed, file-less gates
    parity: list[ParityRecord] = field(default_factory=list)  # the gates
    manifest: Manifest | None = None  # the engine step, else the commit
    manifest_file: Path | None = None  # the commit


@dataclass(frozen=True)
class Step:
    """One step of the export: its title on the progress line, its work, and whether the plan has it."""

    title: Callable[[Job], str]
    run: Callable[[Job, StepLog], None]
    runs_for: Callable[[ExportPlan], bool] = lambda plan: True
