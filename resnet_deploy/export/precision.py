"""Precision decided in the ONNX graph, where it can be built and checked on any machine.

TensorRT 11 removed the builder's FP16/INT8 flags: an engine's precision comes
from the ONNX it is built from. FP16 here is a float16 graph with float32
inputs and outputs kept, and the numerically fragile ops left in float32.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import onnx

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
