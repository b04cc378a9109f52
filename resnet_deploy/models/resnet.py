"""The one ResNet class: a stem, four stages of residual blocks, a head.

Every member of the family is this class with other options; the options that
change state_dict keys (stem, downsample form) follow torchvision for the plain
variants and timm for the deep-stem ("D") ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .blocks import BLOCK_TYPES

STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class FeaturePoint:
    """Where a model's features can be taken (timm's ``feature_info``): a module path, its output
    channels, and its stride from the input (the reduction)."""

    module: str  # "stem" (the maxpool, or the CIFAR stem's last op), "layer1" ... "layer4"
    channels: int
    reduction: int


def _make_stem(kind: str, in_chans: int, width: int) -> nn.Module:
    if kind == "plain":  # torchvision: one 7x7 stride-2 conv
        return nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
    if kind == "deep":  # timm "d"/"e": three 3x3 convs, the first strided
        return nn.Sequential(
            nn.Conv2d(in_chans, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 64, 3, padding=1, bias=False),
        )
    if kind == "cifar":  # small inputs: one 3x3 stride-1 conv, no max-pool
        return nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
    raise ValueError(f"unknown stem {kind!r}")


def _make_downsample(inplanes: int, outplanes: int, stride: int, avg_down: bool) -> nn.Sequential:
    if not avg_down:  # torchvision: strided 1x1 conv
        return nn.Sequential(
            nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False), nn.BatchNorm2d(outplanes)
        )
    # ResNet-D: average-pool, then an unstrided 1x1 conv (keeps all activations)
    pool: nn.Module = (
        nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False) if stride != 1 else nn.Identity()
    )
    return nn.Sequential(pool, nn.Conv2d(inplanes, outplanes, 1, bias=False), nn.BatchNorm2d(outplanes))


class ResNet(nn.Module):
    """ResNet family network.

    Args:
        block: block type name from :data:`BLOCK_TYPES` ("basic", "bottleneck", ...).
        layers: blocks per stage.
        num_classes: classifier size; 0 drops the classifier and returns pooled features.
        stem: "plain" (7x7), "deep" (3x 3x3, ResNet-C/D) or "cifar" (3x3 stride 1, no max-pool).
        stem_width: width of the deep stem's first two convs.
        avg_down: ResNet-D downsample (avg-pool then 1x1 conv) instead of a strided 1x1 conv.
        cardinality, base_width: ResNeXt groups and width per group (64 = plain ResNet).
        last_stride: stride of layer4; 1 keeps a 1/16 map (re-identification backbones).
        ibn_stages: stages (1-based) whose bottlenecks use IBN-a normalisation.
        features_only: return the four stage maps instead of logits.
        block_args: extra keyword arguments for every block (attention, radix, scale, ...).
    """

    def __init__(
        self,
        block: str,
        layers: tuple[int, int, int, int],
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: str = "plain",
        stem_width: int = 64,
        avg_down: bool = False,
        cardinality: int = 1,
        base_width: int = 64,
        last_stride: int = 2,
        ibn_stages: tuple[int, ...] = (),
        features_only: bool = False,
        block_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if last_stride not in (1, 2):
            raise ValueError("last_stride must be 1 or 2")
        block_cls = BLOCK_TYPES[block]
        self.num_classes = num_classes
        self.features_only = features_only
        self.conv1 = _make_stem(stem, in_chans, stem_width)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.Identity() if stem == "cifar" else nn.MaxPool2d(3, stride=2, padding=1)

        inplanes = 64
        strides = (1, 2, 2, last_stride)
        for index, (name, planes, depth, stride) in enumerate(zip(STAGE_NAMES, (64, 128, 256, 512), layers, strides)):
            outplanes = planes * block_cls.expansion
            kwargs = dict(block_args or {}, cardinality=cardinality, base_width=base_width)
            if index + 1 in ibn_stages:
                kwargs["ibn"] = True
            blocks = []
            for position in range(depth):
                downsample = None
                if position == 0 and (stride != 1 or inplanes != outplanes):
                    downsample = _make_downsample(inplanes, outplanes, stride, avg_down)
                blocks.append(block_cls(inplanes, planes, stride if position == 0 else 1, downsample, **kwargs))
                inplanes = outplanes
            self.add_module(name, nn.Sequential(*blocks))

        self.num_features = inplanes
        self.feature_channels = tuple(p * block_cls.expansion for p in (64, 128, 256, 512))
        stem_reduction = 1 if stem == "cifar" else 4
        reductions = [stem_reduction * r for r in (1, 2, 4, 4 * last_stride)]
        self.feature_info = [FeaturePoint("stem", 64, stem_reduction)] + [
            FeaturePoint(name, channels, reduction)
            for name, channels, reduction in zip(STAGE_NAMES, self.feature_channels, reductions)]
        if not features_only:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc: nn.Module = nn.Linear(inplanes, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d)) and module.affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def block_points(self) -> list[tuple[str, nn.Module]]:
        """(name, module) of the stem and of every residual block, in order: where parity localises a
        divergence (``stem``, ``layer2.1``) and what mixed precision keeps in float."""
        points: list[tuple[str, nn.Module]] = [("stem", self.maxpool)]
        for stage in (p.module for p in self.feature_info[1:]):
            points += [(f"{stage}.{index}", block) for index, block in enumerate(getattr(self, stage))]
        return points

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage outputs (strides 4, 8, 16, 32; 16 for layer4 with last_stride=1)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        maps = []
        for name in STAGE_NAMES:
            x = getattr(self, name)(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        maps = self.forward_stages(x)
        if self.features_only:
            return maps
        return self.fc(torch.flatten(self.avgpool(maps[-1]), 1))


class EmbeddedPreprocess(nn.Module):
    """``model`` behind its own input normalisation (`export --embed-preprocess`): uint8 NHWC pixels in,
    as decoders give them (resized and cropped); scaled to [0, 1], normalised with ``mean``/``std`` and
    transposed to NCHW inside the graph, so a client sends a quarter of the bytes and cannot get the
    normalisation wrong."""

    def __init__(self, model: ResNet, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        mean_t = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.register_buffer("mean", mean_t * 255.0)  # (x / 255 - mean) / std = (x - 255 mean) / (255 std)
        self.register_buffer("std", std_t * 255.0)

    def block_points(self) -> list[tuple[str, nn.Module]]:
        return self.model.block_points()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.model((x.permute(0, 3, 1, 2).float() - self.mean) / self.std)
