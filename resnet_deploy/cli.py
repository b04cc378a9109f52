"""The ``resnet-deploy`` command line: thin click commands over the Python API.

Exit codes: 0 success, 1 a parity failure, 2 bad input or an environment
limit (one line on stderr, no traceback unless ``--debug``).
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from typing import Any

import click

from .backends.load_options import cli_flags
from .backends.registry import BACKENDS, backend_choices
from .data import INTERPOLATIONS, PREPROCESS_PRESETS
from .environment import extra_modules
from .errors import DeployError, DeployWarning, ParityError
from .export.engine import DEFAULT_WORKSPACE_GIB, HARDWARE_COMPAT, BuildOptions
from .export.options import EXPORTERS, LAST_STRIDES, ExportOptions
from .export.quantize import CALIBRATION_METHODS, INT8_TARGETS
from .parity.verify import REFERENCES
from .precisions import PRECISIONS
from .serving.limits import (DEFAULT_HOST, DEFAULT_MAX_DELAY_MS, DEFAULT_PORT, DEFAULT_QUEUE, DEFAULT_REQUEST_MB,
                             DEFAULT_WORKERS, SERVE_MAX_BATCH)
from .serving.kserve import MEMORY_HEADROOM as KSERVE_HEADROOM
from .serving.kserve import MODES as KSERVE_MODES
from .serving.kserve import RUNTIMES as KSERVE_RUNTIMES
from .serving.kserve import SCALE_METRICS as KSERVE_SCALE_METRICS
from .serving.ray_serve import DEFAULT_DOWNSCALE_DELAY_S, DEFAULT_LOOK_BACK_S, DEFAULT_UPSCALE_DELAY_S
from .serving.triton import KINDS as TRITON_KINDS
from .serving.triton import TESTED_TRITON_CONTAINER
from .serving.triton import TritonOptions
from .batch.job import DEFAULT_SHARD_SIZE
from .target.bench import DEFAULT_BATCH_SIZES, DEFAULT_WARMUP
from .target.predict import DEFAULT_TOPK
from .target.tune import DEFAULT_BUDGET_S, DEFAULT_MAX_DROP

EXPORT = ExportOptions()  # the export's defaults, shown by --help
TRITON = TritonOptions()


# What the `export` extra installs (pyproject.toml's list, as installed): a command that needs one of them is an
# export-side command.
EXPORT_MODULES = extra_modules("export")


class _Terminated(BaseException):
    """SIGTERM or SIGHUP, raised where the process is, so that it unwinds as Ctrl-C does: every staged
    file removed on the way out (what `timeout`, Docker and Kubernetes send to stop a command)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, _frame: Any) -> None:
    raise _Terminated(signum)


@contextlib.contextmanager
def _stopping_signals_unwind() -> Any:
    """SIGTERM and SIGHUP handled like SIGINT while a command runs (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Group(click.Group):
    """Turns a DeployError anywhere below into one line on stderr and its exit code; an OSError (a full
    disk, a folder without write permission) likewise; a stopping signal into exit 128+N."""

    def invoke(self, ctx: click.Context) -> Any:
        import warnings

        def show(message: Warning | str, category: type[Warning], *_args: Any, **_kwargs: Any) -> None:
            click.echo(f"warning: {message}", err=True)

        warnings.showwarning = show
        warnings.simplefilter("always", DeployWarning)
        debug = bool(ctx.obj and ctx.obj.get("debug"))
        try:
            with _stopping_signals_unwind():
                return super().invoke(ctx)
        except DeployError as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except click.UsageError as exc:  # click's own (a value not a number, a missing argument): one line too
            where = exc.ctx.command_path if exc.ctx else ctx.command_path
            click.echo(f"error: {exc.format_message()} (see '{where} --help')", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            if debug:
                raise
            where = f" ({exc.filename})" if exc.filename else ""
            click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            sys.exit(2)
        except ModuleNotFoundError as exc:
            if exc.name not in EXPORT_MODULES or debug:
                raise
            click.echo(f"error: `resnet-deploy {ctx.invoked_subcommand}` needs {exc.name}, which is not installed "
                       "here (a target install has no PyTorch): pip install 'resnet-deploy[export]'", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except _Terminated as exc:
            click.echo(f"stopped by {signal.Signals(exc.signum).name}", err=True)
            sys.exit(128 + exc.signum)


def _output_file(option: str, path: str | None) -> None:
    """A one-line error, before any work, where ``path`` (an output file) cannot be written: its folder
    is missing or not a folder (found out after the whole run before), or it is a FIFO, a device or a folder."""
    if path is None:
        return
    from pathlib import Path

    from .fileio import special_file

    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise DeployError(f"{option} {path}: the folder {folder} does not exist")
    kind = special_file(path)
    if kind is not None:  # renamed over, a FIFO or /dev/null (as root) would be replaced
        raise DeployError(f"{option} {path} is {kind}, not a regular file: it is not written over")


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _emit(result: Any, as_json: bool) -> None:
    """A command's result on stdout: its JSON (``--json``), else its text; every result renders itself."""
    if as_json:
        _print_json(result.to_dict())
    else:
        click.echo(result.to_text())


