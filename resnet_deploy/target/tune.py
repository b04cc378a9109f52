"""`tune`: every configuration of an export that runs on this machine, each verified, the ones that pass
timed side by side, and the fastest written to ``STEM.deploy.json`` for ``--backend auto``.

A configuration is a file of the export (fp32, fp16, int8; the fp32 file computed in bf16 where a runtime
offers it), a backend variant that runs it here (ONNX Runtime, OpenVINO; their GPU variants where there is
one), the backend's settings worth trying (OpenVINO's latency or throughput hint: one stream, or several
with a batch split across them) and a thread count. Each is verified before it can be chosen: its precision's tolerances against the
float32 reference (PyTorch, or the golden outputs without it), and its top-1 drop within ``max_drop``
points, on labelled ``data`` or, without labels, as the share of the calibration hold-out whose class
changed. Then every configuration that ran is timed by :func:`resnet_deploy.target.bench.bench`, interleaved, so
a noisy machine slows all alike; rejected ones too, so the table shows what their speed would have cost.

Selection (:func:`choose`) is apart from measuring, and tested with stand-in figures: the fastest passing
configuration by the objective's figure, and among those within :data:`TIE` of it the one computing
closest to fp32.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import DEFAULT_PROFILE, LOGITS, Manifest, manifest_for
from ..backends.load_options import LoadOptions
from ..backends.registry import BACKENDS, Backend, Variant, artifact_format
from .bench import bench, pyplot, save_png
from .plan import Configuration, DeployPlan
from ..environment import cpu_description, physical_cores, tool_versions
from ..errors import MAX_SEED, DeployError, within
from ..parity.checks import check
from ..parity.inputs import HOLDOUT
from ..parity.tolerances import Policy
from ..parity.metrics import accuracy, top1_drop
from ..parity.verify import reference_run, resolve_reference
from ..precisions import FP32, PRECISIONS
from ..render import pairs, table
from .runtime import load

OBJECTIVES = ("latency", "throughput")
DEFAULT_MAX_DROP = 1.0  # top-1 points
DEFAULT_BUDGET_S = 300.0
TIE = 0.03  # figures within 3% of the best are a tie on a noisy machine: the one closest to fp32 wins
MIN_CASE_S, MAX_CASE_S = 0.3, 3.0  # seconds of timed calls per configuration and batch size
BASELINE = ("ort", FP32)  # what the ratios are to: ONNX Runtime on the fp32 file


@dataclass
class Candidate:
    """A configuration, its verification and its timings."""

    config: Configuration
    passed: bool | None = None  # None: not verified (it did not load, or the budget ran out)
    reason: str | None = None  # why it was rejected or not tried
    accuracy: dict[str, Any] = field(default_factory=dict)  # min cosine, max error, top-1 drop (points) or None
    timings: dict[int, dict[str, float]] = field(default_factory=dict)  # batch -> p50_ms, p99_ms, images_per_s
    runner: str | None = None  # the runner's name

    def figure(self, objective: str) -> tuple[float, int] | None:
        """(the objective's figure, the batch it is at): p50 at the smallest batch for latency, the best images/s
        over the batch sizes for throughput; None where it was not timed."""
        if not self.timings:
            return None
        if objective == "latency":
            batch = min(self.timings)
            return self.timings[batch]["p50_ms"], batch
        batch = max(self.timings, key=lambda b: self.timings[b]["images_per_s"])
        return self.timings[batch]["images_per_s"], batch

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["config"] = self.config.to_dict()
        data["label"] = self.config.label
        data["timings"] = {str(batch): figures for batch, figures in self.timings.items()}
        return data


def _faster(objective: str) -> Callable[[float, float], bool]:
    return (lambda a, b: a < b) if objective == "latency" else (lambda a, b: a > b)


def _closeness_to_fp32(candidate: Candidate) -> int:
    """The precision table's order: fp32, fp16, bf16, int8 (the order rows were added: least reduced first)."""
    return list(PRECISIONS).index(candidate.config.precision)


def rank(candidates: Sequence[Candidate], objective: str) -> list[Candidate]:
    """Passing candidates by the objective's figure, then the rejected ones, then those without a figure."""
    sign = 1 if objective == "latency" else -1

    def key(c: Candidate) -> tuple[int, float]:
        figure = c.figure(objective)
        group = 0 if c.passed and figure else 1 if c.passed is False and figure else 2  # untimed: last
        return group, sign * figure[0] if figure else 0.0

    return sorted(candidates, key=key)


def choose(candidates: Sequence[Candidate], objective: str) -> tuple[Candidate | None, str]:
    """The configuration to deploy and why: the fastest that passed verification by the objective's figure;
    among those within :data:`TIE` of it, the one computing closest to fp32, then the fewest threads, then
    the first. None (and why) where none passed."""
    if objective not in OBJECTIVES:
        raise DeployError(f"unknown objective {objective!r}: choose from {', '.join(OBJECTIVES)}")
    passing = [c for c in candidates if c.passed and c.figure(objective)]
    if not passing:
        return None, _why_none(candidates)
    faster = _faster(objective)
    best = passing[0]
    for candidate in passing[1:]:
        if faster(candidate.figure(objective)[0], best.figure(objective)[0]):
            best = candidate
    value = best.figure(objective)[0]
    near = [c for c in passing
            if abs(c.figure(objective)[0] - value) <= TIE * value]
    chosen = min(near, key=lambda c: (_closeness_to_fp32(c), c.config.threads or 0, passing.index(c)))
    unit = "ms p50" if objective == "latency" else "images/s"
    if chosen is best:
        why = f"the fastest configuration that passed verification ({value:.2f} {unit})"
    else:
        why = f"within {TIE:.0%} of the fastest that passed ({best.config.label}, {value:.2f} {unit}) and " + (
            f"computes closer to fp32 ({chosen.config.precision} against {best.config.precision})"
            if chosen.config.precision != best.config.precision else
            f"uses fewer threads ({chosen.config.threads} against {best.config.threads})"
            if (chosen.config.threads or 0) < (best.config.threads or 0) else "was listed first")
    faster_rejected = [c for c in candidates if c.passed is False and c.figure(objective)
                       and faster(c.figure(objective)[0], chosen.figure(objective)[0])]
    if faster_rejected:
        why += f"; {len(faster_rejected)} faster one(s) failed verification"
    return chosen, why


def _why_none(candidates: Sequence[Candidate]) -> str:
    """Why no configuration can be chosen: the rejected ones' reasons, else how many were not tried or did not
    load (the budget running out is not a verdict on the configurations)."""
    rejected = [c for c in candidates if c.passed is False]
    if rejected:
        reasons = "; ".join(f"{c.config.label}: {c.reason}" for c in rejected[:3])
        return f"no configuration passed verification ({reasons})"
    untried = [c for c in candidates if c.reason and c.reason.startswith("not tried")]
    unloaded = [c for c in candidates if c.reason and c.reason.startswith("did not load")]
    parts = ([f"{len(untried)} not tried (--budget-s ran out before they were verified: give more)"] if untried
             else []) + ([f"{len(unloaded)} did not load ({unloaded[0].reason})"] if unloaded else [])
    return "no configuration was verified: " + ("; ".join(parts) or "none could be verified here")


def configurations(manifest: Manifest, *, threads: Sequence[int]) -> tuple[list[Configuration], list[dict[str, Any]]]:
    """Every configuration of the export's files that can run here, and each backend variant that cannot,
    with the files it would have run and why (bf16 where the CPU has no native bf16, a GPU runtime without a
    GPU)."""
    found: list[Configuration] = []
    skipped: dict[str, dict[str, Any]] = {}
    for entry in manifest.artifacts:
        kind = artifact_format(entry.precision)
        for backend in BACKENDS.values():
            if backend.runs != kind:  # the PyTorch model is the reference, not a deployment
                continue
            for variant in backend.variants:
                if not variant.runs_file_of(entry.precision):
                    continue
                computes = variant.precision or entry.precision
                state = variant.availability()
                if not state.available:
                    skipped.setdefault(variant.name, {"variant": variant.name, "files": [], "reason": state.reason})
                    skipped[variant.name]["files"].append(f"{entry.file} ({computes})")
                    continue
                device = variant.options.device or "cpu"
                for setting in backend.tunables:
                    own = {**_own_given(variant), **setting}
                    for count in (threads if device == "cpu" else (None,)):
                        found.append(Configuration(entry.file, computes, backend.name, own, count, device))
    return found, list(skipped.values())


def _own_given(variant: Variant) -> dict[str, Any]:
    """A variant's own options that are on, as runtime.load's keywords ({"bf16": True})."""
    return {k: v for k, v in asdict(variant.options.own).items() if v} if variant.options.own else {}


def _variant(config: Configuration) -> tuple[Backend, Variant]:
    """The registry's variant a configuration runs (how it is judged: its INT8 kernels, its precision), with
    the configuration's settings."""
    backend = BACKENDS[config.backend]
    tuned = {key for setting in backend.tunables for key in setting}
    base = {key: on for key, on in config.own.items() if key not in tuned}
    variant = next(v for v in backend.variants if (v.options.device or "cpu") == config.device and _own_given(v) == base)
    return backend, replace(variant, options=replace(variant.options, own=backend.options(**config.own)))


@dataclass
class TuneReport:
    artifact: str
    objective: str
    batch_sizes: list[int]
    max_drop: float
    inputs: dict[str, Any]
    reference: str
    candidates: list[Candidate]
    choice: Candidate | None
    why: str
    skipped: list[dict[str, Any]] = field(default_factory=list)  # variants that cannot run here: files, reason
    notes: list[str] = field(default_factory=list)
    plan_file: str | None = None
    cpu: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("candidates", "choice")}
        data["candidates"] = [c.to_dict() for c in self.candidates]
        data["choice"] = self.choice.to_dict() if self.choice else None
        return data

    def to_text(self) -> str:
        """tune's table: every candidate ranked, its timings, accuracy and verdict; then what could not run here,
        notes, the choice and the plan written."""
        sizes = self.batch_sizes
        headers = ["#", "configuration", "computes", *[f"p50 ms b{b}" for b in sizes],
                   *[f"img/s b{b}" for b in sizes], "vs ORT fp32", "cosine", "top-1 drop", "result"]
        rows = [self._cells(rank, c) for rank, c in enumerate(self.candidates, 1)]
        lines = [f"{self.artifact}: {self.objective}, verified against {self.reference} on {pairs(self.inputs)}; "
                 f"max top-1 drop {self.max_drop} points", "", table(rows, headers, right=range(3, len(headers) - 1))]
        lines += [f"not available here: {s['variant']} for {', '.join(s['files'])}: {s['reason']}" for s in self.skipped]
        lines += [f"note: {note}" for note in self.notes]
        if self.choice is not None:
            lines.append(f"chosen: {self.choice.config.label}: {self.why}")
        if self.plan_file:
            lines.append(f"wrote {self.plan_file}: `--backend auto` runs it on this kind of CPU "
                         f"({' '.join(self.cpu.get('isa', []))})")
        lines.append(f"took {self.seconds:.1f} s")
        return "\n".join(lines)

    def _cells(self, rank: int, c: Candidate) -> list[str]:
        timings = [c.timings.get(b) for b in self.batch_sizes]
        ratio = next((t["vs_baseline"] for t in timings if t and "vs_baseline" in t), None)
        drop = c.accuracy.get("top1_drop")
        result = ("CHOSEN" if c is self.choice else "pass") if c.passed else (
            f"REJECTED: {c.reason}" if c.passed is False else c.reason or "not tried")
        return [str(rank), c.config.label, c.config.precision,
                *[f"{t['p50_ms']:.2f}" if t else "-" for t in timings],
                *[f"{t['images_per_s']:.1f}" if t else "-" for t in timings],
                f"{ratio:.2f}x" if ratio is not None else "-",
                f"{c.accuracy['min_cosine']:.6f}" if c.accuracy else "-",
                f"{drop:.2f}" if drop is not None else "-", result]


