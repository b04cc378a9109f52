"""`export --embed-preprocess`: uint8 NHWC pixels in, the scaling, mean/std and transpose inside the graph,
for fp32, fp16 and int8; and every command that feeds the artifact (verify, predict, bench, serve) feeds it
pixels. The in-graph normalisation is checked against the toolkit's own (resnet_deploy.imageprep) on the
same pixels, through the same weights exported without it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from resnet_deploy import verify
from resnet_deploy.target import runtime
from resnet_deploy.data import ImagePreprocess, load_images
from tests.conftest import assert_one_line_error


def test_the_graph_takes_pixels_and_normalises_them_as_the_toolkit_does(embedded_export, small_export):
    manifest = embedded_export.manifest
    assert manifest.input.dtype == "uint8" and manifest.input.shape == ["batch", 64, 64, 3]
    assert manifest.preprocess["embedded"] and manifest.preprocess["layout"] == "NHWC"
    pixels = ImagePreprocess.from_manifest(manifest.preprocess).random_inputs(3, seed=2)
    plain = ImagePreprocess.from_manifest(small_export.manifest.preprocess)
    normalised = np.stack([plain.normalise(p) for p in pixels])  # what predict feeds the plain artifact
    with runtime.load(embedded_export.onnx_path) as embedded, runtime.load(small_export.onnx_path) as reference:
        got, want = embedded(pixels)["logits"], reference(normalised)["logits"]  # same seed: the same weights
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
        with pytest.raises(Exception, match="takes uint8 .*pixels"):
            embedded(normalised)
    assert {row["artifact"] for row in manifest.parity} == {"fp32", "fp16", "int8"}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_verify_feeds_pixels_to_every_backend(embedded_export, precision):
    report = verify(embedded_export.paths[precision])
    assert report.passed and report.rows
    golden = verify(embedded_export.paths[precision], reference="golden")
    assert golden.passed


def test_predict_bench_and_verify_images_feed_pixels(cli, embedded_export, small_export, tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 70, 3), dtype=np.uint8)).save(photo)
    tops = []
    for artifact in (embedded_export.onnx_path, small_export.onnx_path):
        result = cli("predict", str(artifact), str(photo), "--json")
        assert result.exit_code == 0, result.stderr
        tops.append([t["index"] for t in json.loads(result.stdout)["predictions"][0]["top"]])
    assert tops[0] == tops[1]
    pixels = load_images([photo], ImagePreprocess.from_manifest(embedded_export.manifest.preprocess))
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 64, 64, 3)
    np.save(tmp_path / "pixels.npy", pixels)
    assert cli("verify", str(embedded_export.onnx_path), "--inputs", str(tmp_path / "pixels.npy")).exit_code == 0
    np.save(tmp_path / "floats.npy", pixels.astype(np.float32))
    assert_one_line_error(cli("verify", str(embedded_export.onnx_path), "--inputs", str(tmp_path / "floats.npy")), 2,
                          "expected uint8 pixels")
    bench = cli("bench", str(embedded_export.onnx_path), "--batch-sizes", "1", "--iters", "2", "--json")
    assert bench.exit_code == 0 and json.loads(bench.stdout)["results"][0]["batch"] == 1


def test_serve_takes_uint8_pixels(embedded_export):
    from resnet_deploy.serving.codec import parse_infer_request
    from resnet_deploy.serving.limits import RequestError

    with runtime.load(embedded_export.onnx_path) as runner:
        pixels = ImagePreprocess.from_manifest(embedded_export.manifest.preprocess).random_inputs(2, seed=4)
        header = json.dumps({"inputs": [{"name": "input", "shape": [2, 64, 64, 3], "datatype": "UINT8",
                                         "parameters": {"binary_data_size": pixels.nbytes}}]}).encode()
        batch, _ = parse_infer_request(header + pixels.tobytes(), str(len(header)), runner, 8)
        assert batch.dtype == np.uint8 and np.array_equal(batch, pixels)  # 4x fewer bytes than FP32
        as_json = json.dumps({"inputs": [{"name": "input", "shape": [2, 64, 64, 3], "datatype": "UINT8",
                                          "data": pixels.ravel().tolist()}]}).encode()
        assert np.array_equal(parse_infer_request(as_json, None, runner, 8)[0], pixels)
        for datatype, data, message in (("FP32", pixels.ravel().tolist(), "the model takes UINT8"),
                                        ("UINT8", [256] * pixels.size, "not pixels"),
                                        ("UINT8", [0.5] * pixels.size, "not pixels")):
            body = json.dumps({"inputs": [{"name": "input", "shape": [2, 64, 64, 3], "datatype": datatype,
                                           "data": data}]}).encode()
            with pytest.raises(RequestError, match=message):
                parse_infer_request(body, None, runner, 8)
