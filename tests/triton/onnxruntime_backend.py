"""Triton's onnxruntime backend, for a Triton that has none: a Python-based backend (Triton loads
``BACKENDS/onnxruntime/model.py`` through its python backend for every ``platform: "onnxruntime_onnx"``
model), so the repositories resnet-deploy writes load unchanged, under the real server's config parsing,
dynamic batcher, classification extension and statistics. Runs VERSION/model.onnx on ONNX Runtime's CPU
provider with the config's intra-op threads and graph optimisation level, as the C++ backend reads them.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

LEVELS = {-1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, 1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"],
                            config.get("default_model_filename") or "model.onnx")
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_thread_count", 0))
        options.inter_op_num_threads = int(parameters.get("inter_op_thread_count", 0))
        level = int(config.get("optimization", {}).get("graph", {}).get("level", 0))
        options.graph_optimization_level = LEVELS.get(level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [tensor["name"] for tensor in config["input"]]
        self.outputs = [tensor["name"] for tensor in config["output"]]

    def execute(self, requests):
        """The requests Triton's batcher gathered, run as one batch, split back per request."""
        arrays = [[pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.inputs] for r in requests]
        sizes = [request[0].shape[0] for request in arrays]
        feed = {name: np.concatenate([request[i] for request in arrays]) for i, name in enumerate(self.inputs)}
        results = self.session.run(self.outputs, feed)
        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor(name, value[start:start + size]) for name, value in zip(self.outputs, results)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