def _verify(candidate: Candidate, path: Path, manifest: Manifest, ran: Any, labels: np.ndarray | None,
            max_drop: float) -> None:
    """Judge one configuration against the reference: tolerances, then top-1 drop (labels, or the hold-out)."""
    config = candidate.config
    policy = Policy.make(config.precision, random_init=manifest.random_init)
    checked = check(path, manifest, manifest_for(path)[1], policy, [_variant(config)], ran.results, ran.name)
    results, candidate.runner = checked.results, checked.runners[-1]
    candidate.accuracy = {"min_cosine": min(r.figures.cosine for r in checked.judged),
                          "max_rel_to_scale": max(r.figures.rel_to_scale for r in checked.judged), "top1_drop": None}
    failed = checked.first_failure
    if failed is not None:
        candidate.passed, candidate.reason = False, f"{'; '.join(failed.failures)} ({failed.inputs} batch {failed.batch})"
        return
    first = manifest.outputs[0].name
    if first == LOGITS and labels is not None:
        want, got = results.joined(ran.name, first), results.joined(candidate.runner, first)
        candidate.accuracy.update(top1=accuracy(got, labels)["top1"], top1_reference=accuracy(want, labels)["top1"],
                                  top1_drop=top1_drop(want, got, labels))
    elif first == LOGITS and any(s.label == HOLDOUT for s in results.sets):
        holdout = [i for i, (label, _) in enumerate(results.batches) if label == HOLDOUT]
        want = np.concatenate([results.outputs[ran.name][i][first] for i in holdout])
        got = np.concatenate([results.outputs[candidate.runner][i][first] for i in holdout])
        candidate.accuracy["top1_drop"] = top1_drop(want, got)  # changed classes: the drop's bound
    drop = candidate.accuracy["top1_drop"]
    if drop is not None and drop > max_drop:
        candidate.passed, candidate.reason = False, f"top-1 drop {drop:.2f} points > {max_drop}"
        return
    candidate.passed = True


