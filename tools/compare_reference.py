#!/usr/bin/env python3
"""Check the zoo against the reference definitions (torchvision, timm) where they are installed.

For each arch whose checkpoints come from torchvision or timm: build the
reference model, give every tensor random values (BatchNorm statistics too),
save its state_dict as a checkpoint, load that into our model through the
normal `create_model(weights=...)` path (strict keys and shapes), and compare
outputs on the same random batch in float64. Exit 1 on any mismatch.

torchvision and timm are not dependencies of this project (installing them
here pulls a CUDA torch build); run this where they are, e.g. the GPU machine:

    python tools/compare_reference.py [--arch NAME ...] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resnet_deploy.errors import DeployError  # noqa: E402
from resnet_deploy.models import create_model, get_spec, list_models  # noqa: E402


def reference_model(name: str, compat: str) -> torch.nn.Module | str:
    """The reference definition, or the reason it cannot be built here."""
    if compat == "torchvision":
        if importlib.util.find_spec("torchvision") is None:
            return "torchvision is not installed"
        import torchvision

        return torchvision.models.get_model(name, weights=None)
    if compat == "timm":
        if importlib.util.find_spec("timm") is None:
            return "timm is not installed"
        import timm

        return timm.create_model(name, pretrained=False)
    return f"no installable reference for {compat} checkpoints"


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            values = torch.rand(tensor.shape, generator=generator)
            if key.endswith("running_var"):
                tensor.copy_(values + 0.5)
            elif tensor.dim() == 1:
                tensor.copy_(values * 0.4 + 0.8 if key.endswith("weight") else values * 0.2 - 0.1)
            else:
                fan_in = max(1, tensor[0].numel())
                tensor.copy_((values * 2 - 1) * (3.0 / fan_in) ** 0.5)


def compare(name: str) -> dict:
    spec = get_spec(name)
    reference = reference_model(name, spec.compat)
    if isinstance(reference, str):
        return {"arch": name, "status": "skipped", "reason": reference}
    reference = reference.eval().double()
    randomize(reference)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{name}.pt"
        torch.save(reference.state_dict(), path)
        try:
            ours = create_model(name, weights=path).double()
        except DeployError as exc:
            return {"arch": name, "status": "FAIL", "reason": f"checkpoint does not load: {exc}"}
    size = spec.preprocess.input_size
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        want, got = reference(images), ours(images)
    max_abs = (want - got).abs().max().item()
    scale = want.abs().max().item()
    ok = max_abs <= 1e-9 * max(1.0, scale)
    return {"arch": name, "status": "PASS" if ok else "FAIL", "max_abs": max_abs, "scale": scale}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", help="arch to check (default: all)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [compare(name) for name in (args.arch or list_models())]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            detail = r.get("reason") or f"max |diff| {r['max_abs']:.2e} (scale {r['scale']:.2e})"
            print(f"{r['arch']:20s} {r['status']:8s} {detail}")
    return 1 if any(r["status"] == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
