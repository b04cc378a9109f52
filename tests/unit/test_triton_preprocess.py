"""The preprocessing model `triton --ensemble` writes, run here under numpy 2 (the real Triton of
tests/integration/test_triton_server.py runs it under numpy 1.x) with a stand-in of Triton's
`triton_python_backend_utils`: self-contained, and the same numbers as resnet_deploy.data."""

from __future__ import annotations

import ast
import importlib.util
import io
import json
import sys
import types

import numpy as np
from PIL import Image

from resnet_deploy.data import ImagePreprocess
from resnet_deploy.serving.triton import preprocess_model_source

PREPROCESS = {"resize": 40, "crop": [32, 24], "interpolation": "bicubic", "mean": [0.5, 0.4, 0.3],
              "std": [0.2, 0.25, 0.3]}


class _Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class _Response:
    def __init__(self, output_tensors=None, error=None):
        self.output_tensors, self.error = output_tensors, error


def _pb_utils() -> types.ModuleType:
    """The names of Triton's python-backend utilities the model uses, as the real ones behave."""
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor, module.InferenceResponse = _Tensor, _Response
    module.TritonError = lambda message: message
    module.get_input_tensor_by_name = lambda request, name: _Tensor(name, request[name])
    return module


def _model(monkeypatch, tmp_path, embedded=False):
    """model.py written and imported as Triton's python backend imports it (a module from its file)."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _pb_utils())
    path = tmp_path / "model.py"
    path.write_text(preprocess_model_source())
    spec = importlib.util.spec_from_file_location("triton_preprocess_model", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    preprocess = {**PREPROCESS, "embedded": True} if embedded else PREPROCESS
    config = {"input": [{"name": "image"}], "output": [{"name": "input"}],
              "parameters": {"preprocess": {"string_value": json.dumps(preprocess)}}}
    model.initialize({"model_config": json.dumps(config)})
    return model


def _encoded(mode: str, size=(57, 45), fmt="PNG", seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


def test_the_model_file_imports_only_numpy_pillow_and_the_standard_library():
    tree = ast.parse(preprocess_model_source())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert modules <= {"__future__", "dataclasses", "typing", "io", "json", "numpy", "PIL",
                       "triton_python_backend_utils"}, modules
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))  # nothing relative


def test_it_computes_what_predict_computes_and_fails_a_bad_request_alone(monkeypatch, tmp_path):
    model = _model(monkeypatch, tmp_path)
    images = [_encoded("RGB", fmt="JPEG"), _encoded("L", seed=1), _encoded("RGBA", seed=2), _encoded("P", seed=3),
              _encoded("CMYK", fmt="JPEG", seed=4), _encoded("RGB", fmt="WEBP", seed=5)]
    good = {"image": np.array(images, dtype=np.object_).reshape(-1, 1)}
    bad = {"image": np.array([[images[0]], [b"not an image"]], dtype=np.object_)}
    answers = model.execute([good, bad, good])
    expected = np.stack([ImagePreprocess.from_manifest(PREPROCESS)(Image.open(io.BytesIO(b)).convert("RGB"))
                         for b in images])
    for answer in (answers[0], answers[2]):
        assert answer.error is None
        np.testing.assert_array_equal(answer.output_tensors[0].as_numpy(), expected)
    assert answers[1].output_tensors is None and answers[1].error.startswith("image 1 is not an image")


def test_with_the_preprocessing_embedded_it_sends_the_resized_pixels(monkeypatch, tmp_path):
    model = _model(monkeypatch, tmp_path, embedded=True)
    (answer,) = model.execute([{"image": np.array([[_encoded("RGB")]], dtype=np.object_)}])
    pixels = answer.output_tensors[0].as_numpy()
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 32, 24, 3)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nnewpath 0 0 moveto 16 16 lineto stroke\nshowpage\n"


def test_extreme_shapes_and_other_formats_fail_their_own_request_only(monkeypatch, tmp_path):
    """A 1 x 20000 and a 60000 x 1 PNG (118-byte files) are preprocessed from the crop's window, not resized
    to millions of pixels first; an EPS (Pillow would hand it to Ghostscript) is not decoded: a format outside
    the listed ones fails its own request, naming the image."""
    model = _model(monkeypatch, tmp_path)
    thin = [_encoded("L", size=(1, 20000)), _encoded("L", size=(60000, 1), seed=1)]
    answers = model.execute([{"image": np.array([[image]], dtype=np.object_)} for image in (*thin, EPS)])
    for answer in answers[:2]:
        assert answer.error is None and answer.output_tensors[0].as_numpy().shape == (1, 3, 32, 24)
    assert answers[2].output_tensors is None
    assert answers[2].error.startswith("image 0 is not an image Pillow can decode: cannot identify image file")