def tune(
    artifact: str | os.PathLike[str],
    *,
    data: str | None = None,
    max_drop: float = DEFAULT_MAX_DROP,
    batch_sizes: list[int] | None = None,
    objective: str = "latency",
    budget_s: float = DEFAULT_BUDGET_S,
    duration: float | None = None,
    threads: list[int] | None = None,
    reference: str = "auto",
    seed: int = 0,
    write: bool = True,
    progress: Callable[[str], None] | None = None,
) -> TuneReport:
    """Measure, verify and pick the fastest configuration of ``artifact``'s export on this machine.

    Args:
        artifact: any artifact file of the export (its manifest beside it); every file of the export is tried.
        data: labelled images (one folder per class): top-1 drop against the float32 reference's is judged.
        max_drop: the largest top-1 drop allowed, in points (on ``data``, else the hold-out's changed classes).
        batch_sizes: timed batch sizes within the profile (default 1 and 8, within it).
        objective: ``latency`` (p50 at the smallest batch) or ``throughput`` (best images/s).
        budget_s: seconds the whole run should take: verification stops at half of it (the rest reported as not
            tried), and the timing per case is what is left after verifying.
        duration: seconds of timed calls per configuration and batch size (default: from what ``budget_s``
            leaves, :data:`MIN_CASE_S` to :data:`MAX_CASE_S`).
        threads: CPU thread counts to try (default: the physical cores, and the logical ones where more).
        reference: as :func:`resnet_deploy.verify` takes it (auto: PyTorch where installed, else golden).
        seed: seed of the random inputs.
        write: write ``STEM.deploy.json`` beside the artifact when one is chosen.
        progress: called with a line of progress.

    Returns:
        The :class:`TuneReport`: every candidate ranked, the choice and why.

    Raises:
        DeployError: bad options, or nothing that runs the export here.
    """
    start, say, path = time.perf_counter(), progress or (lambda _line: None), Path(artifact)
    manifest, _ = manifest_for(path)
    sizes, counts = _checked_options(manifest, objective, max_drop, budget_s, duration, seed, batch_sizes, threads)
    found, skipped = configurations(manifest, threads=counts)
    if not found:
        raise DeployError(f"nothing runs {manifest.stem}'s files here: " + "; ".join(
            f"{s['variant']}: {s['reason']}" for s in skipped[:3]))
    ran, notes = _reference(manifest, path.parent, resolve_reference(reference), seed, data)
    candidates = [Candidate(config) for config in found]
    _verify_all(candidates, path, manifest, ran, max_drop, start + budget_s / 2, say)
    _time(candidates, path.parent, sizes, budget_s - (time.perf_counter() - start), say, duration)
    _compare_with_baseline(candidates)
    chosen, why = choose(candidates, objective)
    report = TuneReport(artifact=str(path), objective=objective, batch_sizes=sizes, max_drop=max_drop,
                        inputs=ran.given.description, reference=ran.described, candidates=rank(candidates, objective),
                        choice=chosen, why=why, skipped=skipped, notes=notes, cpu=cpu_description())
    report.seconds = time.perf_counter() - start
    if chosen is not None and write:
        report.plan_file = str(_plan(report, manifest, chosen).write(path.parent))
    return report


