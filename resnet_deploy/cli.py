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
from .target.bench import DEFAULT_BATCH_SIZES, DEFAULT_WARMUP
from .data import INTERPOLATIONS, PREPROCESS_PRESETS
from .errors import DeployError, DeployWarning, ParityError
from .export.engine import DEFAULT_WORKSPACE_GIB, HARDWARE_COMPAT, BuildOptions
from .export.options import EXPORTERS, LAST_STRIDES, ExportOptions
from .export.quantize import CALIBRATION_METHODS, INT8_TARGETS
from .parity.compare import REFERENCE
from .parity.verify import REFERENCES
from .precisions import PRECISIONS
from .target.predict import DEFAULT_TOPK
from .serving.limits import (DEFAULT_HOST, DEFAULT_MAX_DELAY_MS, DEFAULT_PORT, DEFAULT_QUEUE, DEFAULT_REQUEST_MB,
                             DEFAULT_WORKERS, SERVE_MAX_BATCH)
from .serving.triton import KINDS as TRITON_KINDS
from .serving.triton import TritonOptions

EXPORT = ExportOptions()  # the export's defaults, shown by --help
TRITON = TritonOptions()


# What the `export` extra installs: a command that needs one of them is an export-side command.
EXPORT_MODULES = {"torch", "onnxscript", "onnxsim", "safetensors"}


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


def _table(rows: list[list[str]], headers: list[str], right: set[int] = frozenset()) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


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
    from .models import get_model_info, list_models

    if show_weights:
        from .models.pretrained import published_for

        entries = [w for name in list_models() for w in published_for(name)]
        if as_json:
            _print_json([{"arch": w.arch, "tag": w.tag, "url": w.url, "top1": w.top1, "preprocess": w.preprocess}
                         for w in entries])
            return
        rows = [[w.arch, w.tag, "-" if w.top1 is None else f"{w.top1:.3f}", str(w.preprocess["resize"]),
                 w.preprocess["interpolation"], w.url] for w in entries]
        click.echo(_table(rows, ["arch", "--weights", "top-1 (published)", "resize", "interpolation", "url"],
                          right={2, 3}))
        return

    infos = [get_model_info(name) for name in list_models()]
    if as_json:
        _print_json([info.to_dict() for info in infos])
        return
    rows = [
        [i.name, f"{i.params:,}", f"{i.gmacs:.2f}", f"{i.input_size[1]}x{i.input_size[2]}", str(i.num_classes),
         i.family, i.compat]
        for i in infos
    ]
    click.echo(_table(rows, ["arch", "params", "GMACs", "input", "classes", "family", "weights from"], right={1, 2, 4}))


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
        manifest = result.manifest
        for entry in manifest.artifacts:
            _echo_gate(manifest, entry.precision, f"{result.paths[entry.precision]} ({entry.bytes / 1e6:.1f} MB)")
        for name in manifest.precision_options:  # precisions without a file: where their gate ran, if it did
            row = PRECISIONS.get(name)
            if row is not None and row.runs_file:
                computed = f"{result.paths[row.runs_file]} computed in {name}"
                options = manifest.options(name)
                if options.verified:
                    _echo_gate(manifest, name, computed)
                else:
                    click.echo(f"{name}: {computed}: not verified here: {options.reason}", err=True)
        click.echo(f"manifest {result.manifest_path}; done in {result.seconds:.1f} s", err=True)


