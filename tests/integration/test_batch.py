"""resnet-deploy batch: local lanes, Ray Data on a local Ray, s3:// inputs from a local S3 server, an image
that cannot be decoded, a job killed mid-way and resumed, --check."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import LOCAL_S3_KEYS, TOOLS, assert_one_line_error, free_port

pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow (the batch extra) writes the shards")

from resnet_deploy.batch.job import BatchOptions, RayOptions, run_batch  # noqa: E402
from resnet_deploy.batch.shards import read_rows  # noqa: E402
from resnet_deploy.fileio import sha256_file  # noqa: E402
from resnet_deploy.target.predict import classify  # noqa: E402

PHOTOS = 12
BROKEN = "photo_00005_broken.jpg"  # sorts among the good ones: position 6


def broken_png(path: Path) -> None:
    """A PNG whose IDAT length is damaged: Pillow raises SyntaxError (not OSError) while loading it."""
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)  # an IDAT over 256 bytes
    Image.fromarray(noise).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[data.find(b"IDAT") - 2] = 0
    path.write_bytes(bytes(data))


def _make_photos():
    spec = importlib.util.spec_from_file_location("make_photos", TOOLS / "make_photos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_photos


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """12 real-size JPEGs (tools/make_photos.py) and a truncated one among them, in a folder with a sub-folder
    (batch reads folders recursively)."""
    folder = tmp_path_factory.mktemp("photos")
    paths = _make_photos()(folder / "sub", PHOTOS, seed=1)
    for path in paths[:6]:
        path.rename(folder / path.name)
    (folder / BROKEN).write_bytes((folder / "photo_00000.jpg").read_bytes()[:600])
    return folder


def _rows(folder: Path) -> list[dict]:
    return read_rows(folder).to_pylist()


def _record(folder: Path) -> dict:
    return json.loads((folder / "_run.json").read_text())


@pytest.fixture(scope="session")
def local_rows(small_export, photos, tmp_path_factory):
    """The local run every other form is compared with (shards of 5 rows, --check 4)."""
    out = tmp_path_factory.mktemp("batch-local")
    report = run_batch(str(small_export.onnx_path), [str(photos)], out,
                       BatchOptions(shard_size=5, check=4, keep_logits=True))
    return out, report


def test_local_rows_are_predicts_with_the_broken_image_as_a_row(local_rows, small_export, photos):
    out, report = local_rows
    rows = _rows(out)
    assert [r["position"] for r in rows] == list(range(PHOTOS + 1))
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [f"part-{i:05d}.parquet" for i in range(3)]
    broken = [r for r in rows if r["error"] is not None]
    assert [Path(r["path"]).name for r in broken] == [BROKEN] and broken[0]["top_index"] is None
    assert "cannot read" in broken[0]["error"]
    good = [r for r in rows if r["error"] is None]
    expected = classify(small_export.onnx_path, [r["path"] for r in good], topk=5, backend="ort")
    for row, prediction in zip(good, expected.predictions):
        assert row["path"] == prediction.image
        assert row["top_index"] == [c["index"] for c in prediction.top]
        np.testing.assert_allclose(row["top_probability"], [c["probability"] for c in prediction.top], rtol=1e-4)
        assert len(row["logits"]) == 1000
    record = _record(out)
    assert record["status"] == "complete" and report.passed
    assert record["counts"] == {"rows": PHOTOS + 1, "errors": 1, "shards": 3, "run": PHOTOS + 1}
    assert record["artifact_sha256"] == sha256_file(small_export.onnx_path)
    assert record["check"]["passed"] and record["check"]["images"] == 4
    assert record["inputs"]["count"] == PHOTOS + 1 and record["configuration"]["mode"] == "local"
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.suffix != ".lock"]  # no staged files left
    assert pq.read_table(out).num_rows == PHOTOS + 1  # the folder reads as one Parquet data set
    assert sorted(record["shards"]) == ["0", "1", "2"]


def test_damaged_files_and_odd_names_are_rows(small_export, photos, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    broken_png(folder / "a_broken.png")
    (folder / "b_empty.jpg").write_bytes(b"")
    shutil.copy(photos / "photo_00000.jpg", os.fsencode(folder) + b"/caf\xe9.jpg")  # not UTF-8
    out = tmp_path / "out"
    report = run_batch(str(small_export.onnx_path), [str(folder)], out, BatchOptions(check=1))
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert sorted(rows) == ["a_broken.png", "b_empty.jpg", "caf\\xe9.jpg"]
    assert "broken PNG file" in rows["a_broken.png"]["error"] and rows["b_empty.jpg"]["error"]
    assert rows["caf\\xe9.jpg"]["error"] is None and len(rows["caf\\xe9.jpg"]["top_index"]) == 5
    assert report.passed and report.record.check["images"] == 1  # the check passes over the unreadable ones


def test_cli_json_and_refusals(cli, small_export, photos, tmp_path, local_rows):
    out = tmp_path / "cli"
    result = cli("batch", str(small_export.onnx_path), str(photos / "sub" / "*.jpg"), "--output", str(out),
                 "--topk", "2", "--json", "-q")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["output"] == str(out) and record["counts"]["rows"] == PHOTOS - 6
    assert all(len(r["top_index"]) == 2 for r in _rows(out))
    assert_one_line_error(cli("batch", str(small_export.onnx_path), str(photos), "--output", str(out)),
                          contains="already holds a batch run")
    assert_one_line_error(cli("batch", str(small_export.onnx_path), str(photos), "--output", str(out), "--resume"),
                          contains="the inputs are not the ones the run began with")
    fp16 = small_export.onnx_path.with_name(small_export.onnx_path.stem + ".fp16.onnx")
    assert_one_line_error(cli("batch", str(fp16), str(photos / "sub" / "*.jpg"), "--output", str(out), "--resume",
                              "--topk", "2"), contains="the artifact changed since the run began")
    assert_one_line_error(cli("batch", str(small_export.onnx_path), str(tmp_path / "nothing"), "--output",
                              str(tmp_path / "x")), contains="does not exist")
    assert_one_line_error(cli("batch", str(small_export.onnx_path), str(photos), "--output", str(tmp_path / "y"),
                              "--batch-size", "64"), contains="--batch-size 64 is out of range")
    assert_one_line_error(cli("batch", str(small_export.onnx_path), str(photos / "sub" / "*.jpg"), "--output",
                              str(out), "--resume", "--topk", "2", "--backend", "openvino"),
                          contains="it ran with backend onnxruntime-cpu, this invocation openvino-cpu")
    shard = out / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes())  # the same bytes: still this run's
    (out / "part-00007.parquet").write_bytes(shard.read_bytes())
    assert_one_line_error(cli("batch", str(small_export.onnx_path), str(photos / "sub" / "*.jpg"), "--output",
                              str(out), "--resume", "--topk", "2"), contains="beyond this run's 1 shards")
    (out / "part-00007.parquet").unlink()
    (out / "_run.json").rename(out / "saved.json")
    assert_one_line_error(cli("batch", str(small_export.onnx_path), str(photos / "sub" / "*.jpg"), "--output",
                              str(out), "--topk", "2"), contains="holds shards of a run without its _run.json")
    (out / "saved.json").rename(out / "_run.json")
    table = pq.read_table(shard)
    pq.write_table(table.set_column(1, "path", table.column("path")), shard)  # rewritten: another file
    assert_one_line_error(cli("batch", str(small_export.onnx_path), str(photos / "sub" / "*.jpg"), "--output",
                              str(out), "--resume", "--topk", "2"), contains="changed since this run wrote it")
    for flags, message in ((["--actors", "2"], "give --ray too"), (["--threads", "0"], "--threads 0 is out of range"),
                           (["--ray", "--actor-cpus", "0"], "--actor-cpus must be more than 0")):
        assert_one_line_error(cli("batch", str(small_export.onnx_path), str(photos), "--output",
                                  str(tmp_path / "never"), *flags), contains=message)
    assert not (tmp_path / "never").exists()  # refused before the folder is made
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# two files\n{photos / 'photo_00000.jpg'}\n{tmp_path / 'gone.jpg'}\n")
    result = cli("batch", str(small_export.onnx_path), str(listing), "--output", str(tmp_path / "z"), "-q")
    assert result.exit_code == 0 and "1 images could not be read" in result.stdout
    listing.write_text(f"{tmp_path / 'gone.jpg'}\n")  # every image unreadable: a pipeline must notice
    result = cli("batch", str(small_export.onnx_path), str(listing), "--output", str(tmp_path / "all-failed"), "-q")
    assert result.exit_code == 1 and "1 rows (1 images could not be read)" in result.stdout


def _batch_process(artifact: Path, photos: Path, out: Path, *more: str) -> subprocess.Popen:
    script = "import sys; from resnet_deploy.cli import main; main(sys.argv[1:])"
    return subprocess.Popen([sys.executable, "-c", script, "batch", str(artifact), str(photos), "--output", str(out),
                             "--shard-size", "4", "--batch-size", "1", "--threads", "1", "-q", *more],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def many_photos(photos, tmp_path_factory):
    """160 links to the photographs (and the broken one): a job long enough to stop mid-way."""
    folder = tmp_path_factory.mktemp("many")
    files = sorted(photos.rglob("*.jpg"))
    for index in range(160):
        os.link(files[index % len(files)], folder / f"{index:04d}.jpg")
    return folder


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_stopped_job_resumes_with_nothing_twice_and_nothing_lost(small_export, many_photos, tmp_path, how):
    out = tmp_path / "stopped"
    process = _batch_process(small_export.onnx_path, many_photos, out)
    deadline = time.monotonic() + 120
    while len(list(out.glob("part-*.parquet"))) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(how)
    process.communicate(timeout=60)
    done_before = sorted(p.name for p in out.glob("part-*.parquet"))
    assert 2 <= len(done_before) < 40, "the job ended before it could be stopped mid-way"
    record = _record(out)
    assert record["status"] == ("running" if how == signal.SIGKILL else "stopped")
    if how == signal.SIGTERM:
        assert process.returncode == 128 + signal.SIGTERM
        assert not [p for p in out.iterdir() if p.name.startswith(".") and p.suffix != ".lock"]
    resumed = _batch_process(small_export.onnx_path, many_photos, out, "--resume")
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    rows = _rows(out)
    assert [r["position"] for r in rows] == list(range(160))
    record = _record(out)
    assert record["counts"]["rows"] == 160 and record["counts"]["run"] == 160 - 4 * len(done_before)
    assert len(record["resumed"]) == 1 and record["counts"]["errors"] == sum(1 for r in rows if r["error"])
    whole = tmp_path / "whole"
    run_batch(str(small_export.onnx_path), [str(many_photos)], whole, BatchOptions(shard_size=4))
    assert [r["top_index"] for r in _rows(whole)] == [r["top_index"] for r in rows]


@pytest.fixture(scope="module")
def s3_photos(photos):
    """The photographs in a bucket of a local S3-compatible server (moto's server mode, loopback), as an
    ``s3://`` URI with its endpoint."""
    server_module = pytest.importorskip("moto.server", reason="moto[server] (a test dependency) is the local S3")
    import boto3

    port = free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in LOCAL_S3_KEYS}
    os.environ.update(LOCAL_S3_KEYS)
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket="images")
        for path in sorted(photos.rglob("*.jpg")):
            client.upload_file(str(path), "images", f"set/{path.relative_to(photos)}")
        yield f"s3://images/set?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
    finally:
        server.stop()
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def _same_rows(rows: list[dict], reference: list[dict], key=lambda r: Path(r["path"]).name) -> None:
    by_name = {key(r): r for r in reference}
    assert sorted(map(key, rows)) == sorted(by_name)
    for row in rows:
        expected = by_name[key(row)]
        assert (row["error"] is None) == (expected["error"] is None)
        assert row["top_index"] == expected["top_index"]
        if row["error"] is None:
            np.testing.assert_allclose(row["top_probability"], expected["top_probability"], rtol=1e-4, atol=1e-6)


