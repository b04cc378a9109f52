"""Residual blocks of the ResNet family.

Attribute names are part of the contract: they make the state_dict keys that
torchvision, timm and IBN-Net checkpoints use, so a module renamed here breaks
users' weights. Activations carry no parameters and are named freely.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round a channel count to a multiple of ``divisor`` the way timm does."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


def group_width(planes: int, base_width: int, cardinality: int) -> int:
    """Channels of a bottleneck's grouped 3x3 conv: ``planes`` scaled by ``base_width / 64`` per
    group, times the groups (torchvision's and timm's formula: ResNeXt, Wide ResNet, Res2Net, ResNeSt)."""
    return int(math.floor(planes * (base_width / 64.0))) * cardinality


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation gate (timm's ``SEModule``: 1x1 convs with bias, 1/16 reduction)."""

    def __init__(self, channels: int, rd_ratio: float = 1.0 / 16) -> None:
        super().__init__()
        reduced = make_divisible(channels * rd_ratio, 8, round_limit=0.0)
        self.fc1 = nn.Conv2d(channels, reduced, kernel_size=1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(scale)


class IBN(nn.Module):
    """Instance-batch normalisation of IBN-Net-a: the first half of the channels
    goes through InstanceNorm (style invariance), the rest through BatchNorm."""

    def __init__(self, channels: int, ratio: float = 0.5) -> None:
        super().__init__()
        self.half = int(channels * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(channels - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat((self.IN(first.contiguous()), self.BN(second.contiguous())), dim=1)


class ResidualBlock(nn.Module):
    """out = relu(residual(x) + shortcut(x)); subclasses define :meth:`residual`.

    Constructors share torchvision's protocol: ``(inplanes, planes, stride,
    downsample, *, cardinality, base_width, ...)`` with ``expansion`` the ratio
    of output channels to ``planes``; they set ``self.relu`` and ``self.downsample``.
    """

    expansion = 1
    relu: nn.Module
    downsample: nn.Module | None

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.residual(x) + shortcut)


class BasicBlock(ResidualBlock):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        cardinality: int = 1,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        if cardinality != 1 or base_width != 64:
            raise ValueError("BasicBlock supports only cardinality=1 and base_width=64")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(ResidualBlock):
    """1x1 - 3x3 (strided, grouped) - 1x1 bottleneck, torchvision's "v1.5".

    Covers ResNet, ResNeXt (``cardinality``), Wide ResNet (``base_width``),
    SE-ResNe(X)t (``attention="se"``, gate after bn3 as in timm) and IBN-Net-a
    (``ibn=True``: bn1 is an :class:`IBN`).
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        cardinality: int = 1,
        base_width: int = 64,
        attention: str | None = None,
        ibn: bool = False,
    ) -> None:
        super().__init__()
        width = group_width(planes, base_width, cardinality)
        outplanes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = IBN(width) if ibn else nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, outplanes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes)
        if attention not in (None, "se"):
            raise ValueError(f"unknown block attention {attention!r}")
        self.se = SqueezeExcite(outplanes) if attention == "se" else None
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out if self.se is None else self.se(out)


class Bottle2neck(ResidualBlock):
    """Res2Net block: the 3x3 stage is split into ``scale`` groups of ``width``
    channels, each group's conv seeing the previous group's output
    (hierarchical residual connections); layout of timm's ``Bottle2neck``."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        cardinality: int = 1,
        base_width: int = 26,
        scale: int = 4,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.is_first = stride > 1 or downsample is not None
        self.width = group_width(planes, base_width, cardinality)
        num_convs = max(1, scale - 1)
        outplanes = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, self.width * scale, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.width * scale)
        self.convs = nn.ModuleList(
            nn.Conv2d(self.width, self.width, 3, stride=stride, padding=1, groups=cardinality, bias=False)
            for _ in range(num_convs)
        )
        self.bns = nn.ModuleList(nn.BatchNorm2d(self.width) for _ in range(num_convs))
        # The last group bypasses the convs; in a first block it must still be
        # brought to the new resolution. timm keeps count_include_pad=True for
        # weight compatibility, so do we.
        self.pool = nn.AvgPool2d(3, stride=stride, padding=1) if self.is_first else None
        self.conv3 = nn.Conv2d(self.width * scale, outplanes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(outplanes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        groups = torch.split(out, self.width, dim=1)
        outs = []
        carried = groups[0]
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            carried = groups[i] if i == 0 or self.is_first else carried + groups[i]
            carried = self.relu(bn(conv(carried)))
            outs.append(carried)
        if self.scale > 1:
            outs.append(self.pool(groups[-1]) if self.pool is not None else groups[-1])
        return self.bn3(self.conv3(torch.cat(outs, dim=1)))


class SplitAttention(nn.Module):
    """ResNeSt split-attention convolution (timm's ``SplitAttn``): ``radix``
    parallel grouped 3x3 convs, combined by a softmax over the radix axis of a
    pooled, squeezed descriptor."""

    def __init__(
        self,
        channels: int,
        *,
        stride: int = 1,
        groups: int = 1,
        radix: int = 2,
        rd_ratio: float = 0.25,
    ) -> None:
        super().__init__()
        self.radix = radix
        mid = channels * radix
        attn = make_divisible(channels * radix * rd_ratio, min_value=32, divisor=8)
        self.conv = nn.Conv2d(channels, mid, 3, stride=stride, padding=1, groups=groups * radix, bias=False)
        self.bn0 = nn.BatchNorm2d(mid)
        self.act0 = nn.ReLU(inplace=True)
        self.fc1 = nn.Conv2d(channels, attn, 1, groups=groups)
        self.bn1 = nn.BatchNorm2d(attn)
        self.act1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(attn, mid, 1, groups=groups)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act0(self.bn0(self.conv(x)))
        batch, channels_radix, height, width = x.shape
        channels = channels_radix // self.radix
        if self.radix > 1:
            x = x.reshape(batch, self.radix, channels, height, width)
            gap = x.sum(dim=1)
        else:
            gap = x
        gap = self.act1(self.bn1(self.fc1(gap.mean((2, 3), keepdim=True))))
        attn = self.fc2(gap)
        if self.radix > 1:
            # softmax over the radix axis, separately for each cardinal group
            attn = attn.reshape(batch, self.groups, self.radix, channels // self.groups).transpose(1, 2)
            attn = torch.softmax(attn, dim=1).reshape(batch, self.radix, channels, 1, 1)
            return (x * attn).sum(dim=1)
        return x * torch.sigmoid(attn)


class ResNestBottleneck(ResidualBlock):
    """ResNeSt block: a bottleneck whose 3x3 conv is a :class:`SplitAttention`;
    with ``avd`` the stride moves to a 3x3 average pool after it."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        cardinality: int = 1,
        base_width: int = 64,
        radix: int = 2,
        avd: bool = True,
    ) -> None:
        super().__init__()
        width = group_width(planes, base_width, cardinality)
        pool_stride = stride if avd and stride > 1 else 0
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = SplitAttention(
            width, stride=1 if pool_stride else stride, groups=cardinality, radix=radix
        )
        self.avd_last = nn.AvgPool2d(3, pool_stride, padding=1) if pool_stride else None
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.relu(self.bn1(self.conv1(x))))
        if self.avd_last is not None:
            out = self.avd_last(out)
        return self.bn3(self.conv3(out))


BLOCK_TYPES: dict[str, type[ResidualBlock]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "bottle2neck": Bottle2neck,
    "resnest": ResNestBottleneck,
}
