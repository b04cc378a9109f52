"""Naming, the manifest, atomic writes and committing artifacts."""

from __future__ import annotations

import json
import re

import pytest

from resnet_deploy.artifacts import (
    ArtifactEntry,
    BatchProfile,
    ErrorFigures,
    Manifest,
    ParityRecord,
    PreprocessRecord,
    TensorSpec,
    artifact_filename,
    commit_artifacts,
    manifest_for,
    read_manifest,
    split_artifact_name,
    write_manifest,
)
from resnet_deploy.errors import ArtifactError
from resnet_deploy.fileio import Staging, atomic_open, sha256_file


@pytest.mark.parametrize("text, expected", [("1:8:32", (1, 8, 32)), ("4", (4, 4, 4)), ("2:2:64", (2, 2, 64))])
def test_batch_profile_parse(text, expected):
    profile = BatchProfile.parse(text)
    assert (profile.min, profile.opt, profile.max) == expected
    assert BatchProfile.parse(str(profile)) == profile


@pytest.mark.parametrize("text", ["", "1:8", "a:b:c", "8:1:32", "1:64:32", "0:1:2", "1:8:32:64", "-1:2:3"])
def test_batch_profile_rejects(text):
    with pytest.raises(ArtifactError, match="invalid batch profile"):
        BatchProfile.parse(text)


def test_artifact_names():
    assert artifact_filename("resnet50", "fp16") == "resnet50.fp16.onnx"
    assert split_artifact_name("a/b/resnet50.int8.onnx") == ("resnet50", "int8")
    assert split_artifact_name("resnet50.onnx") == ("resnet50", "fp32")
    assert split_artifact_name("my-net_2.engine") == ("my-net_2", "engine")
    with pytest.raises(ArtifactError):
        split_artifact_name("model.pt")
    with pytest.raises(ArtifactError, match="invalid artifact name"):
        artifact_filename("res.net", "fp32")


def _manifest(stem: str = "m") -> Manifest:
    return Manifest(
        stem=stem, arch="resnet18", num_classes=1000, model_options={}, weights={"init": "random", "seed": 0},
        input=TensorSpec("input", ["batch", 3, 64, 64]), outputs=[TensorSpec("logits", ["batch", 1000])],
        preprocess=PreprocessRecord(resize=73, crop=(64, 64), interpolation="bilinear", scale=1 / 255,
                                    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), layout="NCHW", color="RGB"),
        batch=BatchProfile(), dynamic_hw=False, opset=18, exporter="dynamo", simplified=True,
        parity=[ParityRecord("fp32", "onnxruntime-cpu", "torch", "random", True, 1, "logits",
                             ErrorFigures(1e-6, 1e-7, 1e-7, 1e-6, 1e-3, 2.0, 5e-7, 1.0, 1.0, 1.0, True))],
    )


def test_manifest_round_trip_and_version_check(tmp_path):
    path = write_manifest(_manifest(), tmp_path)
    loaded = read_manifest(path)
    assert loaded.to_dict() == json.loads(path.read_text())
    assert loaded.batch == BatchProfile(1, 8, 32) and loaded.input.shape == ["batch", 3, 64, 64]
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="schema version 99"):
        read_manifest(path)
    path.write_text("{broken")
    with pytest.raises(ArtifactError, match="cannot read manifest"):
        read_manifest(path)


def test_the_records_read_back_typed_and_read_like_the_json_they_are(tmp_path):
    written = _manifest()
    path = write_manifest(written, tmp_path)
    data = json.loads(path.read_text())
    row = data["parity"][0]
    assert list(row)[:8] == ["artifact", "backend", "reference", "inputs", "judged", "batch", "output", "max_abs"]
    assert "figures" not in row and "embedded" not in data["preprocess"]  # flat rows; embedded only where true
    loaded = read_manifest(path)
    assert loaded.preprocess.crop == (64, 64) and loaded.parity[0].figures.cosine == 1.0
    assert loaded.preprocess == data["preprocess"] and loaded.parity[0] == row  # the Mapping view is the JSON
    assert loaded.preprocess["crop"] == [64, 64] and loaded.parity[0].get("artifact") == "fp32"
    assert json.dumps(loaded.preprocess.to_dict()) == json.dumps(data["preprocess"])
    with pytest.raises(Exception):  # frozen: a reader cannot change what the manifest says
        loaded.preprocess.resize = 1


