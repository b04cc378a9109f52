"""Published checkpoints by tag: ``torchvision:IMAGENET1K_V2``, ``timm:resnet50d.ra2_in1k``, ``ibn:resnet50_ibn_a``.

A tag names a file the source publishes. It is downloaded from the source's own
URL into the torch hub cache (``$TORCH_HOME/hub/checkpoints``, so files that
torchvision or timm already fetched are reused), checked against the hash the
source publishes (torchvision and IBN-Net put a sha256 prefix in the file name;
the Hugging Face hub, timm's home, sends the file's sha256 as ``X-Linked-Etag``),
and then read like any other checkpoint. Each entry also carries the
preprocessing the weights were trained for, which the export records.

Only figures copied from the sources are listed (``top1``: ImageNet-1k top-1 as
published); where none was checked here it is None.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import IMAGENET_MEAN, IMAGENET_STD
from ..errors import CheckpointError
from ..fileio import Staging, sha256_file
from ..render import table

BASE_URLS = {
    "torchvision": "https://download.pytorch.org/models/",
    "timm": "https://huggingface.co/",
    "ibn": "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/",
}
# Tests serve generated checkpoints from a loopback server at the same paths (never set it otherwise).
TEST_BASE_URL_ENV = "RESNET_DEPLOY_TEST_WEIGHTS_URL"
CHUNK = 1 << 20


@dataclass(frozen=True)
class PublishedWeights:
    tag: str  # "SOURCE:NAME"
    arch: str
    path: str  # under the source's base URL
    top1: float | None  # ImageNet-1k top-1 as the source publishes it; None where not checked here
    # how the weights want their images at a 224 crop: resize (shorter side), interpolation, mean, std
    preprocess: dict[str, Any]

    @property
    def source(self) -> str:
        return self.tag.split(":", 1)[0]

    @property
    def url(self) -> str:
        base = os.environ.get(TEST_BASE_URL_ENV, "").rstrip("/")
        return (f"{base}/{self.source}/" if base else BASE_URLS[self.source]) + self.path

    @property
    def filename(self) -> str:
        """The cache file name: the URL's own (timm's hub files are all model.safetensors: prefixed by repo)."""
        if self.source == "timm":
            return self.path.split("/")[1] + ".safetensors"  # timm/resnet50d.ra2_in1k/resolve/main/model...
        return self.path.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str | None:
        match = re.search(r"-([0-9a-f]{8,})\.[a-z]+$", self.filename)
        return match.group(1) if match else None


_TV = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear"}
_TV_V1 = {**_TV, "resize": 256}
_TV_V2 = {**_TV, "resize": 232}  # torchvision's V2 recipes evaluate at resize 232, crop 224


def _torchvision(arch: str, tag: str, file: str, top1: float, preprocess: dict[str, Any]) -> PublishedWeights:
    return PublishedWeights(f"torchvision:{tag}", arch, file, top1, preprocess)


def _timm(arch: str, name: str, interpolation: str) -> PublishedWeights:
    """A timm model on the Hugging Face hub: timm/NAME, file model.safetensors."""
    return PublishedWeights(f"timm:{name}", arch, f"timm/{name}/resolve/main/model.safetensors", None,
                            {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": interpolation, "resize": 256})


PUBLISHED: dict[tuple[str, str], PublishedWeights] = {}
for _w in (
    _torchvision("resnet18", "IMAGENET1K_V1", "resnet18-f37072fd.pth", 69.758, _TV_V1),
    _torchvision("resnet34", "IMAGENET1K_V1", "resnet34-b627a593.pth", 73.314, _TV_V1),
    _torchvision("resnet50", "IMAGENET1K_V1", "resnet50-0676ba61.pth", 76.130, _TV_V1),
    _torchvision("resnet50", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth", 80.858, _TV_V2),
    _torchvision("resnet101", "IMAGENET1K_V1", "resnet101-63fe2227.pth", 77.374, _TV_V1),
    _torchvision("resnet101", "IMAGENET1K_V2", "resnet101-cd907fc2.pth", 81.886, _TV_V2),
    _torchvision("resnet152", "IMAGENET1K_V1", "resnet152-394f9c45.pth", 78.312, _TV_V1),
    _torchvision("resnet152", "IMAGENET1K_V2", "resnet152-f82ba261.pth", 82.284, _TV_V2),
    _torchvision("resnext50_32x4d", "IMAGENET1K_V1", "resnext50_32x4d-7cdf4587.pth", 77.618, _TV_V1),
    _torchvision("resnext50_32x4d", "IMAGENET1K_V2", "resnext50_32x4d-1a0047aa.pth", 81.198, _TV_V2),
    _torchvision("resnext101_32x8d", "IMAGENET1K_V1", "resnext101_32x8d-8ba56ff5.pth", 79.312, _TV_V1),
    _torchvision("resnext101_32x8d", "IMAGENET1K_V2", "resnext101_32x8d-110c445d.pth", 82.834, _TV_V2),
    _torchvision("resnext101_64x4d", "IMAGENET1K_V1", "resnext101_64x4d-173b62eb.pth", 83.246, _TV_V2),
    _torchvision("wide_resnet50_2", "IMAGENET1K_V1", "wide_resnet50_2-95faca4d.pth", 78.468, _TV_V1),
    _torchvision("wide_resnet50_2", "IMAGENET1K_V2", "wide_resnet50_2-9ba9bcbe.pth", 81.602, _TV_V2),
    _torchvision("wide_resnet101_2", "IMAGENET1K_V1", "wide_resnet101_2-32ee1156.pth", 78.848, _TV_V1),
    _torchvision("wide_resnet101_2", "IMAGENET1K_V2", "wide_resnet101_2-d733dc28.pth", 82.510, _TV_V2),
    # timm's pretrained_cfg for each: 224 px at crop_pct 0.875 (resize 256), interpolation as listed
    _timm("resnet50d", "resnet50d.ra2_in1k", "bicubic"),
    _timm("seresnet50", "seresnet50.ra2_in1k", "bicubic"),
    _timm("seresnext50_32x4d", "seresnext50_32x4d.racm_in1k", "bicubic"),
    _timm("res2net50_26w_4s", "res2net50_26w_4s.in1k", "bilinear"),
    _timm("resnest50d", "resnest50d.in1k", "bilinear"),
    PublishedWeights("ibn:resnet50_ibn_a", "resnet50_ibn_a", "resnet50_ibn_a-d9d0bb7b.pth", None, _TV_V1),
):
    PUBLISHED[(_w.arch, _w.tag)] = _w


def is_tag(weights: str | os.PathLike[str]) -> bool:
    """``torchvision:...``, ``timm:...`` or ``ibn:...`` (a bare source means its default), not a file path."""
    text = str(weights)
    return text.split(":", 1)[0] in BASE_URLS and not Path(text).exists()


def published_for(arch: str) -> list[PublishedWeights]:
    return [w for (a, _), w in PUBLISHED.items() if a == arch]


def resolve(arch: str, tag: str) -> PublishedWeights:
    """The entry for ``tag`` on ``arch``; a bare source (``torchvision``) means its newest weights for the arch."""
    entries = published_for(arch)
    chosen = [w for w in entries if w.tag == tag or (":" not in tag and w.source == tag)]
    if not chosen:
        known = ", ".join(w.tag for w in entries) or "none"
        raise CheckpointError(f"no published weights {tag!r} for {arch}; known for it: {known} "
                              "(`resnet-deploy list --weights`)")
    return chosen[-1]


def cache_dir() -> Path:
    """torch.hub's checkpoint folder: $TORCH_HOME/hub/checkpoints (default ~/.cache/torch)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch")
    return Path(home) / "hub" / "checkpoints"