def _echo_gate(manifest: Any, precision: str, what: str) -> None:
    """One export summary line: how the ``precision`` gate's runner matched PyTorch (and its kernels' line)."""
    rows = [p for p in manifest.parity if p["artifact"] == precision and p["judged"] and p["reference"] == REFERENCE]
    click.echo(f"{precision}: {what}, matches PyTorch on {rows[0]['backend']}: max |error| "
               f"{max(p['rel_to_scale'] for p in rows):.1e} of output scale, cosine {min(p['cosine'] for p in rows):.6f}",
               err=True)
    kernels = [p for p in manifest.parity if p["artifact"] == precision and p["reference"] != REFERENCE]
    if kernels:
        click.echo(f"      {kernels[0]['backend']} kernels vs {kernels[0]['reference']}: cosine "
                   f"{min(p['cosine'] for p in kernels):.6f} ({'judged' if kernels[0]['judged'] else 'reported'})",
                   err=True)


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

    info = inspect_file(path)
    if as_json:
        _print_json(info)
        return

    def io_line(v: dict[str, Any]) -> str:
        return f"  {v['name']}: {v['dtype']} [{', '.join(map(str, v['shape']))}]"

    lines = [
        f"file:       {info['file']} ({info['bytes'] / 1e6:.1f} MB)",
        f"producer:   {info['producer']} (IR {info['ir_version']})",
        f"opset:      {', '.join(f'{d} {v}' for d, v in info['opset'].items())}",
        "inputs:", *map(io_line, info["inputs"]),
        "outputs:", *map(io_line, info["outputs"]),
        f"parameters: {info['parameters']:,}",
        f"precision:  {'FP16 tensors' if info['fp16_tensors'] else 'no FP16 tensors'}, "
        f"{info['qdq_nodes']} Q/DQ nodes",
        f"nodes:      {info['nodes']} ({', '.join(f'{op} {n}' for op, n in info['ops'].items())})",
    ]
    click.echo("\n".join(lines))


def _format_report(report: Any) -> str:
    rows = []
    for row in report.rows:
        f = row.figures
        top1 = "-" if f["top1_agreement"] is None else f"{f['top1_agreement']:.1%}"
        top5 = "-" if f["top5_overlap"] is None else f"{f['top5_overlap']:.1%}"
        result = ("PASS" if row.passed else "FAIL") if row.judged else "reported"
        rows.append([row.backend, row.reference, row.inputs, str(row.batch), row.output, f"{f['max_abs']:.2e}",
                     f"{f['rel_to_scale']:.2e}", f"{f['cosine']:.6f}", top1, top5, result])
    lines = [
        f"{report.artifact} ({report.precision}) vs {report.reference} [{report.arch}], inputs: "
        + ", ".join(f"{k}={v}" for k, v in report.inputs.items()),
    ]
    if report.file_changed:
        lines.append(f"FILE CHANGED SINCE EXPORT: {report.file_changed}"
                     + ("; --strict: that alone fails" if report.strict else "; compared anyway (--strict fails it)"))
    lines += [
        "",
        _table(rows, ["backend", "vs", "inputs", "batch", "output", "max|err|", "err/scale", "cosine", "top-1",
                      "top-5", "result"], right={3, 5, 6, 7, 8, 9}),
    ]
    for row in report.rows:
        if row.failures:
            lines.append(f"{'FAIL' if row.judged else 'reported'} {row.backend} vs {row.reference} on {row.inputs} "
                         f"batch {row.batch} {row.output}: {'; '.join(row.failures)}")
    for skip in report.skipped:
        lines.append(f"skipped {skip['backend']}: {skip['reason']}")
    for note in report.notes:
        lines.append(f"note: {note}")
    for backend, scores in report.accuracy.items():
        lines.append(f"accuracy {backend}: top-1 {scores['top1']:.2%}, top-5 {scores['top5']:.2%}")
    if report.layerwise is not None:
        lw = report.layerwise
        lines += ["", f"layer-wise ({lw.backend}, batch {lw.batch}, tolerance {lw.tolerance:.0e} of each point's scale):"]
        point_rows = [[p.name, f"{p.max_abs:.2e}", f"{p.rel_to_scale:.2e}", f"{p.cosine:.6f}",
                       "<- first over tolerance" if p.name == lw.first_over_tolerance else ""] for p in lw.points]
        lines.append(_table(point_rows, ["point", "max|err|", "err/scale", "cosine", ""], right={1, 2, 3}))
        if lw.first_over_tolerance:
            lines.append(f"outputs part at {lw.first_over_tolerance} (largest jump in error: {lw.largest_jump})")
        else:
            lines.append("every block within tolerance")
    lines.append(f"overall: {'PASS' if report.passed else 'FAIL'}")
    return "\n".join(lines)


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
    if as_json:
        _print_json(report.to_dict())
    else:
        click.echo(_format_report(report))
    sys.exit(0 if report.passed else 1)


