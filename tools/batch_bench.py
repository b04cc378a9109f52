"""Images/s of a serial loop, `batch` on this machine and `batch --ray` (1 and 2 actors) on the same JPEGs and
artifact, against this machine's ceiling, measured side by side in one run (issue 31's benchmark).

The ceiling: cores / (decode CPU-ms + inference CPU-ms per image), both measured in each round on a slice of
the same images: decoding and preprocessing one at a time on one thread; inference at one thread, at the
job's batch size (the least CPU per image this runtime spends; more threads per call only add hand-offs).
The serial loop is how `predict` classified a folder before: decode a chunk, then run it on every core.
Rounds are interleaved (serial, local, Ray with 1 actor, Ray with 2) and medians quoted; Ray is started once
before the first round (its start is reported apart) and stays up, idle, during the local runs.

    python tools/batch_bench.py ARTIFACT [--photos DIR] [--count 1000] [--backend ort] [--rounds 3]
        [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from resnet_deploy.batch.inputs import Filesystems, decode_pixels, list_inputs, model_input
from resnet_deploy.batch.job import DEFAULT_BATCH, BatchOptions, RayOptions, run_batch
from resnet_deploy.batch.shards import read_rows
from resnet_deploy.environment import cpu_description, physical_cores, tool_versions
from resnet_deploy.imageprep import ImagePreprocess
from resnet_deploy.target.predict import classify
from resnet_deploy.target.runtime import load

SLICE = 200  # images of the set timed for the ceiling's two costs


def ceiling(artifact: str, backend: str, sources: list[str]) -> dict[str, float]:
    """Decode and inference CPU-ms per image on ``SLICE`` of ``sources``, and cores / their sum."""
    with load(artifact, backend=backend, threads=1) as runner:
        preprocess = ImagePreprocess.from_manifest(runner.manifest.preprocess)
        filesystems, picked = Filesystems(), sources[:SLICE]
        start = time.process_time()
        inputs = [model_input(decode_pixels(s, preprocess, filesystems), preprocess) for s in picked]
        decode_ms = (time.process_time() - start) / len(picked) * 1e3
        batches = [np.stack(inputs[i:i + DEFAULT_BATCH]) for i in range(0, len(inputs), DEFAULT_BATCH)]
        runner.run_padded(batches[0])
        start = time.process_time()
        for batch in batches:
            runner.run_padded(batch)
        infer_ms = (time.process_time() - start) / len(picked) * 1e3
    cores = physical_cores()
    return {"decode_cpu_ms": decode_ms, "infer_cpu_ms": infer_ms, "ceiling": cores * 1e3 / (decode_ms + infer_ms)}


def serial_loop(artifact: str, backend: str, sources: list[str]) -> float:
    """Images/s of decode-then-run, chunk after chunk, the runtime on every core (predict's old path)."""
    with load(artifact, backend=backend) as runner:
        preprocess = ImagePreprocess.from_manifest(runner.manifest.preprocess)
        filesystems = Filesystems()
        runner.warmup(DEFAULT_BATCH, 1)
        start = time.perf_counter()
        for i in range(0, len(sources), DEFAULT_BATCH):
            chunk = [model_input(decode_pixels(s, preprocess, filesystems), preprocess)
                     for s in sources[i:i + DEFAULT_BATCH]]
            runner.run_padded(np.stack(chunk))
        return len(sources) / (time.perf_counter() - start)


def steady_rate(arrivals: list[tuple[float, int]], total: int) -> float:
    """Images/s between the 10th and the 90th percentile image's arrival: the job's pace once started (Ray's
    actors loaded) and before its tail, whatever the start-up took."""
    times = np.array([t for t, _ in arrivals])
    done = np.array([d for _, d in arrivals])
    low, high = np.searchsorted(done, 0.1 * total), np.searchsorted(done, 0.9 * total)
    return float((done[high] - done[low]) / (times[high] - times[low]))


def batch_run(artifact: str, backend: str, photos: Path, ray: RayOptions | None) -> tuple[dict, list]:
    """One `batch` job into a fresh folder: its timings, its steady rate and its rows' top-k."""
    out = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    arrivals: list[tuple[float, int]] = []
    try:
        report = run_batch(artifact, [str(photos)], out, BatchOptions(backend=backend, ray=ray),
                           progress=lambda p: arrivals.append((time.perf_counter(), p.done)))
        rows = read_rows(out, ["path", "top_index"]).to_pylist()
        return {**report.record.timings, "steady_images_per_s": steady_rate(arrivals, len(rows)),
                "summary": report.record.configuration["summary"]}, rows
    finally:
        shutil.rmtree(out, ignore_errors=True)


def one_round(args: argparse.Namespace, sources: list[str]) -> tuple[dict, dict]:
    figures, rows = {"ceiling": ceiling(args.artifact, args.backend, sources)}, {}
    figures["serial"] = {"images_per_s": serial_loop(args.artifact, args.backend, sources)}
    for name, ray in (("local", None), ("ray 1 actor", RayOptions(actors=1)), ("ray 2 actors", RayOptions(actors=2))):
        figures[name], rows[name] = batch_run(args.artifact, args.backend, args.photos, ray)
    return figures, rows


def same_topk(rows: dict, predicted: dict[str, list[int]]) -> dict[str, bool]:
    return {name: all(r["top_index"] == predicted[r["path"]] for r in found) and len(found) == len(predicted)
            for name, found in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--photos", type=Path, help="a folder of JPEGs (default: --count made by make_photos.py)")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--backend", default="ort")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.photos is None:
        from make_photos import write_photos

        args.photos = Path(tempfile.mkdtemp(prefix="photos-"))
        write_photos(args.photos, args.count)
    sources = list_inputs([str(args.photos)], Filesystems())
    import logging

    import ray

    start = time.perf_counter()
    ray.init(num_cpus=physical_cores(), include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    ray_start = time.perf_counter() - start
    rounds = []
    for index in range(args.rounds):
        figures, rows = one_round(args, sources)
        rounds.append(figures)
        print(f"round {index + 1}: " + ", ".join(f"{k} {v.get('steady_images_per_s', v.get('images_per_s', 0)):.1f}"
                                                  for k, v in figures.items() if k != "ceiling")
              + f", ceiling {figures['ceiling']['ceiling']:.1f}", flush=True)
    ray.shutdown()
    predicted = classify(args.artifact, sources, topk=5, backend=args.backend)
    result = summarise(args, rounds, ray_start, same_topk(rows, {p.image: [c["index"] for c in p.top]
                                                                 for p in predicted.predictions}))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def summarise(args: argparse.Namespace, rounds: list[dict], ray_start: float, identical: dict) -> dict:
    """Medians over the rounds, each form's ratio to the ceiling, and what the run ran on."""
    def median(name: str, key: str) -> float:
        return round(statistics.median(r[name][key] for r in rounds if key in r[name]), 2)

    forms = {name: {key: median(name, key) for key in ("images_per_s", "steady_images_per_s", "first_output_s")
                    if any(key in r[name] for r in rounds)} for name in rounds[0] if name != "ceiling"}
    ceiling_figures = {key: median("ceiling", key) for key in ("decode_cpu_ms", "infer_cpu_ms", "ceiling")}
    for figures in forms.values():
        best = figures.get("steady_images_per_s", figures["images_per_s"])
        figures["of_ceiling"] = round(best / ceiling_figures["ceiling"], 3)
    return {"date": time.strftime("%Y-%m-%d"), "machine": cpu_description(), "python": platform.python_version(),
            "versions": tool_versions(), "artifact": args.artifact, "backend": args.backend,
            "images": args.count if args.photos is None else len(list_inputs([str(args.photos)], Filesystems())),
            "rounds": len(rounds), "ray_start_s": round(ray_start, 2), "ceiling": ceiling_figures, "forms": forms,
            "summaries": {name: rounds[0][name].get("summary") for name in forms},
            "ray_vs_local": {name: round(forms[name].get("steady_images_per_s", 0) /
                                         forms["local"].get("steady_images_per_s", 1), 3)
                             for name in forms if name.startswith("ray")},
            "topk_identical_to_predict": identical, "per_round": rounds}


if __name__ == "__main__":
    main()
