"""The zoo: parameter counts, MACs, key layouts and model forms."""

from __future__ import annotations

import pytest
import torch

from resnet_deploy.errors import DeployError, UnknownArchError
from resnet_deploy.models import count_macs, create_model, get_model_info, get_spec, list_models

# Reference figures: torchvision, timm and IBN-Net model definitions.
EXPECTED_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    "resnet50d": 25_576_264,
    "seresnet50": 28_088_024,
    "seresnext50_32x4d": 27_559_896,
    "res2net50_26w_4s": 25_699_120,
    "resnest50d": 27_483_240,
    "resnet50_ibn_a": 25_557_032,
}
# torchvision's GFLOPS metadata (really GMACs) at 224.
EXPECTED_GMACS = {
    "resnet18": 1.814, "resnet34": 3.664, "resnet50": 4.089, "resnet101": 7.801, "resnet152": 11.514,
    "resnext101_32x8d": 16.414, "wide_resnet50_2": 11.398, "wide_resnet101_2": 22.753,
}
CIFAR = ["resnet18_cifar", "resnet34_cifar", "resnet50_cifar"]
HEAVY = {"resnet152", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet101_2", "wide_resnet50_2", "resnet101"}


def test_registry_lists_every_family():
    names = list_models()
    assert set(EXPECTED_PARAMS) | set(CIFAR) == set(names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_parameter_count_matches_reference(name):
    assert get_model_info(name).params == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_GMACS))
def test_gmacs_counted_like_torchvision(name):
    assert get_model_info(name).gmacs == pytest.approx(EXPECTED_GMACS[name], abs=0.001)


def test_model_info_fields():
    info = get_model_info("resnet50")
    assert info.input_size == (3, 224, 224)
    assert info.block == "bottleneck" and info.family == "resnet" and info.num_classes == 1000
    assert get_model_info("resnet18_cifar").input_size == (3, 32, 32)
    assert "params" in info.to_dict()


def _small_size(name: str) -> int:
    return 32 if name in CIFAR else 64


@pytest.mark.parametrize("name", list_models())
def test_forward_small_input_batch_1_and_3(name):
    torch.manual_seed(0)
    model = create_model(name)
    assert not model.training
    size = _small_size(name)
    with torch.no_grad():
        one = model(torch.randn(1, 3, size, size))
        three = model(torch.randn(3, 3, size, size))
    classes = 10 if name in CIFAR else 1000
    assert one.shape == (1, classes) and three.shape == (3, classes)
    assert torch.isfinite(three).all()


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in list_models()]
)
def test_forward_default_input_size(name):
    model = create_model(name)
    size = get_spec(name).preprocess.input_size
    images = torch.randn(3, 3, size, size)
    with torch.no_grad():
        out = model(images)
        alone = model(images[:1])
    assert out.shape == (3, model.num_classes)
    # eval mode: no statistic is shared across the batch, so sample 0 alone gives the same answer
    torch.testing.assert_close(alone[0], out[0], rtol=1e-4, atol=1e-4 * out.abs().max().item())


def _keys(name: str, prefix: str) -> list[str]:
    return [k for k in create_model(name).state_dict() if k.startswith(prefix)]


