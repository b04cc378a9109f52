"""Reading users' weights files and fitting them to a model.

A checkpoint is untrusted input: ``.pt``/``.pth`` files go through
``torch.load(weights_only=True)``, which refuses pickles that would run code,
and ``.safetensors`` files hold tensors only. Every failure is a
:class:`CheckpointError` with one line that says what to do.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, first_line
from ..fileio import atomic_path, regular_file

# Keys under which training scripts commonly nest the state_dict, most specific first.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
# Prefixes added by DataParallel/DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
HEAD_KEYS = ("fc.weight", "fc.bias")
_SHOWN = 4  # key names quoted per category in an error


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a checkpoint file and unwrap it to a flat ``{name: tensor}`` dict."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"weights file {path} is a folder: give the checkpoint file inside it")
    regular_file(path, "weights file", CheckpointError)  # a FIFO or a device would block or never end
    if path.stat().st_size == 0:
        raise CheckpointError(f"weights file {path} is empty")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw: object = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"cannot read {path} as safetensors: {first_line(exc)}") from None
    else:
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols; the error below says enough
                warnings.simplefilter("ignore")
                raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            text = str(exc)
            # torch < 2.13: "Unsupported global: GLOBAL os.system"; 2.13: "unsupported GLOBAL posix.system whose
            # module posix is blocked"
            offending = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", text)
            if offending:
                raise CheckpointError(
                    f"refused to load {path}: it holds Python objects ({offending.group(1)}) that would run code "
                    "when unpickled; re-save it as a plain state_dict (torch.save(model.state_dict(), ...)) "
                    "or as safetensors"
                ) from None
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
            raise CheckpointError(
                f"cannot read {path}: corrupted, or a pickle the safe loader refuses "
                f"({detail.group(1).strip() if detail else first_line(exc)})"
            ) from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, AttributeError) as exc:
            raise CheckpointError(
                f"cannot read {path}: not a PyTorch checkpoint or corrupted ({first_line(exc)})"
            ) from None
    return unwrap_state_dict(raw, source=str(path))


def unwrap_state_dict(raw: object, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Peel the usual wrappers: ``{'state_dict': ...}``, ``{'model': ...}``, ``module.`` prefixes."""
    while isinstance(raw, Mapping) and not _is_tensor_dict(raw):
        inner = next((raw[k] for k in WRAPPER_KEYS if isinstance(raw.get(k), Mapping)), None)
        if inner is None:
            break
        raw = inner
    if not isinstance(raw, Mapping) or not raw:
        raise CheckpointError(f"{source} holds no state_dict (found {type(raw).__name__})")
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    unusual = sorted(str(k) for k, v in tensors.items() if v.is_sparse or v.is_meta or v.layout != torch.strided)
    if unusual:  # sparse tensors fail the copy into the model's dense ones, meta tensors hold no values
        raise CheckpointError(f"{source} holds tensors that are sparse or have no data (meta): "
                              f"{unusual[:_SHOWN]}; save dense weights (tensor.to_dense())")
    if len(tensors) != len(raw):
        others = sorted(str(k) for k, v in raw.items() if not isinstance(v, torch.Tensor))[:_SHOWN]
        raise CheckpointError(
            f"{source} is not a state_dict: entries {others} are not tensors "
            f"(expected the weights under one of {list(WRAPPER_KEYS)})"
        )
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def _is_tensor_dict(raw: Mapping) -> bool:
    return bool(raw) and all(isinstance(v, torch.Tensor) for v in raw.values())


def _quote(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return f"{shown}, ... (+{len(names) - _SHOWN})" if len(names) > _SHOWN else shown


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], *, arch: str, source: str) -> None:
    """Load ``state`` into ``model`` strictly, with errors that name the keys.

    ``num_batches_tracked`` buffers are optional (old torchvision files lack
    them). A classifier checkpoint loaded into a backbone (``num_classes=0``)
    drops its head on purpose; any other head mismatch says which
    ``num_classes`` to ask for.
    """
    expected = model.state_dict()
    if "fc.weight" not in expected:
        state = {k: v for k, v in state.items() if k not in HEAD_KEYS}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]

    head_only = mismatched and set(mismatched) <= set(HEAD_KEYS) and not missing and not unexpected
    if head_only:
        raise CheckpointError(
            f"{source} has a {state['fc.weight'].shape[0]}-class head but the model was built with "
            f"{expected['fc.weight'].shape[0]} classes: pass --num-classes {state['fc.weight'].shape[0]} "
            "(num_classes=...) to load it, or --num-classes 0 to use it as a backbone"
        )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_quote(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_quote(unexpected)})")
        if mismatched:
            shapes = [f"{k} {list(state[k].shape)} vs {list(expected[k].shape)}" for k in mismatched]
            parts.append(f"{len(mismatched)} of another shape ({_quote(shapes)})")
        raise CheckpointError(f"{source} does not fit {arch}: keys " + "; ".join(parts))
    _check_values(state, source)
    model.load_state_dict(state, strict=False)  # strictness checked above, with better messages


def _check_values(state: dict[str, torch.Tensor], source: str) -> None:
    """Weights that can compute nothing: NaN or infinite values, a negative BatchNorm variance (the
    square root of it is NaN). Said here, naming the tensors, rather than found by the export's parity
    gate, which could only blame a graph pass."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    negative = [k for k, v in state.items() if k.endswith("running_var") and bool((v < 0).any())]
    if bad:
        raise CheckpointError(f"{source} holds NaN or infinite values in {len(bad)} tensors ({_quote(sorted(bad))})")
    if negative:
        raise CheckpointError(f"{source} holds negative BatchNorm variances in {_quote(sorted(negative))}")


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write the model's state_dict atomically: safetensors for ``.safetensors``, else torch.save."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp))
        else:
            torch.save(state, tmp)
    return path
