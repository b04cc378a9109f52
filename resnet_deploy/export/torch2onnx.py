"""torch.nn.Module -> ONNX file, through the dynamo exporter or the TorchScript one.

The batch axis is symbolic and named ``batch`` on every input and output
(and H, W with ``dynamic_hw``). The example batch has 2 images: with 1, the
dynamo exporter may specialise the batch to a constant.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator

import onnx
import torch
from torch import nn

from ..artifacts import FEATURES, LOGITS
from ..errors import ExportError, first_line
from .options import EXPORTERS

EXAMPLE_BATCH = 2
MIN_DYNAMIC_SIDE = 32


def output_names(model: nn.Module) -> list[str]:
    """``logits`` for classifiers, ``features`` for pooled backbones, one name per stage map (the
    model's feature points past the stem) for ``features_only`` ones."""
    if model.features_only:
        return [point.module for point in model.feature_info[1:]]
    return [LOGITS] if model.num_classes > 0 else [FEATURES]


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.onnx prints warnings (missing torchvision ops, deprecations) that mean nothing to our users."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def export_onnx(
    model: nn.Module,
    *,
    input_hw: tuple[int, int],
    in_chans: int,
    outputs: list[str],
    opset: int,
    exporter: str = "dynamo",
    dynamic_hw: bool = False,
    pixels: bool = False,
) -> onnx.ModelProto:
    """``model`` as an ONNX graph with input ``input`` and the given output names (in memory: the
    pipeline simplifies and checks it before anything is written). ``pixels``: the input is uint8 NHWC
    (a model behind :class:`~resnet_deploy.models.resnet.EmbeddedPreprocess`)."""
    if exporter not in EXPORTERS:
        raise ExportError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if pixels:
        example = torch.randint(0, 256, (EXAMPLE_BATCH, *input_hw, in_chans), dtype=torch.uint8)
        height_axis, width_axis = 1, 2
    else:
        example = torch.randn(EXAMPLE_BATCH, in_chans, *input_hw)
        height_axis, width_axis = 2, 3
    model = model.eval()
    try:
        with _quiet_exporter(), torch.no_grad():
            if exporter == "dynamo":
                dims = {0: torch.export.Dim("batch", min=1)}
                if dynamic_hw:
                    dims[height_axis] = torch.export.Dim("height", min=MIN_DYNAMIC_SIDE)
                    dims[width_axis] = torch.export.Dim("width", min=MIN_DYNAMIC_SIDE)
                return torch.onnx.export(model, (example,), input_names=["input"], output_names=outputs,
                                         dynamic_shapes={"x": dims}, opset_version=opset, dynamo=True,
                                         verbose=False).model_proto
            axes = {0: "batch", height_axis: "height", width_axis: "width"} if dynamic_hw else {0: "batch"}
            buffer = io.BytesIO()
            torch.onnx.export(model, (example,), buffer, input_names=["input"], output_names=outputs,
                              dynamic_axes={"input": axes, **{name: {0: "batch"} for name in outputs}},
                              opset_version=opset, dynamo=False, do_constant_folding=True)
            return onnx.load_from_string(buffer.getvalue())
    except ExportError:
        raise
    except Exception as exc:  # the exporters raise many types; the user needs one line
        raise ExportError(f"torch.onnx ({exporter}) export failed: {first_line(exc)}") from exc
