"""The arch table: one row per registered architecture, and the API over it.

Each row says how to build the network and how its inputs are prepared
(timm's per-model ``pretrained_cfg``). Parameter and MAC counts are measured
from the built network, never typed in, so the table cannot drift from the code.
"""

from __future__ import annotations

import difflib
import functools
import os
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..data import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, PREPROCESS_PRESETS
from ..errors import ArgumentError, ExportError, UnknownArchError, within
from ..render import table
from .checkpoints import fit_state_dict, read_state_dict
from .resnet import ResNet


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input: resize the shorter side to
    ``input_size / crop_pct``, centre-crop ``input_size``, scale to [0, 1],
    normalise with ``mean``/``std``, NCHW float32."""

    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def resize(self) -> int:
        return int(round(self.input_size / self.crop_pct))

    def record(self, height: int, width: int) -> dict[str, Any]:
        """The manifest's ``preprocess`` entry for an input of ``height`` x ``width``."""
        return {
            "resize": int(round(min(height, width) / self.crop_pct)),
            "crop": [height, width],
            "interpolation": self.interpolation,
            "scale": 1 / 255,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "layout": "NCHW",
            "color": "RGB",
        }


def declare_preprocess(base: Preprocess, height: int, width: int, *, preset: str | None = None,
                       mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                       resize: int | None = None, interpolation: str | None = None) -> dict[str, Any]:
    """The manifest's ``preprocess`` entry: the arch's defaults, then a preset, then explicit values.

    It is what calibration, the export gate, verify, predict and serve use, so
    a model trained with its own normalisation is checked on inputs it knows.
    """
    if preset is not None and preset not in PREPROCESS_PRESETS:
        raise ExportError(f"unknown --preprocess {preset!r}; choose one of {', '.join(PREPROCESS_PRESETS)}")
    chosen = {**(PREPROCESS_PRESETS[preset] if preset else {}),
              **{k: v for k, v in (("mean", mean), ("std", std)) if v is not None}}
    for key in ("mean", "std"):
        values = chosen.get(key)
        if values is not None and (len(values) != 3 or not all(math.isfinite(v) for v in values)):
            raise ExportError(f"--{key} takes three numbers (R,G,B), got {list(values)}")
    if any(v <= 0 for v in chosen.get("std", (1,))):
        raise ExportError(f"--std must be positive, got {list(chosen['std'])}")
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise ExportError(f"unknown --interpolation {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
    if resize is not None and resize < min(height, width):
        raise ExportError(f"--resize {resize} is smaller than the crop {height}x{width}: the shorter side is resized "
                          "to it before the centre crop")
    record = replace(base, **chosen, **({"interpolation": interpolation} if interpolation else {})).record(height, width)
    if resize is not None:
        record["resize"] = resize
    return record


@dataclass(frozen=True)
class ArchSpec:
    name: str
    family: str
    compat: str  # whose checkpoints load: torchvision, timm, ibn-net, native
    block: str
    layers: tuple[int, int, int, int]
    model_args: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 1000
    preprocess: Preprocess = Preprocess()


_IMAGENET_BICUBIC = Preprocess(interpolation="bicubic")
_CIFAR = Preprocess(input_size=32, crop_pct=1.0, mean=CIFAR_MEAN, std=CIFAR_STD)
_DEEP_D = {"stem": "deep", "stem_width": 32, "avg_down": True}

_ARCHS: tuple[ArchSpec, ...] = (
    ArchSpec("resnet18", "resnet", "torchvision", "basic", (2, 2, 2, 2)),
    ArchSpec("resnet34", "resnet", "torchvision", "basic", (3, 4, 6, 3)),
    ArchSpec("resnet50", "resnet", "torchvision", "bottleneck", (3, 4, 6, 3)),
    ArchSpec("resnet101", "resnet", "torchvision", "bottleneck", (3, 4, 23, 3)),
    ArchSpec("resnet152", "resnet", "torchvision", "bottleneck", (3, 8, 36, 3)),
    ArchSpec("resnext50_32x4d", "resnext", "torchvision", "bottleneck", (3, 4, 6, 3),
             {"cardinality": 32, "base_width": 4}),
    ArchSpec("resnext101_32x8d", "resnext", "torchvision", "bottleneck", (3, 4, 23, 3),
             {"cardinality": 32, "base_width": 8}),
    ArchSpec("resnext101_64x4d", "resnext", "torchvision", "bottleneck", (3, 4, 23, 3),
             {"cardinality": 64, "base_width": 4}),
    ArchSpec("wide_resnet50_2", "wide_resnet", "torchvision", "bottleneck", (3, 4, 6, 3), {"base_width": 128}),
    ArchSpec("wide_resnet101_2", "wide_resnet", "torchvision", "bottleneck", (3, 4, 23, 3), {"base_width": 128}),
    ArchSpec("resnet50d", "resnet_d", "timm", "bottleneck", (3, 4, 6, 3), _DEEP_D, preprocess=_IMAGENET_BICUBIC),
    ArchSpec("seresnet50", "seresnet", "timm", "bottleneck", (3, 4, 6, 3),
             {"block_args": {"attention": "se"}}, preprocess=_IMAGENET_BICUBIC),
    ArchSpec("seresnext50_32x4d", "seresnext", "timm", "bottleneck", (3, 4, 6, 3),
             {"cardinality": 32, "base_width": 4, "block_args": {"attention": "se"}},
             preprocess=_IMAGENET_BICUBIC),
    ArchSpec("res2net50_26w_4s", "res2net", "timm", "bottle2neck", (3, 4, 6, 3),
             {"base_width": 26, "block_args": {"scale": 4}}),
    ArchSpec("resnest50d", "resnest", "timm", "resnest", (3, 4, 6, 3),
             {**_DEEP_D, "block_args": {"radix": 2, "avd": True}}),
    ArchSpec("resnet50_ibn_a", "ibn", "ibn-net", "bottleneck", (3, 4, 6, 3), {"ibn_stages": (1, 2, 3)}),
    ArchSpec("resnet18_cifar", "resnet_cifar", "native", "basic", (2, 2, 2, 2), {"stem": "cifar"},
             num_classes=10, preprocess=_CIFAR),
    ArchSpec("resnet34_cifar", "resnet_cifar", "native", "basic", (3, 4, 6, 3), {"stem": "cifar"},
             num_classes=10, preprocess=_CIFAR),
    ArchSpec("resnet50_cifar", "resnet_cifar", "native", "bottleneck", (3, 4, 6, 3), {"stem": "cifar"},
             num_classes=10, preprocess=_CIFAR),
)
_REGISTRY: dict[str, ArchSpec] = {spec.name: spec for spec in _ARCHS}

# Options a caller may change at build time; everything else is fixed by the arch.
MODEL_OVERRIDES = ("in_chans", "last_stride", "features_only")
MAX_CLASSES = 1_000_000


def list_models() -> list[str]:
    """Names of every registered architecture, in table order.

    Returns:
        The names :func:`create_model`, :func:`get_model_info` and ``export`` take.
    """
    return list(_REGISTRY)


def get_spec(name: str) -> ArchSpec:
    """The table row for ``name``; an unknown name is an error naming the closest matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `resnet-deploy list` shows them all"
        raise UnknownArchError(f"unknown arch {name!r}{hint}") from None


def build_model(name: str, *, num_classes: int | None = None, **overrides: Any) -> ResNet:
    """An untrained network of arch ``name`` in eval mode (no weights loaded)."""
    spec = get_spec(name)
    unknown = sorted(set(overrides) - set(MODEL_OVERRIDES))
    if unknown:
        raise ArgumentError(f"unexpected model option(s) {unknown}; allowed: {list(MODEL_OVERRIDES)}")
    classes = within("--num-classes", spec.num_classes if num_classes is None else num_classes, 0, MAX_CLASSES,
                     "0: the pooled-feature backbone")
    if overrides.get("last_stride", 2) not in (1, 2):
        raise ArgumentError(f"--last-stride {overrides['last_stride']} is not 1 or 2")
    model = ResNet(spec.block, spec.layers, num_classes=classes, **spec.model_args, **overrides)
    return model.eval()


def count_macs(model: nn.Module, input_size: int | tuple[int, int], in_chans: int = 3) -> int:
    """Multiply-accumulates of one image through every Conv2d and Linear, the
    way torchvision's model metadata counts them (resnet50 at 224: 4.09 G).

    Runs on the meta device: shapes only, no arithmetic, no memory.
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output[0].numel() * (module.in_channels // module.groups) * kh * kw

    def linear_hook(module: nn.Linear, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        total += module.in_features * module.out_features

    handles = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        meta_model = model.to("meta") if next(model.parameters()).device.type != "meta" else model
        with torch.no_grad():
            meta_model(torch.empty(1, in_chans, height, width, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return total


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    compat: str
    block: str
    layers: tuple[int, int, int, int]
    num_classes: int
    params: int
    gmacs: float
    input_size: tuple[int, int, int]
    preprocess: Preprocess

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=None)
def get_model_info(name: str) -> ModelInfo:
    """Params, GMACs at the default input size, default input, block type, family (built on the meta device:
    no weights are allocated).

    Args:
        name: a name from :func:`list_models`.

    Returns:
        The :class:`ModelInfo`.

    Raises:
        UnknownArchError: an unknown name (the closest matches named).
    """
    spec = get_spec(name)
    with torch.device("meta"):
        model = build_model(name)
    params = sum(p.numel() for p in model.parameters())
    size = spec.preprocess.input_size
    return ModelInfo(
        name=name,
        family=spec.family,
        compat=spec.compat,
        block=spec.block,
        layers=spec.layers,
        num_classes=spec.num_classes,
        params=params,
        gmacs=round(count_macs(model, size) / 1e9, 3),
        input_size=(3, size, size),
        preprocess=spec.preprocess,
    )


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    weights: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> ResNet:
    """Build arch ``name`` in eval mode, with weights from a checkpoint file if given.

    Args:
        name: a name from :func:`list_models`.
        num_classes: classifier size (default: the arch's, 1000 or 10 for CIFAR);
            0 returns pooled features.
        weights: a ``.pt``/``.pth`` (loaded with ``weights_only=True``) or
            ``.safetensors`` file from torchvision, timm, IBN-Net or this toolkit.
        overrides: ``in_chans``, ``last_stride``, ``features_only``.

    Returns:
        The :class:`~resnet_deploy.models.resnet.ResNet`, in eval mode.

    Raises:
        UnknownArchError: ``name`` is not registered; CheckpointError: the weights do not load into it.
    """
    model = build_model(name, num_classes=num_classes, **overrides)
    if weights is not None:
        state = read_state_dict(weights)
        fit_state_dict(model, state, arch=name, source=str(weights))
    return model


@dataclass
class ModelTable:
    """The architecture table `resnet-deploy list` shows: one :class:`ModelInfo` per registered arch."""

    infos: list[ModelInfo]

    def to_dict(self) -> list[dict[str, Any]]:
        return [info.to_dict() for info in self.infos]

    def to_text(self) -> str:
        rows = [[i.name, f"{i.params:,}", f"{i.gmacs:.2f}", f"{i.input_size[1]}x{i.input_size[2]}", i.num_classes,
                 i.family, i.compat] for i in self.infos]
        return table(rows, ["arch", "params", "GMACs", "input", "classes", "family", "weights from"], right={1, 2, 4})


def model_table() -> ModelTable:
    """Every registered arch's :class:`ModelInfo`, in registration order."""
    return ModelTable([get_model_info(name) for name in list_models()])
