"""Accuracy-bounded INT8 (`export --int8 --max-drop`): a trained model with one block made
deliberately fragile under INT8 fails as plain INT8, and passes with that block left in float."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file, save_file

from resnet_deploy.artifacts import read_manifest

FRAGILE = "layer3.0"


def fragile_checkpoint(source, target, block: str = FRAGILE, factor: float = 1000.0) -> None:
    """The same function with one activation channel inside ``block`` 1000x larger: its BN scales the
    channel up, the next conv scales it back (ReLU commutes with a positive scale). Per-tensor INT8
    of that conv's input then spends its range on one channel and rounds the others away."""
    state = load_file(str(source))
    channel = int(state[f"{block}.bn1.weight"].abs().argmax())
    for key in ("weight", "bias"):
        state[f"{block}.bn1.{key}"][channel] *= factor
    state[f"{block}.conv2.weight"][:, channel] /= factor
    save_file(state, str(target))


@pytest.mark.slow
def test_max_drop_leaves_the_fragile_block_in_float(cli, digits, tmp_path):
    out, record = digits
    fragile = tmp_path / "fragile.safetensors"
    fragile_checkpoint(out / record["checkpoint"], fragile)
    common = ["--arch", "resnet18_cifar", "--weights", str(fragile), "--input-size", str(record["settings"]["size"]),
              "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--calib-data", str(out / "data" / "train"),
              "--calib-size", "256", "--int8", "--int8-target", "trt"]

    plain = cli("export", *common, "--out", str(tmp_path / "plain"), "-q")
    assert plain.exit_code == 1 and "int8 artifact" in plain.stderr, plain.stderr  # the gate refuses it
    assert not (tmp_path / "plain" / "resnet18_cifar.int8.onnx").exists()

    bounded = cli("export", *common, "--max-drop", "1", "--eval-data", str(out / "data" / "test"),
                  "--out", str(tmp_path / "mixed"))
    assert bounded.exit_code == 0, bounded.stderr
    assert f"left in float: {FRAGILE}" in bounded.stderr
    mixed = read_manifest(tmp_path / "mixed" / "resnet18_cifar.json").precision_options["int8"]["mixed"]
    assert mixed["drop_all_int8"] > 1 >= mixed["drop"]
    assert FRAGILE in mixed["float_units"] and len(mixed["float_units"]) <= 3
    assert mixed["sensitivity"][0]["unit"] == FRAGILE  # ranked most sensitive
    assert len(mixed["sensitivity"]) == 10  # stem, 8 blocks, head
    assert "450 images" in mixed["measure"]

    # no Q/DQ inside the float block: its convs read float weights straight from initializers
    import onnx

    model = onnx.load(str(tmp_path / "mixed" / "resnet18_cifar.int8.onnx"))
    initializers = {t.name for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    float_convs = [n for n in convs if n.input[1] in initializers]
    assert 1 <= len(float_convs) < len(convs)


def test_max_drop_needs_int8_and_a_measure(cli, tmp_path):
    result = cli("export", "--arch", "resnet18", "--input-size", "32", "--max-drop", "1", "--out", str(tmp_path))
    assert result.exit_code == 2 and "go with --int8" in result.stderr
    result = cli("export", "--arch", "resnet18", "--input-size", "32", "--int8", "--calib-data", "random",
                 "--calib-size", "8", "--max-drop", "1", "--out", str(tmp_path / "x"), "-q")
    assert result.exit_code == 2 and "--max-drop needs labelled --eval-data" in result.stderr
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").glob("*.onnx"))