def _say(line: str) -> None:
    """A line for the user, not for a pipeline: stderr."""
    click.echo(line, err=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="resnet-deploy")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Ship ResNet-family models from PyTorch to ONNX Runtime and TensorRT, with proof of parity."""
    ctx.obj = {"debug": debug}


@main.command("list")
@click.option("--weights", "show_weights", is_flag=True, help="The published checkpoints export can fetch by tag.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_command(show_weights: bool, as_json: bool) -> None:
    """The architecture table: params, GMACs at the default input, family (or, with --weights, published tags)."""
    from .models.archs import model_table
    from .models.pretrained import weights_table

    _emit(weights_table() if show_weights else model_table(), as_json)


def _precision_flags(func: Any) -> Any:
    """``--fp16``, ``--int8``...: one flag per precision row that has one (resnet_deploy.precisions)."""
    for row in reversed(PRECISIONS.values()):
        if row.flag_help:
            func = click.option(f"--{row.name}", row.name, is_flag=True, help=row.flag_help)(func)
    return func


def _engine_options(func: Any) -> Any:
    """TensorRT build options shared by `export` and `build`."""
    options = [
        click.option("--workspace", type=float, default=DEFAULT_WORKSPACE_GIB, show_default=True,
                     help="Builder workspace limit, GiB."),
        click.option("--timing-cache", type=click.Path(dir_okay=False),
                     help="Timing cache file, read and updated, reused across builds."),
        click.option("--dla-core", type=int, help="Build for this DLA core (Jetson), with GPU fallback."),
        click.option("--version-compatible", is_flag=True, help="Engine runs on later TensorRT versions too."),
        click.option("--hardware-compat", type=click.Choice(list(HARDWARE_COMPAT)), default=BuildOptions().hardware_compat,
                     show_default=True, help="Engine runs on other GPU architectures too."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _build_options(workspace: float, timing_cache: str | None, dla_core: int | None, version_compatible: bool,
                   hardware_compat: str) -> Any:
    from pathlib import Path

    from .export import BuildOptions

    options = BuildOptions(workspace_gib=workspace, timing_cache=Path(timing_cache) if timing_cache else None,
                           dla_core=dla_core, version_compatible=version_compatible, hardware_compat=hardware_compat)
    options.check()
    return options


def _floats3(option: str) -> Any:
    """A click callback for ``R,G,B`` values."""
    def parse(_ctx: click.Context, _param: click.Parameter, text: str | None) -> tuple[float, ...] | None:
        if text is None:
            return None
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != 3:
            raise DeployError(f"invalid {option} {text!r}: expected three numbers R,G,B, e.g. 0.5,0.5,0.5")
        return values
    return parse


@main.command("export")
@click.option("--arch", required=True, help="Architecture name (see `resnet-deploy list`).")
@click.option("--weights", help="Checkpoint (.pt/.pth/.safetensors) or a published tag such as torchvision:IMAGENET1K_V2 "
                                "(`list --weights`); default random init.")
@click.option("--num-classes", type=int, help="Classifier size; 0 exports the pooled-feature backbone.")
@click.option("--input-size", "--crop", "input_size", help="N or HxW: the centre crop the model takes (default: the arch's, e.g. 224).")
@click.option("--preprocess", "preset", type=click.Choice(list(PREPROCESS_PRESETS)),
              help="A named normalisation the weights were trained with (default: the arch's).")
@click.option("--mean", callback=_floats3("--mean"), help="Normalisation mean R,G,B of [0, 1] pixels (overrides --preprocess).")
@click.option("--std", callback=_floats3("--std"), help="Normalisation std R,G,B (overrides --preprocess).")
@click.option("--resize", type=int, help="Shorter side before the centre crop (default: crop / 0.875, or the arch's).")
@click.option("--interpolation", type=click.Choice(list(INTERPOLATIONS)), help="Resize filter (default: the arch's).")
@click.option("--embed-preprocess", is_flag=True,
              help="Input uint8 NHWC pixels [N, H, W, 3] (resized and cropped): the graph scales, normalises and "
                   "transposes them, so clients send 4x fewer bytes and cannot get mean/std wrong.")
@click.option("--batch", default=EXPORT.batch, show_default=True, help="Batch profile MIN:OPT:MAX.")
@click.option("--dynamic-hw", is_flag=True, help="Make height and width symbolic too.")
@click.option("--opset", type=int, default=EXPORT.opset, show_default=True)
@click.option("--exporter", type=click.Choice(EXPORTERS), default=EXPORT.exporter, show_default=True)
@click.option("--no-simplify", is_flag=True, help="Skip onnxsim (BatchNorm is still folded).")
@click.option("--features-only", is_flag=True, help="Export the four stage maps (layer1..layer4).")
@click.option("--last-stride", type=click.Choice([str(s) for s in LAST_STRIDES]), default=str(EXPORT.last_stride),
              show_default=True,
              help="Stride of layer4 (1 for re-identification backbones).")
@_precision_flags
@click.option("--calib-data", help="INT8 calibration: a folder of images, a preprocessed .npy, or 'random'.")
@click.option("--calib-size", type=int, default=EXPORT.calib_size, show_default=True, help="Calibration images to use.")
@click.option("--calib-method", type=click.Choice(list(CALIBRATION_METHODS)), default=EXPORT.calib_method,
              show_default=True)
@click.option("--int8-target", type=click.Choice(list(INT8_TARGETS)), default=EXPORT.int8_target, show_default=True,
              help="; ".join(f"{name}: {target.description}" for name, target in INT8_TARGETS.items()) + ".")
@click.option("--reduce-range/--no-reduce-range", default=None,
              help="cpu target: 7-bit weights, so x86 kernels without VNNI do not saturate (default: on where this "
                   "CPU lacks VNNI).")
@click.option("--max-drop", type=float,
              help="INT8: leave the most sensitive blocks in float until top-1 drops by at most this many points.")
@click.option("--eval-data", type=click.Path(file_okay=False),
              help="--max-drop: labelled images (one folder per class) to measure top-1 on (default: the calibration "
                   "hold-out, against fp32's classes).")
@click.option("--seed", type=int, default=EXPORT.seed, show_default=True, help="Seed of random init and of parity inputs.")
@click.option("--out", default=EXPORT.out, show_default=True, help="Output folder.")
@click.option("--name", help="Artifact stem (default: the arch name).")
@click.option("--engine/--no-engine", default=None,
              help="Demand a TensorRT engine (error where it cannot be built) or skip it; default: build where possible.")
@_engine_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def export_command(arch: str, weights: str | None, num_classes: int | None, input_size: str | None, batch: str,
                   dynamic_hw: bool, opset: int, exporter: str, no_simplify: bool, features_only: bool,
                   last_stride: str, calib_data: str | None, calib_size: int,
                   calib_method: str, int8_target: str, reduce_range: bool | None, max_drop: float | None,
                   eval_data: str | None, preset: str | None,
                   mean: tuple[float, ...] | None, std: tuple[float, ...] | None, resize: int | None,
                   interpolation: str | None, embed_preprocess: bool, engine: bool | None, workspace: float,
                   timing_cache: str | None, dla_core: int | None, version_compatible: bool, hardware_compat: str,
                   seed: int, out: str, name: str | None, as_json: bool, quiet: bool, **precision_flags: bool) -> None:
    """Export an arch to ONNX (dynamic batch), simplify, check, and gate on parity with PyTorch."""
    from .export import export

    result = export(
        arch, weights=weights, num_classes=num_classes, input_size=input_size, batch=batch, dynamic_hw=dynamic_hw,
        opset=opset, exporter=exporter, simplify=not no_simplify, out=out, name=name, seed=seed,
        features_only=features_only, last_stride=int(last_stride),
        precisions=tuple(name for name, given in precision_flags.items() if given), calib_data=calib_data,
        calib_size=calib_size, calib_method=calib_method, int8_target=int8_target, reduce_range=reduce_range,
        max_drop=max_drop, eval_data=eval_data,
        preprocess={"preset": preset, "mean": mean, "std": std, "resize": resize, "interpolation": interpolation},
        embed_preprocess=embed_preprocess, engine=engine,
        build_options=_build_options(workspace, timing_cache, dla_core, version_compatible, hardware_compat),
        quiet=quiet,
    )
    if as_json:
        _print_json(result.to_dict())
    elif not quiet:
        _say(result.to_text())


@main.command("build")
@click.argument("onnx_file", type=click.Path(dir_okay=False))
@_engine_options
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def build_command(onnx_file: str, workspace: float, timing_cache: str | None, dla_core: int | None,
                  version_compatible: bool, hardware_compat: str, quiet: bool) -> None:
    """Build a TensorRT engine (STEM.engine) from an exported ONNX artifact, strongly typed, and gate it."""
    from .export import build

    options = _build_options(workspace, timing_cache, dla_core, version_compatible, hardware_compat)
    path = build(onnx_file, options=options, quiet=quiet)
    if not quiet:
        click.echo(f"engine {path}", err=True)


@main.command("inspect")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect_command(path: str, as_json: bool) -> None:
    """Inputs, outputs, opset, op histogram, parameters and precision of an ONNX file."""
    from .onnxgraph import inspect_file

    _emit(inspect_file(path), as_json)


@main.command("verify")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--batch-sizes", help="Comma-separated batch sizes within the profile (default MIN,OPT).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--inputs", "inputs_file", type=click.Path(dir_okay=False), help="A preprocessed NCHW float32 .npy batch.")
@click.option("--images", type=click.Path(file_okay=False), help="A folder of images, preprocessed as the manifest says.")
@click.option("--data", type=click.Path(file_okay=False), help="Labelled images, one sub-folder per class: adds accuracy.")
@click.option("--max-error", type=float, help="Largest |error| allowed, as a fraction of the output scale.")
@click.option("--min-cosine", type=float, help="Smallest cosine similarity allowed per sample.")
@click.option("--min-top1", type=float, help="Smallest top-1 agreement allowed (0-1).")
@click.option("--layerwise", is_flag=True, help="Compare every block and name the first where outputs part.")
@click.option("--reference", type=click.Choice(REFERENCES), default="auto", show_default=True,
              help="torch: the PyTorch model rebuilt from the manifest; golden: the outputs stored at export "
                   "(STEM.golden.npz, no PyTorch needed); auto: torch where installed.")
@click.option("--strict", is_flag=True, help="Fail when the artifact's bytes differ from the manifest's record.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write every figure to this JSON file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def verify_command(artifact: str, batch_sizes: str | None, seed: int, inputs_file: str | None, images: str | None,
                   data: str | None, max_error: float | None,
                   min_cosine: float | None, min_top1: float | None, layerwise: bool, reference: str, strict: bool,
                   report_path: str | None, as_json: bool) -> None:
    """Compare PyTorch, ONNX Runtime and TensorRT outputs for an artifact; exit 1 when they disagree."""
    from .parity.verify import verify

    _output_file("--report", report_path)
    sizes = _int_list(batch_sizes, "--batch-sizes") if batch_sizes else None
    overrides = {k: v for k, v in (("max_rel_to_scale", max_error), ("min_cosine", min_cosine), ("min_top1", min_top1))
                 if v is not None}
    report = verify(artifact, batch_sizes=sizes, seed=seed, inputs=inputs_file, images=images, data=data,
                    tolerance_overrides=overrides, layerwise=layerwise, reference=reference, strict=strict)
    if report_path:
        report.write(report_path)
    _emit(report, as_json)
    sys.exit(0 if report.passed else 1)


def _runtime_options(func: Any) -> Any:
    """Options shared by predict and bench: how an artifact is loaded."""
    for option in reversed([
        click.option("--device", help="cpu, cuda or cuda:N (default: the GPU when the backend can use one)."),
        click.option("--threads", type=int, help="CPU threads (default: physical cores)."),
    ]):
        func = option(func)
    return func


def _ray_serve_options(func: Any) -> Any:
    """serve's Ray Serve form: where, how many replicas (fixed, or autoscaling) and how wide each is."""
    for option in reversed([
        click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
                     help="Serve on Ray Serve: a local Ray, or the cluster at ADDRESS (auto, ray://host:10001)."),
        click.option("--replicas", type=int, help="Ray: a fixed number of replicas (default 1)."),
        click.option("--min-replicas", type=int, help="Ray: autoscale from this many replicas (default 1)."),
        click.option("--max-replicas", type=int, help="Ray: autoscale up to this many replicas."),
        click.option("--target-ongoing", type=float,
                     help="Ray: requests in flight per replica the autoscaler aims at (default: the max batch)."),
        click.option("--replica-cpus", type=float, help="Ray: CPUs each replica reserves, its runner's threads "
                                                        "(default 1)."),
        click.option("--upscale-delay-s", type=float, help="Ray: seconds over target before a replica is added "
                                                           f"(default {DEFAULT_UPSCALE_DELAY_S:g})."),
        click.option("--downscale-delay-s", type=float, help="Ray: seconds under target before one is removed "
                                                             f"(default {DEFAULT_DOWNSCALE_DELAY_S:g})."),
        click.option("--look-back-s", type=float, help="Ray: seconds the requests in flight are averaged over "
                                                       f"(default {DEFAULT_LOOK_BACK_S:g})."),
    ]):
        func = option(func)
    return func