def _checked_options(manifest: Manifest, objective: str, max_drop: float, budget_s: float, duration: float | None,
                     seed: int, batch_sizes: list[int] | None, threads: list[int] | None) -> tuple[list[int], list[int]]:
    """tune's options checked against their bounds and the export's profile: the batch sizes to time and the
    thread counts to try (each once)."""
    if objective not in OBJECTIVES:
        raise DeployError(f"unknown objective {objective!r}: choose from {', '.join(OBJECTIVES)}")
    within("--max-drop", max_drop, 0.0, 100.0, "top-1 points")
    within("--budget-s", budget_s, 1.0, 86400.0, "seconds")
    if duration is not None:
        within("--duration", duration, 0.05, 3600.0, "seconds")
    within("--seed", seed, 0, MAX_SEED)
    profile = manifest.batch
    sizes = batch_sizes or sorted({profile.min, min(profile.max, DEFAULT_PROFILE.opt)})
    outside = [b for b in sizes if not profile.min <= b <= profile.max]
    if outside:
        raise DeployError(f"batch sizes {outside} are outside the export's profile {profile}")
    counts = sorted(set(threads or {physical_cores(), os.cpu_count() or 1}))  # a count named twice is one
    for count in counts:
        LoadOptions(threads=count)  # the bound check of --threads
    return sizes, counts


