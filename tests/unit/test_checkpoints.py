"""Checkpoint loading: formats, wrappers, and every way a weights file can be wrong."""

from __future__ import annotations

import pickle

import pytest
import torch

from resnet_deploy.errors import CheckpointError
from resnet_deploy.models import create_model, read_state_dict, save_checkpoint
from tests.conftest import assert_one_line_error


def _randomized(name: str, **kwargs) -> torch.nn.Module:
    """A model whose every tensor (BN statistics too) differs from a fresh init."""
    torch.manual_seed(1)
    model = create_model(name, **kwargs)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) * 0.5 + 0.5 if tensor.dim() == 1 else torch.randn_like(tensor) * 0.05)
    return model


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_toolkit_checkpoint_round_trips(tmp_path, suffix):
    model = _randomized("resnet18")
    path = save_checkpoint(model, tmp_path / f"w{suffix}")
    loaded = create_model("resnet18", weights=path)
    assert _same_outputs(model, loaded)
    assert not _same_outputs(create_model("resnet18"), loaded)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd},
        lambda sd: {"model": sd, "epoch": 90, "optimizer": {"lr": 0.1}},
        lambda sd: {"module." + k: v for k, v in sd.items()},
        lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}, "arch": "resnet18"},
        lambda sd: {"model_state_dict": {"_orig_mod." + k: v for k, v in sd.items()}},
    ],
    ids=["state_dict", "model+extras", "module-prefix", "wrapped+prefix", "compiled"],
)
def test_wrapped_checkpoints_load(tmp_path, wrap):
    model = _randomized("resnet18")
    path = tmp_path / "w.pth"
    torch.save(wrap(model.state_dict()), path)
    assert _same_outputs(model, create_model("resnet18", weights=path))


def test_missing_num_batches_tracked_is_accepted(tmp_path):
    model = _randomized("resnet18")
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")
    assert _same_outputs(model, create_model("resnet18", weights=tmp_path / "old.pth"))


def test_head_of_another_size(tmp_path):
    model = _randomized("resnet18", num_classes=10)
    path = save_checkpoint(model, tmp_path / "ten.pt")
    with pytest.raises(CheckpointError, match="10-class head.*--num-classes 10"):
        create_model("resnet18", weights=path)
    assert _same_outputs(model, create_model("resnet18", num_classes=10, weights=path))
    backbone = create_model("resnet18", num_classes=0, weights=path)
    assert torch.equal(backbone.state_dict()["layer4.1.bn2.running_mean"], model.state_dict()["layer4.1.bn2.running_mean"])


def test_checkpoint_of_another_arch_names_keys(tmp_path):
    path = save_checkpoint(create_model("resnet18"), tmp_path / "r18.pt")
    with pytest.raises(CheckpointError) as info:
        create_model("resnet50", weights=path)
    message = str(info.value)
    assert "does not fit resnet50" in message and "missing" in message and "layer1.0.conv3.weight" in message
    assert "\n" not in message


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Exploit()}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        create_model("resnet18", weights=path)
    assert not marker.exists()
    legacy = tmp_path / "evil_legacy.pkl"
    legacy.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(CheckpointError):
        read_state_dict(legacy)
    assert not marker.exists()


def test_pickle_that_runs_a_command_is_refused_and_named(tmp_path):
    """torch 2.13 words the refusal of os.system ("unsupported GLOBAL posix.system whose module posix is
    blocked") unlike `open`'s: it was reported as a corrupted file that weights_only=False would load."""
    import os

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Exploit()}, path)
    with pytest.raises(CheckpointError, match=r"refused to load .*evil.pth: it holds Python objects \((posix|os)"
                                              r"\.system\) that would run code") as info:
        read_state_dict(path)
    assert "weights_only" not in str(info.value) and not marker.exists()


@pytest.mark.parametrize("key, value, message", [
    ("layer1.0.conv1.weight", float("nan"), r"NaN or infinite values in 1 tensors \(layer1.0.conv1.weight\)"),
    ("fc.bias", float("inf"), r"NaN or infinite values in 1 tensors \(fc.bias\)"),
    ("bn1.running_var", -1.0, r"negative BatchNorm variances in bn1.running_var"),
])
def test_weights_that_compute_nothing_are_named(tmp_path, key, value, message):
    """Were found by the export's parity gate, which blamed simplification ("retry with --no-simplify")."""
    state = create_model("resnet18").state_dict()
    state[key] = state[key].clone()
    state[key].view(-1)[0] = value
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=message):
        create_model("resnet18", weights=tmp_path / "w.pt")


def test_sparse_meta_folder_and_fifo_weights_are_one_line(tmp_path):
    import os

    dense = create_model("resnet18").state_dict()
    for name, spoil in (("sparse", lambda t: t.to_sparse()), ("meta", lambda t: t.to("meta"))):
        state = dict(dense)
        state["fc.weight"] = spoil(state["fc.weight"])
        torch.save(state, tmp_path / f"{name}.pt")
        with pytest.raises(CheckpointError, match=r"sparse or have no data \(meta\): \['fc.weight'\]"):
            create_model("resnet18", weights=tmp_path / f"{name}.pt")
    with pytest.raises(CheckpointError, match="is a folder: give the checkpoint file inside it"):
        read_state_dict(tmp_path)
    os.mkfifo(tmp_path / "fifo.pt")
    with pytest.raises(CheckpointError, match="is a FIFO, not a regular file"):  # was a read that never returned
        read_state_dict(tmp_path / "fifo.pt")


@pytest.mark.parametrize(
    "content, match",
    [(b"", "is empty"), (b"PK\x03\x04 this is not a zip archive at all", "corrupted"), (b"\x00" * 64, "corrupted")],
    ids=["empty", "truncated-zip", "garbage"],
)
def test_unreadable_files(tmp_path, content, match):
    path = tmp_path / "w.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        create_model("resnet18", weights=path)


def test_corrupted_safetensors_and_missing_file(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="safetensors"):
        create_model("resnet18", weights=path)
    with pytest.raises(CheckpointError, match="does not exist"):
        create_model("resnet18", weights=tmp_path / "nope.pt")


def test_non_tensor_payload(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="not a state_dict"):
        create_model("resnet18", weights=tmp_path / "w.pt")


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    model = _randomized("resnet18")
    path = save_checkpoint(model, tmp_path / "w.pt")
    before = path.read_bytes()

    def broken_save(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(create_model("resnet18"), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]


def _evil_file(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save(Exploit(), tmp_path / "evil.pt")
    return tmp_path / "evil.pt"


@pytest.mark.parametrize("case", ["empty", "corrupted", "pickle", "other-arch", "unknown-arch"])
def test_cli_bad_weights_one_line_error(cli, tmp_path, case):
    out = tmp_path / "out"
    arch = "resnet18"
    if case == "empty":
        weights = tmp_path / "empty.pt"
        weights.write_bytes(b"")
    elif case == "corrupted":
        weights = save_checkpoint(create_model("resnet18"), tmp_path / "c.pt")
        weights.write_bytes(weights.read_bytes()[: 4096])
    elif case == "pickle":
        weights = _evil_file(tmp_path)
    elif case == "other-arch":
        weights = save_checkpoint(create_model("resnet34"), tmp_path / "r34.pt")
    else:
        weights = save_checkpoint(create_model("resnet18"), tmp_path / "r18.pt")
        arch = "resnet18x"
    result = cli("export", "--arch", arch, "--weights", str(weights), "--out", str(out), "--input-size", "64")
    assert_one_line_error(result, 2)
    assert not (tmp_path / "pwned").exists()
    assert not out.exists() or list(out.iterdir()) == []
