"""Load an artifact as a runner: the one entry point of predict, bench and serve.

    with resnet_deploy.target.runtime.load("artifacts/resnet50.onnx") as runner:
        runner.warmup()
        logits = runner(batch)["logits"]

The backend follows the file (``.engine`` -> TensorRT, ``.onnx`` -> ONNX Runtime)
unless chosen (``openvino`` runs ONNX too); ``torch`` runs the float32 PyTorch
model the artifact was exported from (rebuilt from the manifest), the reference
and the baseline. ``auto`` is the configuration `tune` chose for the export
(``STEM.deploy.json``) where it was measured on this kind of CPU, else the
file's own. The backends are rows of :mod:`resnet_deploy.backends.registry`.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..artifacts import Manifest, manifest_for
from ..backends.base import Runner
from ..backends.load_options import LoadOptions
from ..backends.registry import artifact_format, backend_for, open_runner
from .plan import TUNE_HINT, Configuration, plan_path, read_plan


def tuned_configuration(path: Path, manifest: Manifest, precision: str) -> tuple[Configuration | None, str]:
    """What ``--backend auto`` runs ``path`` with, and why: `tune`'s choice for its export where it applies
    here, else None (the file's own backend), with the reason and a hint to run `tune`."""
    own = backend_for("auto", artifact_format(precision), path.name)
    default = f"auto: {own.title}, the file's own runtime"
    plan = read_plan(path.parent, manifest.stem)
    if plan is None:
        return None, f"{default} ({TUNE_HINT.format(artifact=path)})"
    problem = plan.problem_here(manifest)
    if problem is not None:
        return None, f"{default}: {plan_path('', manifest.stem)} not used: {problem}; {TUNE_HINT.format(artifact=path)}"
    return plan.choice, (f"auto: {plan.summary()}, chosen by `tune` on {plan.measured.get('date')} on this kind of "
                         f"CPU ({plan.why})")


def load(
    artifact: str | os.PathLike[str],
    *,
    backend: str = "auto",
    device: str | None = None,
    threads: int | None = None,
    graph_cache: bool = True,
    lanes: int = 1,
    shared_cores: bool = False,
    **own: Any,
) -> Runner:
    """A runner for ``artifact`` (a file listed in its manifest, unchanged since export).

    Args:
        artifact: an artifact file (``STEM.onnx``, ``STEM.fp16.onnx``, ``STEM.int8.onnx``, ``STEM.engine``).
        backend: a backend of :func:`~resnet_deploy.backends.registry.backend_choices`; ``"auto"``: the
            configuration `tune` chose for this export on this kind of CPU (``STEM.deploy.json``: possibly
            another file of the export, another backend, its threads), else the file's own (ONNX Runtime,
            TensorRT); the runner's ``selection`` says which and why. A device or own options given
            keep auto to the file's own backend.
        device: ``cpu``, ``cuda`` or ``cuda:N``; None: the GPU where the backend can use one here.
        threads: CPU threads of ONNX Runtime, OpenVINO or torch (default: physical cores, or tune's).
        graph_cache: keep ONNX Runtime's optimised graph (OpenVINO's compiled blob) beside the artifact.
        lanes: threads that will call the runner at once, each at ``threads`` (:mod:`.pipeline`'s lanes).
        shared_cores: other processes compute on these cores (Ray's actors): no thread pinned to a core.
        **own: the backend's own options, the fields of its row's options type in
            :mod:`resnet_deploy.backends.load_options` (``cuda_graphs`` for trt; ``channels_last``, ``compile``,
            ``half`` for torch; ``tensorrt_provider``, ``as_written`` for ort; ``bf16`` for openvino).

    Returns:
        A :class:`~resnet_deploy.backends.base.Runner`; use it as a context manager to release it.

    Raises:
        DeployError: the file is not an artifact of its manifest, the backend does not run it, cannot
            run here (and why), or does not take one of ``own``.
    """
    path = Path(artifact)
    manifest, precision = manifest_for(path)
    options = LoadOptions(device=device, threads=threads, graph_cache=graph_cache, own=own, lanes=lanes,
                          shared_cores=shared_cores)
    selection = None
    if backend == "auto" and not own and device is None:
        chosen, selection = tuned_configuration(path, manifest, precision)
        if chosen is not None:
            path = path.parent / chosen.artifact
            manifest, precision = manifest_for(path)
            backend = chosen.backend
            options = replace(options, device=chosen.device, threads=threads or chosen.threads, own=chosen.own)
    runner = open_runner(path, manifest, precision, backend, options)
    runner.selection = selection
    return runner


def identity(runner: Runner, sha256: str | None = None) -> dict[str, str]:
    """What ``runner`` computes with, as a copy loaded elsewhere (a Ray actor, a Serve replica) must find it:
    the file, backend, precision and the file's sha256 (``sha256``: already read, else read here). Another node
    holding another file, or another tune plan under ``--backend auto``, shows here as a difference."""
    from ..fileio import sha256_file

    return {"file": Path(runner.artifact).name, "backend": runner.name, "precision": runner.precision,
            "sha256": sha256 or sha256_file(runner.artifact)}