def _backend_flags(func: Any) -> Any:
    """Each backend's own options as flags (from its row's options type): ``--cuda-graphs``, ``--torch-fp16``..."""
    for backend in reversed(BACKENDS.values()):
        for flag, field_name, help_text in reversed(cli_flags(backend.options)):
            func = click.option(flag, f"{backend.name}__{field_name}", is_flag=True, help=help_text)(func)
    return func


def _own_options(flags: dict[str, bool]) -> dict[str, dict[str, bool]]:
    """``{"trt__cuda_graphs": True, ...}`` from :func:`_backend_flags` -> ``{"trt": {"cuda_graphs": True}}``
    (the flags given only)."""
    own: dict[str, dict[str, bool]] = {}
    for key, value in flags.items():
        if value:
            backend, _, field_name = key.partition("__")
            own.setdefault(backend, {})[field_name] = value
    return own


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise DeployError(f"invalid {option} {text!r}: expected positive integers, e.g. 1,8,32")
    return values


@main.command("predict")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--topk", type=int, default=DEFAULT_TOPK, show_default=True, help="Classes to show per image.")
@click.option("--labels", type=click.Path(dir_okay=False), help="Class names, one per line (default: ImageNet's for 1000 classes).")
@click.option("--backend", type=click.Choice(backend_choices()), default="auto", show_default=True)
@_runtime_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def predict_command(artifact: str, images: tuple[str, ...], topk: int, labels: str | None, backend: str,
                    device: str | None, threads: int | None, as_json: bool) -> None:
    """Top-k classes of IMAGES (files or folders) with probabilities."""
    from .target.predict import classify

    _emit(classify(artifact, images, topk=topk, labels=labels, backend=backend, device=device, threads=threads,
                   announce=_say), as_json)


