#!/usr/bin/env python3
"""Train a CIFAR-style ResNet on a labelled image set that needs no network, for accuracy checks.

Real weights are what judge fp16 and int8 artifacts (random-init logits have
no margin to keep). The data set is scikit-learn's bundled handwritten digits
(1,797 greyscale 8x8 images, 10 classes, shipped inside the scikit-learn wheel):

- writes it as PNG files in ImageFolder layout, OUT/data/{train,test}/<digit>/NNNN.png,
  a stratified split with --test-fraction held out, so `verify --data` and
  `export --calib-data` read it exactly as they read a user's images;
- trains ARCH (default resnet18_cifar) at --size px through the package's own
  preprocessing (greyscale to RGB, resize) with the model's own normalisation,
  --mean/--std (default (x - 0.5) / 0.5, not the arch's CIFAR statistics: the
  export must be told with `--mean/--std`, as a user's own model would), with
  +-2 px shifts, SGD with momentum and a one-cycle schedule;
- writes OUT/ARCH-digits.safetensors and OUT/train_record.json (settings, data
  hash, held-out top-1, seconds). A second run with the same settings and data
  finds the record and the checkpoint and does not train again.

    python tools/train_cifar.py [--out artifacts/digits] [--epochs 12] [--size 16] [--mean 0.5] [--std 0.5] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_deploy.data import ImagePreprocess, labelled_images, load_images  # noqa: E402
from resnet_deploy.fileio import atomic_open, sha256_file  # noqa: E402
from resnet_deploy.models import build_model, get_spec  # noqa: E402
from resnet_deploy.models.archs import declare_preprocess  # noqa: E402
from resnet_deploy.models.checkpoints import save_checkpoint  # noqa: E402

RECORD = "train_record.json"


def write_digits(root: Path, *, test_fraction: float, seed: int) -> str:
    """The digits as PNG class folders under root/{train,test}; returns a hash of what was written."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 ink levels to 8-bit grey
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(pixels), dtype=bool)
    for label in np.unique(digits.target):  # stratified: the same fraction of every digit held out
        members = rng.permutation(np.flatnonzero(digits.target == label))
        is_test[members[: round(len(members) * test_fraction)]] = True
    digest = hashlib.sha256()
    for index, (image, label, test) in enumerate(zip(pixels, digits.target, is_test)):
        folder = root / ("test" if test else "train") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index:04d}.png"
        if not path.exists():
            Image.fromarray(image, mode="L").save(path)
        digest.update(f"{path.relative_to(root)}:".encode() + image.tobytes())
    return digest.hexdigest()


def preprocess_for(arch: str, size: int, mean: float, std: float) -> ImagePreprocess:
    """What `export --arch ARCH --input-size SIZE --mean M,M,M --std S,S,S` records in the manifest,
    so training sees what inference sees."""
    return ImagePreprocess.from_manifest(
        declare_preprocess(get_spec(arch).preprocess, size, size, mean=(mean,) * 3, std=(std,) * 3))


def normalisation(value: float) -> str:
    """One value for R, G and B, as `export --mean/--std` takes it."""
    return ",".join([f"{value:g}"] * 3)


def shift(batch: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by up to ``pixels`` in x and y (edge-padded), the usual CIFAR augmentation."""
    padded = nn.functional.pad(batch, (pixels,) * 4, mode="replicate")
    size = batch.shape[-1]
    out = torch.empty_like(batch)
    offsets = torch.randint(0, 2 * pixels + 1, (len(batch), 2), generator=generator)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, dy: dy + size, dx: dx + size]
    return out


def top1(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        predictions = torch.cat([model(chunk).argmax(1) for chunk in images.split(256)])
    return float((predictions == labels).float().mean())


def train(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    data_hash = write_digits(out / "data", test_fraction=args.test_fraction, seed=args.seed)
    settings = {"arch": args.arch, "size": args.size, "mean": args.mean, "std": args.std, "epochs": args.epochs,
                "batch": args.batch, "lr": args.lr, "seed": args.seed, "test_fraction": args.test_fraction,
                "data_sha256": data_hash}
    checkpoint = out / f"{args.arch}-digits.safetensors"
    record_path = out / RECORD
    if record_path.exists() and checkpoint.exists() and not args.retrain:
        record = json.loads(record_path.read_text())
        if record.get("settings") == settings and record.get("checkpoint_sha256") == sha256_file(checkpoint):
            record["cached"] = True
            return record

    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    preprocess = preprocess_for(args.arch, args.size, args.mean, args.std)
    splits = {}
    for split in ("train", "test"):
        paths, labels, classes = labelled_images(out / "data" / split)
        splits[split] = (torch.from_numpy(load_images(paths, preprocess)), torch.from_numpy(labels))
    train_x, train_y = splits["train"]
    model = build_model(args.arch, num_classes=len(classes))
    steps_per_epoch = -(-len(train_x) // args.batch)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        total = 0.0
        for step in range(steps_per_epoch):
            index = order[step * args.batch: (step + 1) * args.batch]
            loss = loss_fn(model(shift(train_x[index], 2, generator)), train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / len(train_x):.4f} "
              f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    save_checkpoint(model, checkpoint)
    record = {
        "settings": settings,
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": sha256_file(checkpoint),
        "classes": classes,
        "train_images": len(train_x),
        "test_images": len(splits["test"][0]),
        "test_top1_torch": top1(model, *splits["test"]),
        "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "export": f"resnet-deploy export --arch {args.arch} --weights {checkpoint} --input-size {args.size} "
                  f"--mean {normalisation(args.mean)} --std {normalisation(args.std)} "
                  f"--calib-data {out / 'data' / 'train'}",
        "verify": f"resnet-deploy verify ARTIFACT --data {out / 'data' / 'test'}",
    }
    with atomic_open(record_path) as handle:
        json.dump(record, handle, indent=2)
    record["cached"] = False
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="artifacts/digits", help="Folder for the data, checkpoint and record.")
    parser.add_argument("--arch", default="resnet18_cifar")
    parser.add_argument("--size", type=int, default=16, help="Input size the model is trained and exported at.")
    parser.add_argument("--mean", type=float, default=0.5, help="Normalisation mean of every channel.")
    parser.add_argument("--std", type=float, default=0.5, help="Normalisation std of every channel.")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retrain", action="store_true", help="Train even when a matching checkpoint exists.")
    parser.add_argument("--json", action="store_true", help="Print the record as JSON.")
    args = parser.parse_args(argv)
    record = train(args)
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        state = "cached" if record["cached"] else f"trained in {record['train_seconds']} s"
        print(f"{record['checkpoint']}: {state}, held-out top-1 {record['test_top1_torch']:.4f} "
              f"on {record['test_images']} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
