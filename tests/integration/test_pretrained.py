"""Published checkpoints by tag, against a loopback server that serves generated checkpoints at
torchvision-, timm- (Hugging Face hub) and IBN-Net-shaped paths: download, hash checks, the torch hub
cache, preprocessing that follows the weights, and the errors a user without network meets."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import threading

import pytest
import torch
from safetensors.torch import save as save_safetensors

from resnet_deploy.artifacts import read_manifest
from resnet_deploy.errors import CheckpointError
from resnet_deploy.models import create_model, pretrained
from tests.conftest import assert_one_line_error


class _Files(http.server.BaseHTTPRequestHandler):
    files: dict[str, tuple[bytes, dict[str, str]]] = {}
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.requests.append(self.path)
        body, headers = self.files.get(self.path, (None, {}))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A loopback server and three published entries for resnet18, one per source, with a fresh torch cache."""
    torch.manual_seed(1)
    state = create_model("resnet18").state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    pth = buffer.getvalue()
    sha = hashlib.sha256(pth).hexdigest()
    safetensors = save_safetensors({k: v.contiguous() for k, v in state.items()})
    entries = {
        "torchvision": pretrained.PublishedWeights("torchvision:TEST_V1", "resnet18", f"resnet18-{sha[:8]}.pth", 69.758,
                                                   {**pretrained._TV_V2}),
        "timm": pretrained.PublishedWeights("timm:resnet18.test_in1k", "resnet18",
                                            "timm/resnet18.test_in1k/resolve/main/model.safetensors", None,
                                            {**pretrained._TV_V1, "interpolation": "bicubic"}),
        "ibn": pretrained.PublishedWeights("ibn:resnet18_ibn_test", "resnet18", f"resnet18_ibn_test-{sha[:8]}.pth",
                                           None, pretrained._TV_V1),
    }
    _Files.files = {
        f"/torchvision/{entries['torchvision'].path}": (pth, {}),
        f"/timm/{entries['timm'].path}": (safetensors, {"X-Linked-Etag": f'"{hashlib.sha256(safetensors).hexdigest()}"'}),
        f"/ibn/{entries['ibn'].path}": (pth, {}),
    }
    _Files.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(pretrained.TEST_BASE_URL_ENV, f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for entry in entries.values():
        monkeypatch.setitem(pretrained.PUBLISHED, (entry.arch, entry.tag), entry)
    yield entries, state
    server.shutdown()
    server.server_close()


def _cache():
    folder = pretrained.cache_dir()
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_checks_the_hash_and_reuses_the_cache(hub):
    entries, state = hub
    for source in ("torchvision", "timm", "ibn"):
        path, digest = pretrained.fetch(entries[source], progress=None)
        assert path.parent == pretrained.cache_dir() and hashlib.sha256(path.read_bytes()).hexdigest() == digest
        model = create_model("resnet18", weights=path)
        assert torch.equal(model.state_dict()["fc.weight"], state["fc.weight"])
    assert len(_Files.requests) == 3
    assert entries["timm"].filename == "resnet18.test_in1k.safetensors"
    for source in ("torchvision", "timm", "ibn"):  # cached: no new request
        pretrained.fetch(entries[source], progress=None)
    assert len(_Files.requests) == 3 and not any(name.startswith(".download") for name in _cache())


def test_a_hash_mismatch_is_refused_and_nothing_is_cached(hub, monkeypatch):
    entries, _ = hub
    wrong = pretrained.PublishedWeights("torchvision:WRONG", "resnet18", "resnet18-00000000.pth", None, pretrained._TV_V1)
    _Files.files["/torchvision/resnet18-00000000.pth"] = _Files.files[f"/torchvision/{entries['torchvision'].path}"]
    with pytest.raises(CheckpointError, match="not the published 00000000"):
        pretrained.fetch(wrong, progress=None)
    body, _ = _Files.files[f"/timm/{entries['timm'].path}"]
    _Files.files[f"/timm/{entries['timm'].path}"] = (body, {"X-Linked-Etag": '"' + "ab" * 32 + '"'})
    with pytest.raises(CheckpointError, match="refused"):
        pretrained.fetch(entries["timm"], progress=None)
    assert _cache() == []


def test_export_by_tag_records_the_weights_and_their_preprocessing(cli, hub, tmp_path):
    result = cli("export", "--arch", "resnet18", "--weights", "torchvision:TEST_V1", "--input-size", "64",
                 "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines()[0].startswith("weights: torchvision:TEST_V1 (http://127.0.0.1:")
    manifest = read_manifest(tmp_path / "out" / "resnet18.json")
    assert manifest.weights["published"] == "torchvision:TEST_V1"
    assert manifest.weights["file"].endswith(entries_name := hub[0]["torchvision"].filename), entries_name
    assert manifest.preprocess["resize"] == round(64 * 232 / 224)  # the V2 recipe's 232 for 224, scaled
    timm = cli("export", "--arch", "resnet18", "--weights", "timm:resnet18.test_in1k", "--input-size", "64",
               "--resize", "80", "--out", str(tmp_path / "timm"), "-q")
    assert timm.exit_code == 0, timm.stderr
    preprocess = read_manifest(tmp_path / "timm" / "resnet18.json").preprocess
    assert preprocess["interpolation"] == "bicubic" and preprocess["resize"] == 80  # the user's flag wins
    listed = json.loads(cli("list", "--weights", "--json").stdout)
    assert {"arch": "resnet18", "tag": "torchvision:TEST_V1"}.items() <= next(
        e for e in listed if e["tag"] == "torchvision:TEST_V1").items()


def test_unknown_tag_and_no_network_are_one_line_errors(cli, hub, tmp_path, monkeypatch):
    assert_one_line_error(cli("export", "--arch", "resnet18", "--weights", "torchvision:IMAGENET1K_V9",
                              "--out", str(tmp_path / "a")), 2, "known for it: torchvision:IMAGENET1K_V1")
    monkeypatch.setenv(pretrained.TEST_BASE_URL_ENV, "http://127.0.0.1:9")  # nothing listens on the discard port
    result = cli("export", "--arch", "resnet18", "--weights", "ibn:resnet18_ibn_test", "--out", str(tmp_path / "b"))
    assert_one_line_error(result, 2, "cannot download http://127.0.0.1:9/ibn/resnet18_ibn_test-")
    assert f"put the file at {pretrained.cache_dir()}" in result.stderr
    assert _cache() == [] and not (tmp_path / "b").exists()


def test_first_line_says_random_weights(cli, tmp_path):
    result = cli("export", "--arch", "resnet18", "--input-size", "32", "--out", str(tmp_path))
    assert result.exit_code == 0 and result.stderr.splitlines()[0].startswith("weights: RANDOM")