@pytest.mark.parametrize("spoil, message", [
    (lambda d: [d], "is not a resnet-deploy manifest"),  # a JSON list
    (lambda d: {**d, "batch": {"min": "1", "opt": 8, "max": 32}}, "batch ['1', 8, 32] is not 1 <= MIN"),
    (lambda d: {**d, "batch": {"min": -4, "opt": 8, "max": 32}}, "batch [-4, 8, 32] is not 1 <= MIN"),
    (lambda d: {**d, "preprocess": {**d["preprocess"], "resize": "73"}}, "preprocess resize '73' is not a side"),
    (lambda d: {**d, "preprocess": {**d["preprocess"], "resize": 1_000_000_000}}, "preprocess resize 1000000000"),
    (lambda d: {**d, "preprocess": {**d["preprocess"], "crop": [64]}}, "preprocess crop [64] is not [H, W]"),
    (lambda d: {**d, "preprocess": {**d["preprocess"], "std": [0.2, 0, 0.2]}}, "preprocess std [0.2, 0, 0.2]"),
    (lambda d: {**d, "num_classes": True}, "num_classes True is not a count"),
    (lambda d: {**d, "input": "input"}, "is malformed"),
])
def test_a_malformed_manifest_is_one_line(tmp_path, spoil, message):
    path = write_manifest(_manifest(), tmp_path)
    path.write_text(json.dumps(spoil(json.loads(path.read_text()))))
    with pytest.raises(ArtifactError, match=re.escape(message)):
        read_manifest(path)


def test_atomic_open_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write("new, half written")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def _staged(staging, data: bytes):
    path = staging.file()
    path.write_bytes(data)
    return path


def test_staging_commits_durably_and_removes_what_it_did_not_commit(tmp_path):
    with pytest.raises(RuntimeError):
        with Staging(tmp_path) as staging:
            kept, dropped = _staged(staging, b"kept"), _staged(staging, b"dropped")
            assert kept.name.startswith(".tmp-") and kept.parent == tmp_path
            final = staging.commit(kept, tmp_path / "final.bin")
            raise RuntimeError("a later step fails")
    assert [p.name for p in tmp_path.iterdir()] == ["final.bin"] and not dropped.exists()
    assert final.read_bytes() == b"kept" and final.stat().st_mode & 0o777 == 0o644


def test_commit_replaces_and_removes_stale(tmp_path):
    old_extra = tmp_path / "m.fp16.onnx"
    old_extra.write_bytes(b"old fp16")
    stale = _manifest()
    stale.artifacts = [ArtifactEntry("m.fp16.onnx", "fp16", 8, "x")]
    write_manifest(stale, tmp_path)
    with Staging(tmp_path) as staging:
        path = commit_artifacts(staging, {"fp32": _staged(staging, b"new fp32 model")}, _manifest())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.onnx"]
    manifest, precision = manifest_for(tmp_path / "m.onnx")
    assert precision == "fp32" and manifest.artifacts[0].sha256 == sha256_file(tmp_path / "m.onnx")
    assert path == tmp_path / "m.json"


def test_manifest_for_refuses_changed_artifact(tmp_path):
    with Staging(tmp_path) as staging:
        commit_artifacts(staging, {"fp32": _staged(staging, b"model bytes")}, _manifest())
    (tmp_path / "m.onnx").write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match="changed since export"):
        manifest_for(tmp_path / "m.onnx")
    (tmp_path / "m.json").unlink()
    with pytest.raises(ArtifactError, match="not found"):
        manifest_for(tmp_path / "m.onnx")


def test_golden_file_committed_with_the_manifest_and_removed_with_it(tmp_path):
    with Staging(tmp_path) as staging:
        commit_artifacts(staging, {"fp32": _staged(staging, b"model")}, _manifest(),
                         golden=_staged(staging, b"golden outputs"))
    manifest, _ = manifest_for(tmp_path / "m.onnx")
    assert manifest.golden == {"file": "m.golden.npz", "bytes": 14, "sha256": sha256_file(tmp_path / "m.golden.npz")}
    with Staging(tmp_path) as staging:  # a re-export without golden outputs
        commit_artifacts(staging, {"fp32": _staged(staging, b"model 2")}, _manifest())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.onnx"]
    assert manifest_for(tmp_path / "m.onnx")[0].golden == {}


def test_sweep_removes_the_temporaries_of_dead_writers_only(tmp_path):
    import os
    import subprocess
    import sys

    from resnet_deploy.fileio import sweep_temporaries, temp_prefix

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)  # a process that has exited: its PID names no live writer
    (tmp_path / f".tmp-{dead}-abc.onnx").write_bytes(b"half an export")
    (tmp_path / f".tmp-{dead}-abc.onnx.pre.onnx").write_bytes(b"its quantization input")
    (tmp_path / f".tmp-{dead}-mixed-xyz").mkdir()
    (tmp_path / f".tmp-{dead}-mixed-xyz" / "candidate.onnx").write_bytes(b"scratch")
    with Staging(tmp_path) as staging:
        live = staging.file(".onnx")  # this process's, still being written
        assert live.name.startswith(temp_prefix()) and str(os.getpid()) in live.name
        (tmp_path / ".tmp-notours").write_bytes(b"")  # not named by this package: left alone
        removed = sweep_temporaries(tmp_path)
        assert sorted(removed) == sorted([f".tmp-{dead}-abc.onnx", f".tmp-{dead}-abc.onnx.pre.onnx",
                                          f".tmp-{dead}-mixed-xyz"])
        assert live.exists() and (tmp_path / ".tmp-notours").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-notours"]