def stderr_progress(done: int, total: int | None) -> None:
    shown = f"{done / 1e6:.1f}/{total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
    print(f"\r  downloading {shown}", end="" if total is None or done < total else "\n", file=sys.stderr, flush=True)


def fetch(weights: PublishedWeights, *, progress: Callable[[int, int | None], None] | None = stderr_progress,
          timeout: float = 30.0) -> tuple[Path, str]:
    """The cached file of ``weights`` (downloaded first where missing) and its sha256.

    A file whose hash does not match what the source publishes is refused and
    never reaches the cache; no network is a one-line error naming the URL and
    the path to put the file at by hand.
    """
    folder = cache_dir()
    target = folder / weights.filename
    prefix = weights.sha256_prefix
    if target.is_file():
        digest = sha256_file(target)
        if prefix is None or digest.startswith(prefix):
            return target, digest
        raise CheckpointError(f"{target} is in the cache but its sha256 ({digest[:12]}) does not match the "
                              f"published {prefix}: delete it to download it again")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        response = urllib.request.urlopen(weights.url, timeout=timeout)  # noqa: S310 (the sources' https URLs)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CheckpointError(f"cannot download {weights.url} ({reason}); without network, put the file at "
                              f"{target}") from None
    published = (response.headers.get("X-Linked-Etag") or "").strip('"').lower() or None
    total = int(response.headers.get("Content-Length") or 0) or None
    digest = hashlib.sha256()
    try:
        with Staging(folder) as staging:  # a refused or broken download leaves nothing in the cache
            tmp = staging.file(".download")
            with response, open(tmp, "wb") as handle:
                done = 0
                for block in iter(lambda: response.read(CHUNK), b""):
                    handle.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
            actual = digest.hexdigest()
            expected = prefix or (published if published and re.fullmatch(r"[0-9a-f]{64}", published) else None)
            if expected is not None and not actual.startswith(expected):
                raise CheckpointError(f"{weights.url} has sha256 {actual[:12]}, not the published {expected[:12]}: "
                                      "refused (a broken download or a changed file)")
            staging.commit(tmp, target)
    except (OSError, urllib.error.URLError) as exc:
        raise CheckpointError(f"download of {weights.url} failed: {exc}") from None
    return target, actual


@dataclass
class WeightsTable:
    """The published checkpoints `resnet-deploy list --weights` shows: tag, source, published top-1, preprocessing."""

    entries: list[PublishedWeights]

    def to_dict(self) -> list[dict[str, Any]]:
        return [{"arch": w.arch, "tag": w.tag, "url": w.url, "top1": w.top1, "preprocess": w.preprocess}
                for w in self.entries]

    def to_text(self) -> str:
        rows = [[w.arch, w.tag, "-" if w.top1 is None else f"{w.top1:.3f}", w.preprocess["resize"],
                 w.preprocess["interpolation"], w.url] for w in self.entries]
        return table(rows, ["arch", "--weights", "top-1 (published)", "resize", "interpolation", "url"], right={2, 3})


def weights_table() -> WeightsTable:
    """Every published checkpoint of every registered arch."""
    from .archs import list_models

    return WeightsTable([w for name in list_models() for w in published_for(name)])