def _runtime_options(func: Any) -> Any:
    """Options shared by predict and bench: how an artifact is loaded."""
    for option in reversed([
        click.option("--device", help="cpu, cuda or cuda:N (default: the GPU when the backend can use one)."),
        click.option("--threads", type=int, help="CPU threads (default: physical cores)."),
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


def _say_selection(runner: Any) -> None:
    """How --backend auto chose the runner's configuration (tune's plan, or the file's own and a hint)."""
    if runner.selection:
        click.echo(runner.selection, err=True)


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
    from .data import ImagePreprocess
    from .target.predict import class_names, predict
    from .target.runtime import load

    with load(artifact, backend=backend, device=device, threads=threads) as runner:
        _say_selection(runner)
        manifest = runner.manifest
        predictions = predict(runner, images, ImagePreprocess.from_manifest(manifest.preprocess), topk=topk,
                              names=class_names(manifest.num_classes, labels))
    if as_json:
        _print_json({"artifact": runner.artifact, "backend": runner.name, "precision": runner.precision,
                     "selection": runner.selection, "predictions": [p.to_dict() for p in predictions]})
        return
    rows = [[p.image if rank == 0 else "", str(rank + 1), c["label"], f"{c['probability']:.4f}"]
            for p in predictions for rank, c in enumerate(p.top)]
    click.echo(_table(rows, ["image", "rank", "class", "probability"], right={1, 3}))


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
    import contextlib

    from .target.bench import bench, load_runners, plot, stderr_progress

    if iters is not None and duration is not None:
        raise DeployError("give --iters or --duration, not both")
    _output_file("--plot", plot_path)
    chosen = [b.strip() for b in backends.split(",") if b.strip()]
    sizes = _int_list(batch_sizes, "--batch-sizes")
    with contextlib.ExitStack() as stack:
        runners = load_runners(stack, artifacts, chosen, device=device, threads=threads,
                               own=_own_options(backend_flags))
        if not quiet:
            for _, runner in runners:
                _say_selection(runner)
        results = bench(runners, sizes, iterations=iters, duration=duration, warmup=warmup,
                        progress=None if quiet else stderr_progress)
        if not quiet:
            click.echo("", err=True)
        descriptions = [runner.describe() for _, runner in runners]
    if plot_path:
        plot(results, plot_path)
    if as_json:
        from .environment import cpu_description, tool_versions

        _print_json({"results": [r.to_dict() for r in results], "runners": descriptions,
                     "cpu": cpu_description(), "tools": tool_versions()})
        return
    rows = []
    for r in results:
        lat = r.latency_ms
        device_p50 = f"{r.device_ms['p50']:.2f}" if r.device_ms else "-"
        rows.append([r.label, str(r.batch), str(r.iterations), f"{lat['min']:.2f}", f"{lat['mean']:.2f}",
                     f"{lat['p50']:.2f}", f"{lat['p90']:.2f}", f"{lat['p99']:.2f}", device_p50,
                     f"{r.images_per_s:.1f}", f"{r.ratio:.2f}x"])
    click.echo(_table(rows, ["runner", "batch", "iters", "min ms", "mean ms", "p50 ms", "p90 ms", "p99 ms",
                             "device p50", "images/s", "vs first"], right=set(range(1, 11))))


@main.command("tune")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(file_okay=False),
              help="Labelled images (one folder per class): top-1 drop is judged on them (default: the calibration "
                   "hold-out's changed classes, where the export has one).")
@click.option("--max-drop", type=float, default=1.0, show_default=True, help="Largest top-1 drop allowed, in points.")
@click.option("--batch-sizes", help="Comma-separated batch sizes to time (default 1,8 within the profile).")
@click.option("--latency/--throughput", "latency", default=True, show_default=True,
              help="Pick by p50 at the smallest batch, or by the best images/s.")
@click.option("--budget-s", type=float, default=300.0, show_default=True, help="Seconds the whole run should take.")
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
    if as_json:
        _print_json(report.to_dict())
    else:
        click.echo(_tune_table(report))
    if report.choice is None:
        raise ParityError(f"nothing to deploy: {report.why}")


def _tune_table(report: Any) -> str:
    sizes = report.batch_sizes
    rows = []
    for rank, c in enumerate(report.candidates, 1):
        timings = [c.timings.get(b) for b in sizes]
        ratio = next((t["vs_baseline"] for t in timings if t and "vs_baseline" in t), None)
        drop = c.accuracy.get("top1_drop")
        result = ("CHOSEN" if c is report.choice else "pass") if c.passed else (
            f"REJECTED: {c.reason}" if c.passed is False else c.reason or "not tried")
        rows.append([str(rank), c.config.label, c.config.precision,
                     *[f"{t['p50_ms']:.2f}" if t else "-" for t in timings],
                     *[f"{t['images_per_s']:.1f}" if t else "-" for t in timings],
                     f"{ratio:.2f}x" if ratio is not None else "-",
                     f"{c.accuracy['min_cosine']:.6f}" if c.accuracy else "-",
                     f"{drop:.2f}" if drop is not None else "-", result])
    headers = ["#", "configuration", "computes", *[f"p50 ms b{b}" for b in sizes], *[f"img/s b{b}" for b in sizes],
               "vs ORT fp32", "cosine", "top-1 drop", "result"]
    lines = [f"{report.artifact}: {report.objective}, verified against {report.reference} on "
             + ", ".join(f"{k}={v}" for k, v in report.inputs.items()) + f"; max top-1 drop {report.max_drop} points",
             "", _table(rows, headers, right=set(range(3, len(headers) - 1)))]
    lines += [f"not available here: {s['variant']} for {', '.join(s['files'])}: {s['reason']}" for s in report.skipped]
    lines += [f"note: {note}" for note in report.notes]
    if report.choice is not None:
        lines.append(f"chosen: {report.choice.config.label}: {report.why}")
    if report.plan_file:
        lines.append(f"wrote {report.plan_file}: `--backend auto` runs it on this kind of CPU "
                     f"({' '.join(report.cpu.get('isa', []))})")
    lines.append(f"took {report.seconds:.1f} s")
    return "\n".join(lines)


INT8_ISA_WORDS = {
    "vnni": "VNNI: x86 INT8 kernels (ONNX Runtime's, OpenVINO's) accumulate in int32 (any INT8 artifact runs exactly)",
    "avx2": "no VNNI: x86 INT8 kernels (ONNX Runtime's, OpenVINO's) add u8 x s8 pairs in int16 and saturate on "
            "8-bit weights; export --int8-target cpu uses 7-bit weights (reduce_range) here",
    "other": "not x86: INT8 kernels accumulate in int32",
}


@main.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def doctor_command(as_json: bool) -> None:
    """What this machine can run (torch, CUDA, ONNX Runtime providers, TensorRT) and why not."""
    from .backends.registry import doctor

    report = doctor()
    if as_json:
        _print_json(report)
        return
    cpu, torch_info = report["cpu"], report["torch"]
    lines = [
        f"python       {report['python']} ({report['platform']})",
        f"cpu          {cpu['model']}, {cpu['physical_cores']} physical / {cpu['logical_cores']} logical cores, "
        f"{' '.join(cpu['isa']) or 'no AVX2'}",
        f"int8 kernels {INT8_ISA_WORDS[cpu['int8_isa']]}",
        "bf16         " + ("native: the bf16 precision runs here (OpenVINO on the fp32 file: export --bf16, "
                           "--openvino-bf16, tune)"
                           if cpu["bf16"] == "native" else cpu["bf16"]),
        f"torch        {torch_info['version'] or 'not installed'}, "
        + (f"CUDA {torch_info['cuda_build']}: {', '.join(torch_info['gpus'])}" if torch_info["cuda"]
           else torch_info["reason"]),
        *_torch_build_lines(torch_info["build"]),
        f"onnxruntime  {report['onnxruntime']['version']}, providers: {', '.join(report['onnxruntime']['providers'])}",
    ]
    for name in ("onnx", "onnxsim", "onnxscript", "openvino", "matplotlib"):
        lines.append(f"{name:<12} {report[name]['version'] or 'not installed'}")
    cuda = report["cuda"]
    lines.append(f"cuda         cuda-python {cuda['cuda_python'] or 'not installed'}"
                 + (f", runtime CUDA {cuda['runtime']}" if cuda["runtime"] else "")
                 + (f", driver CUDA {cuda['driver']}" if cuda["driver"] else "")
                 + (f": {cuda['problem']}" if cuda["problem"] else f", {cuda['gpus']} GPU(s)"))
    lines.append(f"tensorrt     {report['tensorrt']['version'] or 'not installed'}")
    lines += ["", "backends:"]
    for name, state in report["backends"].items():
        lines.append(f"  {name:<21} {'yes' if state['usable'] else 'no: ' + state['reason']}")
    click.echo("\n".join(lines))


def _torch_build_lines(build: dict | None) -> list[str]:
    """doctor's lines on the PyTorch build: which, and where it does not fit the machine, what replaces it."""
    if build is None:
        return []
    fits = "fits this machine" if build["fits"] else build["problem"]
    return [f"torch build  {build['build']}: {fits}"] + ([f"             replace it: {build['fix']}"]
                                                         if build["fix"] else [])


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
@click.option("--force", is_flag=True, help="Replace a model of another export, or one resnet-deploy did not write.")
def triton_command(artifact: str, repo: str, model_name: str | None, max_batch: int | None, preferred: str | None,
                   queue_delay_us: int, instances: int, kind: str, model_version: int | None, backend: str,
                   ensemble: bool, force: bool) -> None:
    """Write ARTIFACT into a Triton Inference Server model repository, destroying nothing there."""
    from .serving.triton import ENSEMBLE_SUFFIX, PREPROCESS_SUFFIX, TritonOptions, write_model_repository

    options = TritonOptions(model_name=model_name, max_batch=max_batch,
                            preferred=tuple(_int_list(preferred, "--preferred")) if preferred else (),
                            queue_delay_us=queue_delay_us, instances=instances, kind=kind, version=model_version,
                            backend=backend, ensemble=ensemble)
    written = write_model_repository(artifact, repo, options, force=force)
    if written.selection:
        click.echo(written.selection, err=True)
    click.echo(f"wrote {written.folder}/config.pbtxt and {written.folder}/{written.version}/")
    click.echo(f"  {written.artifact.name} on Triton's {written.backend} backend, computing {written.computes}")
    if ensemble:
        for suffix in (PREPROCESS_SUFFIX, ENSEMBLE_SUFFIX):
            click.echo(f"wrote {written.folder}{suffix}/config.pbtxt and {written.folder}{suffix}/1/")


@main.command("serve")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--model-name", help="Default: the artifact's stem.")
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to bind (0.0.0.0 exposes it).")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True)
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
def serve_command(artifact: str, model_name: str | None, host: str, port: int, max_batch: int | None,
                  max_delay_ms: float, queue_size: int, workers: int, max_request_mb: float, backend: str,
                  device: str | None, threads: int | None) -> None:
    """Serve ARTIFACT over the Open Inference Protocol (KServe v2 REST), with dynamic batching."""
    from .serving.limits import ServeLimits
    from .serving.server import serve

    limits = ServeLimits(max_batch=max_batch, max_delay_ms=max_delay_ms, queue_size=queue_size, workers=workers,
                         max_request_mb=max_request_mb)
    serve(artifact, host=host, port=port, model_name=model_name, limits=limits, backend=backend, device=device,
          threads=threads, announce=lambda line: click.echo(line, err=True))


if __name__ == "__main__":  # pragma: no cover
    main()