def test_torchvision_key_layout():
    keys = set(create_model("resnet50").state_dict())
    for key in ["conv1.weight", "bn1.running_var", "layer1.0.conv3.weight", "layer1.0.downsample.0.weight",
                "layer1.0.downsample.1.running_mean", "layer4.2.bn3.num_batches_tracked", "fc.weight", "fc.bias"]:
        assert key in keys
    assert create_model("resnext50_32x4d").state_dict()["layer1.0.conv2.weight"].shape == (128, 4, 3, 3)
    assert create_model("wide_resnet50_2").state_dict()["layer1.0.conv2.weight"].shape == (128, 128, 3, 3)
    assert create_model("resnet18").state_dict()["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)


def test_timm_resnet_d_layout():
    assert _keys("resnet50d", "conv1.") == ["conv1.0.weight", *[f"conv1.1.{s}" for s in
        ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")], "conv1.3.weight",
        *[f"conv1.4.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")],
        "conv1.6.weight"]
    state = create_model("resnet50d").state_dict()
    # avg-pool downsample: pool at index 0 (no params), conv at 1, bn at 2
    assert state["layer2.0.downsample.1.weight"].shape == (512, 256, 1, 1)
    assert "layer2.0.downsample.2.running_mean" in state and "layer2.0.downsample.0.weight" not in state


def test_timm_se_and_res2net_and_resnest_layout():
    se = create_model("seresnet50").state_dict()
    assert se["layer1.0.se.fc1.weight"].shape == (16, 256, 1, 1)
    assert se["layer4.0.se.fc2.bias"].shape == (2048,)
    r2 = create_model("res2net50_26w_4s").state_dict()
    assert r2["layer1.0.convs.2.weight"].shape == (26, 26, 3, 3)
    assert r2["layer1.0.bns.0.running_var"].shape == (26,)
    assert "layer1.0.convs.3.weight" not in r2
    rs = create_model("resnest50d").state_dict()
    assert rs["layer1.0.conv2.conv.weight"].shape == (128, 32, 3, 3)  # radix 2, groups 2
    assert rs["layer1.0.conv2.fc1.weight"].shape == (32, 64, 1, 1)
    assert rs["layer1.0.conv2.bn1.weight"].shape == (32,)
    assert rs["layer1.0.conv2.fc2.weight"].shape == (128, 32, 1, 1)


def test_ibn_net_layout():
    state = create_model("resnet50_ibn_a").state_dict()
    assert state["layer1.0.bn1.IN.weight"].shape == (32,)
    assert state["layer1.0.bn1.BN.running_mean"].shape == (32,)
    assert "layer3.5.bn1.IN.bias" in state
    assert "layer4.0.bn1.IN.weight" not in state and "layer4.0.bn1.running_mean" in state


def test_backbone_forms():
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = create_model("resnet50", num_classes=0)(x)
        maps = create_model("resnet50", features_only=True)(x)
        reid = create_model("resnet50", features_only=True, last_stride=1)(x)
    assert pooled.shape == (2, 2048)
    assert [tuple(m.shape) for m in maps] == [(2, 256, 16, 16), (2, 512, 8, 8), (2, 1024, 4, 4), (2, 2048, 2, 2)]
    assert tuple(reid[-1].shape) == (2, 2048, 4, 4)
    assert "fc.weight" not in create_model("resnet18", num_classes=0).state_dict()
    assert "fc.weight" not in create_model("resnet18", features_only=True).state_dict()


def test_cifar_stem_keeps_resolution():
    model = create_model("resnet18_cifar")
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    with torch.no_grad():
        maps = create_model("resnet18_cifar", features_only=True)(torch.randn(1, 3, 32, 32))
    assert maps[0].shape[-1] == 32 and maps[-1].shape[-1] == 4


def test_num_classes_override():
    assert create_model("resnet18", num_classes=7).fc.out_features == 7
    with pytest.raises(DeployError, match="--num-classes -1 is out of range"):
        create_model("resnet18", num_classes=-1)
    with pytest.raises(DeployError, match="--last-stride 3"):
        create_model("resnet18", last_stride=3)


def test_unknown_arch_names_closest_matches():
    with pytest.raises(UnknownArchError) as info:
        create_model("resnet05")
    assert "resnet50" in str(info.value)


def test_unknown_override_is_rejected():
    with pytest.raises(DeployError, match="stem"):
        create_model("resnet18", stem="deep")


def test_count_macs_leaves_model_usable_on_meta_only_copy():
    with torch.device("meta"):
        model = create_model("resnet18")
    assert count_macs(model, 224) == pytest.approx(1.814e9, rel=1e-3)
    assert count_macs(model, (112, 112)) < count_macs(model, 224)


def test_published_weights_table_is_consistent():
    from resnet_deploy.models import pretrained

    assert len(pretrained.PUBLISHED) == 23  # torchvision 17, timm 5, IBN-Net 1
    assert all(key == (w.arch, w.tag) for key, w in pretrained.PUBLISHED.items())
    for weights in pretrained.PUBLISHED.values():
        assert weights.arch in list_models() and weights.source in pretrained.BASE_URLS
        assert {"mean", "std", "interpolation", "resize"} <= set(weights.preprocess)
        if weights.source == "timm":  # the hub sends the sha256 instead
            assert weights.sha256_prefix is None and weights.path.endswith("/resolve/main/model.safetensors")
        else:  # torchvision and IBN-Net name files after their sha256
            assert weights.sha256_prefix is not None and len(weights.sha256_prefix) == 8
    assert pretrained.resolve("resnet50", "torchvision").tag == "torchvision:IMAGENET1K_V2"  # the newest
    assert pretrained.resolve("resnet50", "torchvision:IMAGENET1K_V1").top1 == 76.130
    assert not pretrained.is_tag("weights.pth") and pretrained.is_tag("timm:resnet50d.ra2_in1k")


@pytest.mark.parametrize("name, last_stride", [("resnet18", 2), ("resnet50d", 1), ("resnet18_cifar", 2)])
def test_feature_points_describe_the_maps_the_model_makes(name, last_stride):
    """feature_info is what generic code (parity, mixed precision, features_only export) asks instead of
    knowing stage names: its channels and reductions are those of the maps the model really computes."""
    model = create_model(name, last_stride=last_stride)
    side = 64
    x = torch.zeros(1, 3, side, side)
    with torch.no_grad():
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        maps = [stem, *model.forward_stages(x)]
    assert [p.module for p in model.feature_info] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    for point, feature in zip(model.feature_info, maps):
        assert feature.shape[1] == point.channels and side // feature.shape[2] == point.reduction, point
    names = [name for name, _ in model.block_points()]
    assert names[0] == "stem" and len(names) == 1 + sum(len(getattr(model, p.module)) for p in model.feature_info[1:])