def _reference(manifest: Manifest, folder: Path, reference: str, seed: int, data: str | None) -> tuple[Any, list[str]]:
    """The float32 reference's run on the inputs every candidate is verified on, and what it cannot measure."""
    if reference == "golden" and data is not None:
        raise DeployError("--data needs PyTorch (the reference's accuracy on it): install 'resnet-deploy[export]'")
    ran = reference_run(manifest, Policy.make(FP32, random_init=manifest.random_init), folder,
                        reference=reference, batch_sizes=None, seed=seed, data=data)
    notes = [n for n in (ran.given.note,) if n]
    if ran.given.labels is None and not any(s.label == HOLDOUT for s in ran.results.sets):
        notes.append("top-1 drop not measured: no --data and no calibration hold-out; judged by each precision's "
                     "tolerances on random images")
    return ran, notes


def _verify_all(candidates: list[Candidate], path: Path, manifest: Manifest, ran: Any, max_drop: float,
                deadline: float, say: Callable[[str], None]) -> None:
    """Verify each candidate against the reference run, once per file and variant (threads do not change what
    is computed); those left when ``deadline`` (perf_counter) passes are reported as not tried."""
    verified: dict[tuple[Any, ...], Candidate] = {}
    for index, candidate in enumerate(candidates, 1):
        config = candidate.config
        key = (config.artifact, config.backend, tuple(sorted(config.own.items())), config.device)
        if key in verified:
            done = verified[key]
            candidate.passed, candidate.reason, candidate.accuracy, candidate.runner = (
                done.passed, done.reason, done.accuracy, done.runner)
            continue
        if time.perf_counter() > deadline:
            candidate.reason = "not tried: half of --budget-s was spent verifying the others"
            continue
        say(f"verify {index}/{len(candidates)}: {config.label} ({config.precision})")
        try:
            _verify(candidate, path.parent / config.artifact, manifest, ran, ran.given.labels, max_drop)
        except DeployError as exc:
            candidate.reason = f"did not load: {exc}"
        verified[key] = candidate


