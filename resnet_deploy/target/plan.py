"""``STEM.deploy.json``: the configuration `tune` measured fastest among those that passed verification, and
the machine it was measured on; what ``--backend auto`` reads.

A plan applies where it was made: the same export (the chosen file's sha256 in the manifest) on a CPU of the
same kind (the same family, x86 or ARM, and the instruction sets that decide its speed: AVX2, AVX-512, VNNI,
bf16, AMX; NEON, dot product, i8mm, SVE). Elsewhere auto is the file's own backend, and says why the plan was
not used. Light on purpose: `predict` and `serve` on a target without PyTorch read it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..artifacts import Manifest, split_artifact_name
from ..environment import cpu_description
from ..errors import ArtifactError
from ..fileio import atomic_open, from_record, special_file

SUFFIX = ".deploy.json"
FORMAT = "resnet-deploy/deploy-plan-1"
TUNE_HINT = "run `resnet-deploy tune {artifact}` to measure and verify the fastest configuration on this machine"


def plan_path(folder: str | os.PathLike[str], stem: str) -> Path:
    return Path(folder) / f"{stem}{SUFFIX}"


def cpu_kind(cpu: dict[str, Any]) -> dict[str, Any]:
    """What makes two CPUs the same kind for a plan: the family and instruction sets that decide which kernels
    run (a plan written before the family was recorded was measured on x86)."""
    return {"arch": cpu.get("arch", "x86"), "isa": sorted(cpu.get("isa", [])), "int8_isa": cpu.get("int8_isa"),
            "bf16": cpu.get("bf16")}


@dataclass(frozen=True)
class Configuration:
    """One way to run an export's artifact: a file, a backend with its own options, threads, a batch size."""

    artifact: str  # file name, beside the manifest
    precision: str  # what it computes in: the file's precision, or bf16 for the fp32 file in bf16
    backend: str
    own: dict[str, Any] = field(default_factory=dict)  # the backend's own options (keywords of runtime.load)
    threads: int | None = None
    device: str = "cpu"

    @property
    def label(self) -> str:
        own = "".join(f" {key}" for key, on in sorted(self.own.items()) if on)
        threads = f", {self.threads} threads" if self.threads else ""
        return f"{self.artifact} [{self.backend}{own}{threads}]"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Configuration:
        return from_record(cls, record)


@dataclass
class DeployPlan:
    stem: str
    choice: Configuration
    sha256: str  # of the chosen file, as the manifest recorded it
    objective: str  # latency or throughput
    batch: int  # the batch size its figure is for
    figures: dict[str, Any]  # the choice's p50/p99/images/s, its ratio to ONNX Runtime fp32, its verification
    why: str  # one sentence: why this one
    measured: dict[str, Any]  # date, cpu (environment.cpu_description()), tools
    candidates: list[dict[str, Any]] = field(default_factory=list)  # the ranked table, rejected ones included

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["choice"] = self.choice.to_dict()
        return {"format": FORMAT, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeployPlan:
        """The plan in ``data``, every field checked (a hand-edited or damaged plan must not reach a runner).

        Raises:
            ValueError: the field that is missing or of the wrong kind.
        """
        _check_plan(data)
        return replace(from_record(cls, data), choice=Configuration.from_dict(data["choice"]))

    def write(self, folder: str | os.PathLike[str]) -> Path:
        path = plan_path(folder, self.stem)
        with atomic_open(path, "w") as handle:
            json.dump(self.to_dict(), handle, indent=2, default=float)
            handle.write("\n")
        return path

    def summary(self) -> str:
        """"resnet50.onnx [openvino bf16, 2 threads]: p50 9.7 ms at batch 1, 0.51x ONNX Runtime fp32"."""
        p50 = self.figures.get("p50_ms")
        ratio = self.figures.get("vs_baseline")
        versus = f", {ratio:.2f}x ONNX Runtime fp32" if ratio is not None else ""
        return f"{self.choice.label}: p50 {p50:.2f} ms at batch {self.batch}{versus}"

    def problem_here(self, manifest: Manifest) -> str | None:
        """Why this plan does not apply to ``manifest``'s export on this machine, or None where it does."""
        entry = manifest.artifact(split_artifact_name(self.choice.artifact)[1])
        if entry is None or entry.file != self.choice.artifact or entry.sha256 != self.sha256:
            return f"it was measured on another export of {self.stem} (the chosen file's sha256 differs)"
        measured, here = cpu_kind(self.measured.get("cpu", {})), cpu_kind(cpu_description())
        if measured != here:
            return (f"it was measured on another kind of CPU ({self.measured.get('cpu', {}).get('model')}: "
                    f"{' '.join(measured['isa'])}; here: {' '.join(here['isa'])})")
        return None


def _field(record: Any, name: str, kinds: type | tuple[type, ...], where: str = "") -> Any:
    """``record[name]``, which must be of ``kinds`` (bool is no number here); else ValueError naming it."""
    if not isinstance(record, dict) or name not in record:
        raise ValueError(f"no {where}{name}")
    value, allowed = record[name], kinds if isinstance(kinds, tuple) else (kinds,)
    if (isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed)
            or isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"{where}{name} is {value!r}")
    return value


def _check_plan(data: Any) -> None:
    """Every field :class:`DeployPlan` and ``--backend auto`` use, of the kind they use it as."""
    for name in ("stem", "sha256", "objective", "why"):
        _field(data, name, str)
    choice = _field(data, "choice", dict)
    for name in ("artifact", "precision", "backend", "device"):
        _field(choice, name, str, "choice.")
    own = _field(choice, "own", dict, "choice.")
    for key in own:
        _field(own, key, bool, "choice.own.")
    threads = choice.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"choice.threads is {threads!r}")
    if _field(data, "batch", int) < 1:
        raise ValueError(f"batch is {data['batch']!r}")
    figures = _field(data, "figures", dict)
    _field(figures, "p50_ms", (int, float), "figures.")
    if figures.get("vs_baseline") is not None:
        _field(figures, "vs_baseline", (int, float), "figures.")
    measured = _field(data, "measured", dict)
    cpu = _field(measured, "cpu", dict, "measured.")
    if not isinstance(cpu.get("isa", []), list):
        raise ValueError(f"measured.cpu.isa is {cpu['isa']!r}")
    if "candidates" in data:
        _field(data, "candidates", list)


def read_plan(folder: str | os.PathLike[str], stem: str) -> DeployPlan | None:
    """The export's plan, None where there is none; a one-line error for one that cannot be read."""
    path = plan_path(folder, stem)
    kind = special_file(path)
    if kind is not None:
        raise ArtifactError(f"{path.name} is {kind}, not a plan: run `resnet-deploy tune` again, or remove it")
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, not {FORMAT!r}")
        return DeployPlan.from_dict(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path.name} cannot be read ({exc}): run `resnet-deploy tune` again, or remove it") from None