def test_s3_inputs_give_the_local_rows(small_export, s3_photos, local_rows, tmp_path):
    out = tmp_path / "s3"
    report = run_batch(str(small_export.onnx_path), [s3_photos], out, BatchOptions(shard_size=5, check=2))
    rows = _rows(out)
    assert all(r["path"].startswith("s3://images/set/") for r in rows) and report.passed
    _same_rows(rows, _rows(local_rows[0]))
    assert "cannot read s3://images/set/" + BROKEN in [r["error"] for r in rows if r["error"]][0]


def test_ray_gives_the_local_rows_from_local_and_s3_inputs(local_ray, small_export, photos, s3_photos, local_rows,
                                                           tmp_path):
    out = tmp_path / "ray"
    report = run_batch(str(small_export.onnx_path), [str(photos)], out,
                       BatchOptions(shard_size=5, check=3, ray=RayOptions(actors=2)))
    record = _record(out)
    assert report.passed and record["configuration"]["mode"] == "ray"
    assert record["configuration"]["ray"]["actors"] == 2 and record["configuration"]["ray"]["actor_cpus"] < 1
    reference = _rows(local_rows[0])
    _same_rows(_rows(out), reference, key=lambda r: r["path"])
    from_s3 = tmp_path / "ray-s3"
    run_batch(str(small_export.onnx_path), [s3_photos], from_s3, BatchOptions(ray=RayOptions(actors=1)))
    _same_rows(_rows(from_s3), reference)
    with pytest.raises(Exception, match="reserve all 2 CPUs"):
        run_batch(str(small_export.onnx_path), [str(photos)], tmp_path / "hang",
                  BatchOptions(ray=RayOptions(actors=2, actor_cpus=1)))
    assert local_ray.is_initialized()  # the job leaves a Ray it did not start running
    shutil.rmtree(out)