@main.command("batch")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="Folder of Parquet shards and _run.json (created if missing).")
@click.option("--topk", type=int, default=DEFAULT_TOPK, show_default=True, help="Classes kept per image.")
@click.option("--labels", type=click.Path(dir_okay=False), help="Class names, one per line (default: ImageNet's for 1000 classes).")
@click.option("--keep-logits", is_flag=True, help="A logits column beside the top classes.")
@click.option("--backend", type=click.Choice(backend_choices()), default="auto", show_default=True)
@click.option("--device", help="cpu, cuda or cuda:N (default: the GPU when the backend can use one).")
@click.option("--threads", type=int, help="CPU threads per lane (default 1: a lane per core, decoding overlapped).")
@click.option("--batch-size", type=int, help="Images per call (default: 16, within the artifact's profile).")
@click.option("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, show_default=True, help="Rows per Parquet shard.")
@click.option("--resume", is_flag=True, help="Continue the run in --output: finished shards kept.")
@click.option("--check", type=int, default=0, show_default=True,
              help="Re-run this many images through the plain runner afterwards and compare (exit 1 outside tolerance).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              help="Run on Ray Data: a local Ray, or the cluster at ADDRESS (auto, ray://host:10001).")
@click.option("--actors", type=int, help="Ray: actors that decode and run (default: one per CPU of the cluster).")
@click.option("--actor-cpus", type=float, help="Ray: CPUs each actor reserves, a lane per whole CPU (default: a share "
                                               "of what reading leaves).")
@click.option("--json", "as_json", is_flag=True, help="The run record on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def batch_command(artifact: str, inputs: tuple[str, ...], output: str, topk: int, labels: str | None,
                  keep_logits: bool, backend: str, device: str | None, threads: int | None, batch_size: int | None,
                  shard_size: int, resume: bool, check: int, ray_address: str | None, actors: int | None,
                  actor_cpus: float | None, as_json: bool, quiet: bool) -> None:
    """Classify INPUTS (folders, globs, text files of paths, s3:// gs:// file:// URIs) into Parquet shards."""
    from .batch.job import BatchOptions, RayOptions, run_batch

    if ray_address is None and (actors is not None or actor_cpus is not None):
        raise DeployError("--actors and --actor-cpus size the Ray form: give --ray too")
    ray = None if ray_address is None else RayOptions(None if ray_address == "local" else ray_address, actors,
                                                      actor_cpus)
    options = BatchOptions(topk=topk, labels=labels, keep_logits=keep_logits, backend=backend, device=device,
                           threads=threads, batch_size=batch_size, shard_size=shard_size, resume=resume,
                           check=check, ray=ray)
    report = run_batch(artifact, inputs, output, options, progress=None if quiet else _progress_line())
    _emit(report, as_json)
    sys.exit(0 if report.passed else 1)


def _progress_line() -> Any:
    """A progress callback rewriting one stderr line at most twice a second."""
    import time

    last = [0.0]

    def show(progress: Any) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5 or progress.done == progress.total:
            last[0] = now
            end = "\n" if progress.done == progress.total else ""
            click.echo(f"\r{progress.to_text()}  ", err=True, nl=False)
            if end:
                click.echo("", err=True)

    return show


@main.command("bench")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--backend", "backends", default="auto", show_default=True,
              help="Comma-separated: auto (the file's own runtime), " + ", ".join(
                  f"{b.name} ({b.title})" for b in BACKENDS.values()) + ".")
@click.option("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)), show_default=True,
              help="Comma-separated, within the profile.")
@click.option("--iters", type=int, help="Timed calls per case (default: --duration).")
@click.option("--duration", type=float, help="Seconds of timed calls per case (default 3).")
@click.option("--warmup", type=int, default=DEFAULT_WARMUP, show_default=True, help="Untimed calls per case first.")
@_runtime_options
@_backend_flags
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Draw latency and throughput vs batch size (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def bench_command(artifacts: tuple[str, ...], backends: str, batch_sizes: str, iters: int | None,
                  duration: float | None, warmup: int, device: str | None, threads: int | None,
                  plot_path: str | None, as_json: bool, quiet: bool, **backend_flags: bool) -> None:
    """Latency (min/mean/p50/p90/p99) and images/s of artifacts and backends side by side."""
    from .target.bench import bench_artifacts, plot, stderr_progress

    _output_file("--plot", plot_path)
    report = bench_artifacts(artifacts, [b.strip() for b in backends.split(",") if b.strip()],
                             _int_list(batch_sizes, "--batch-sizes"), iterations=iters, duration=duration,
                             warmup=warmup, device=device, threads=threads, own=_own_options(backend_flags),
                             progress=None if quiet else stderr_progress, announce=None if quiet else _say)
    if not quiet:
        click.echo("", err=True)
    if plot_path:
        plot(report.results, plot_path)
    _emit(report, as_json)


@main.command("tune")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(file_okay=False),
              help="Labelled images (one folder per class): top-1 drop is judged on them (default: the calibration "
                   "hold-out's changed classes, where the export has one).")
@click.option("--max-drop", type=float, default=DEFAULT_MAX_DROP, show_default=True,
              help="Largest top-1 drop allowed, in points.")
@click.option("--batch-sizes", help="Comma-separated batch sizes to time (default 1,8 within the profile).")
@click.option("--latency/--throughput", "latency", default=True, show_default=True,
              help="Pick by p50 at the smallest batch, or by the best images/s.")
@click.option("--budget-s", type=float, default=DEFAULT_BUDGET_S, show_default=True,
              help="Seconds the whole run should take.")
@click.option("--duration", type=float, help="Seconds of timed calls per configuration and batch size (default: "
                                             "what --budget-s leaves after verification, 0.3 to 3).")
@click.option("--threads", "thread_counts", help="Comma-separated CPU thread counts to try (default: physical "
                                                  "cores, and logical ones where more).")
@click.option("--reference", type=click.Choice(REFERENCES), default="auto", show_default=True,
              help="What candidates are verified against (as verify's --reference).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--no-write", is_flag=True, help="Do not write STEM.deploy.json.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Draw latency vs accuracy (PNG).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")
def tune_command(artifact: str, data: str | None, max_drop: float, batch_sizes: str | None, latency: bool,
                 budget_s: float, duration: float | None, thread_counts: str | None, reference: str, seed: int,
                 no_write: bool,
                 plot_path: str | None, as_json: bool, quiet: bool) -> None:
    """Try every file x backend x setting of ARTIFACT's export that runs here, verify each, time them side by
    side, and write the fastest that passed to STEM.deploy.json (what --backend auto runs)."""
    from .target.bench import stderr_progress
    from .target.tune import plot, tune

    _output_file("--plot", plot_path)
    report = tune(artifact, data=data, max_drop=max_drop,
                  batch_sizes=_int_list(batch_sizes, "--batch-sizes") if batch_sizes else None,
                  objective="latency" if latency else "throughput", budget_s=budget_s, duration=duration,
                  threads=_int_list(thread_counts, "--threads") if thread_counts else None, reference=reference,
                  seed=seed, write=not no_write, progress=None if quiet else stderr_progress)
    if not quiet:
        click.echo("", err=True)
    if plot_path:
        plot(report, plot_path)
    _emit(report, as_json)
    if report.choice is None:
        raise ParityError(f"nothing to deploy: {report.why}")


@main.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor_command(as_json: bool) -> None:
    """What this machine can run (torch, CUDA, ONNX Runtime providers, TensorRT) and why not."""
    from .backends.doctor import doctor

    _emit(doctor(), as_json)


@main.command("triton")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--repo", required=True, type=click.Path(file_okay=False), help="Model repository folder (created or updated).")
@click.option("--model-name", help="Default: the artifact's stem, e.g. resnet50.")
@click.option("--max-batch", type=int, help="max_batch_size (default: the profile's MAX).")
@click.option("--preferred", help="Preferred batch sizes of the dynamic batcher, e.g. 8,16.")
@click.option("--queue-delay-us", type=int, default=TRITON.queue_delay_us, show_default=True,
              help="Dynamic batcher's max queue delay.")
@click.option("--instances", type=int, default=TRITON.instances, show_default=True, help="Model instances per device.")
@click.option("--kind", type=click.Choice(TRITON_KINDS), default=TRITON.kind, show_default=True)
@click.option("--version", "model_version", type=int,
              help="Model version (default: the one holding this artifact, else the next free one).")
@click.option("--backend", type=click.Choice(("auto", *(b.name for b in BACKENDS.values() if b.runs != "model"))),
              default=TRITON.backend, show_default=True,
              help="Triton backend serving it: auto (the file's own: onnxruntime, tensorrt), or openvino for ONNX.")
@click.option("--ensemble", is_flag=True,
              help="Also NAME_preprocess (encoded images in, the export's preprocessing, Triton's python backend) "
                   "and NAME_ensemble chaining it to NAME: clients send JPEG/PNG bytes.")
@click.option("--threads", type=int, help="CPU threads the CPU instances share (default: this machine's physical "
                                           "cores; set it to the CPUs a pod gets).")
@click.option("--force", is_flag=True, help="Replace a model of another export, or one resnet-deploy did not write.")
def triton_command(artifact: str, repo: str, model_name: str | None, max_batch: int | None, preferred: str | None,
                   queue_delay_us: int, instances: int, kind: str, model_version: int | None, backend: str,
                   ensemble: bool, threads: int | None, force: bool) -> None:
    """Write ARTIFACT into a Triton Inference Server model repository, destroying nothing there."""
    from .serving.triton import TritonOptions, write_model_repository

    options = TritonOptions(model_name=model_name, max_batch=max_batch,
                            preferred=tuple(_int_list(preferred, "--preferred")) if preferred else (),
                            queue_delay_us=queue_delay_us, instances=instances, kind=kind, version=model_version,
                            backend=backend, ensemble=ensemble, threads=threads)
    written = write_model_repository(artifact, repo, options, force=force)
    if written.selection:
        _say(written.selection)
    click.echo(written.to_text())


@main.command("kserve")
@click.argument("source", type=click.Path())
@click.option("--name", required=True, help="The InferenceService's name (lowercase letters, digits, '-').")
@click.option("--storage-uri", required=True,
              help="Where KServe fetches the model: the repository root (triton), or the artifact's folder (serve).")
@click.option("--runtime", type=click.Choice(KSERVE_RUNTIMES), default="triton", show_default=True,
              help="triton: SOURCE is a Triton repository (kserve-tritonserver); serve: SOURCE is an artifact run by "
                   "`resnet-deploy serve` from --image.")
@click.option("--namespace", default="default", show_default=True)
@click.option("--gpus", type=int, default=0, show_default=True, help="nvidia.com/gpu per replica.")
@click.option("--cpus", type=float, help="CPUs per replica (default: the threads the models compute with).")
@click.option("--memory", help=f"Memory per replica, e.g. 4Gi (default: {KSERVE_HEADROOM:g} x the models' measured "
                               "peak).")
@click.option("--min-replicas", type=int, help="Fewest replicas (0: scale to zero, Knative mode).")
@click.option("--max-replicas", type=int, help="Most replicas.")
@click.option("--scale-metric", type=click.Choice(KSERVE_SCALE_METRICS),
              help="What the autoscaler watches: concurrency or rps (Knative), cpu (an HPA).")
@click.option("--scale-target", type=int, help="Its target per replica (cpu: percent of the CPUs requested).")
@click.option("--canary", type=int, help="Percent of traffic to this revision, the rest to the last ready one.")
@click.option("--runtime-version", help=f"The tritonserver image tag (default: {TESTED_TRITON_CONTAINER}, the release "
                                        "the repositories are tested with).")
@click.option("--mode", type=click.Choice(KSERVE_MODES), default="knative", show_default=True,
              help="KServe's deployment mode: knative (Serverless) or standard (a plain Deployment).")
@click.option("--image", help="The serving image: serve's (required), or Triton's where a model needs Pillow.")
@click.option("--model-name", help="serve: the model's name in the URLs (default: the artifact's stem).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write NAME.yaml into.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def kserve_command(source: str, out: str, as_json: bool, **options: Any) -> None:
    """Write a KServe InferenceService (and ServingRuntime) for SOURCE, checked before it reaches a cluster."""
    from .serving.kserve import KServeOptions, write_kserve

    _emit(write_kserve(source, out, KServeOptions(**options)), as_json)


@main.command("serve")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--model-name", help="Default: the artifact's stem.")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to bind (0.0.0.0 exposes it).")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True)
@click.option("--grpc-port", type=int, help="Also serve the protocol over gRPC on this port (Triton's is 8001); "
              "needs the grpc extra.")
@click.option("--max-batch", type=int,
              help=f"Largest batch the dynamic batcher forms (default: min(profile MAX, {SERVE_MAX_BATCH})).")
@click.option("--max-delay-ms", type=float, default=DEFAULT_MAX_DELAY_MS, show_default=True,
              help="How long a batch waits to fill.")
@click.option("--queue", "queue_size", type=int, default=DEFAULT_QUEUE, show_default=True,
              help="Queued requests before 503.")
@click.option("--workers", type=int, default=DEFAULT_WORKERS, show_default=True, help="Runner calls in flight at once.")
@click.option("--max-request-mb", type=float, default=DEFAULT_REQUEST_MB, show_default=True, help="Largest request body.")
@click.option("--backend", type=click.Choice(backend_choices()), default="auto", show_default=True)
@_runtime_options
@_ray_serve_options
def serve_command(artifact: str, model_name: str | None, host: str, port: int, grpc_port: int | None,
                  max_batch: int | None,
                  max_delay_ms: float, queue_size: int, workers: int, max_request_mb: float, backend: str,
                  device: str | None, threads: int | None, ray_address: str | None, **ray_options: Any) -> None:
    """Serve ARTIFACT over the Open Inference Protocol (KServe v2 REST, and gRPC), with dynamic batching;
    with --ray, as a Ray Serve deployment of replicas."""
    from .serving.limits import ServeLimits
    from .serving.ray_serve import RayServeOptions, serve_on_ray
    from .serving.server import serve

    given = {key: value for key, value in ray_options.items() if value is not None}
    limits = ServeLimits(max_batch=max_batch, max_delay_ms=max_delay_ms, queue_size=queue_size, workers=workers,
                         max_request_mb=max_request_mb)
    if ray_address is None:
        if given:
            raise DeployError(f"--{next(iter(given)).replace('_', '-')} sizes the Ray Serve deployment: give --ray too")
        serve(artifact, host=host, port=port, grpc_port=grpc_port, model_name=model_name, limits=limits,
              backend=backend, device=device, threads=threads, announce=_say)
        return
    if grpc_port is not None:
        raise DeployError("--grpc-port is not served on Ray Serve (its proxy routes HTTP): leave it out with --ray")
    if threads is not None:
        raise DeployError("--threads is each replica's CPUs on Ray Serve: give --replica-cpus instead")
    serve_on_ray(artifact, RayServeOptions(None if ray_address == "local" else ray_address, **given), host=host,
                 port=port, model_name=model_name, limits=limits, backend=backend, device=device, announce=_say)


if __name__ == "__main__":  # pragma: no cover
    main()