def _compare_with_baseline(candidates: list[Candidate]) -> None:
    """Each timing's ``vs_baseline``: its p50 over ONNX Runtime fp32's on the physical cores at that batch."""
    baseline = next((c for c in candidates if (c.config.backend, c.config.precision) == BASELINE
                     and c.config.threads == physical_cores() and c.timings), None)
    for candidate in candidates:
        for batch, figures in candidate.timings.items():
            if baseline is not None and batch in baseline.timings:
                figures["vs_baseline"] = figures["p50_ms"] / baseline.timings[batch]["p50_ms"]


def _time(candidates: list[Candidate], folder: Path, sizes: list[int], seconds_left: float,
          say: Callable[[str], None], duration: float | None = None) -> None:
    """Every verified candidate timed side by side (interleaved), each case for ``duration`` seconds or what the
    budget leaves."""
    timed = [c for c in candidates if c.passed is not None]
    if not timed:
        return
    per_case = duration or min(MAX_CASE_S, max(MIN_CASE_S, 0.6 * seconds_left / (len(timed) * len(sizes))))
    with contextlib.ExitStack() as stack:
        runners = []
        for candidate in timed:
            config = candidate.config
            runner = stack.enter_context(load(folder / config.artifact, backend=config.backend, device=config.device,
                                              threads=config.threads, **config.own))
            runners.append((config.label, runner))
        say(f"timing {len(runners)} configurations at batch {', '.join(map(str, sizes))}, {per_case:.1f} s each")
        results = bench(runners, sizes, duration=per_case, warmup=2, progress=say)
    by_label = {c.config.label: c for c in timed}
    for row in results:
        by_label[row.label].timings[row.batch] = {"p50_ms": row.latency_ms["p50"], "p99_ms": row.latency_ms["p99"],
                                                   "images_per_s": row.images_per_s, "iterations": row.iterations}


def _plan(report: TuneReport, manifest: Manifest, chosen: Candidate) -> DeployPlan:
    figure, batch = chosen.figure(report.objective)
    figures = {**chosen.timings[batch], "batch": batch, "accuracy": chosen.accuracy}
    return DeployPlan(
        stem=manifest.stem, choice=chosen.config, sha256=manifest.artifact(
            manifest_for(Path(report.artifact).parent / chosen.config.artifact)[1]).sha256,
        objective=report.objective, batch=batch, figures=figures, why=report.why,
        measured={"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": report.cpu,
                  "tools": tool_versions(), "max_drop": report.max_drop, "inputs": report.inputs},
        candidates=[c.to_dict() for c in report.candidates],
    )


def plot(report: TuneReport, path: str) -> None:
    """Latency against accuracy, one point per configuration timed: passing, rejected, the choice."""
    plt = pyplot()
    drop = any(c.accuracy.get("top1_drop") is not None for c in report.candidates)
    figure, axis = plt.subplots(figsize=(9, 5))
    for number, candidate in enumerate(report.candidates, 1):
        timed = candidate.figure("latency")
        if timed is None:
            continue
        y = (candidate.accuracy.get("top1_drop") if drop else 1 - candidate.accuracy.get("min_cosine", 1.0)) or 0.0
        marker = "*" if candidate is report.choice else "o" if candidate.passed else "x"
        axis.scatter([timed[0]], [y], marker=marker, s=160 if marker == "*" else 40,
                     color="tab:green" if candidate.passed else "tab:red",
                     label=f"{number}: {candidate.config.label} ({candidate.config.precision})")
        axis.annotate(str(number), (timed[0], y), fontsize=8, xytext=(4, 3), textcoords="offset points")
    if not drop:  # cosine gaps span decades: fp32's 1e-7 beside int8's 1e-3
        axis.set_yscale("symlog", linthresh=1e-6)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axis.set_xlabel(f"p50 latency at batch {min(report.batch_sizes)} (ms)")
    axis.set_ylabel("top-1 drop (points)" if drop else "1 - min cosine vs float32")
    axis.set_title("tune: latency vs accuracy (* chosen, x rejected)")
    axis.grid(True, alpha=0.3)
    figure.tight_layout()
    save_png(figure, path)

