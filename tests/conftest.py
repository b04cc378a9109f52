"""Shared fixtures: a CLI runner that keeps stderr apart, and small-model helpers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

TOOLS = Path(__file__).resolve().parents[1] / "tools"

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers share the cores: an idle OpenMP thread sleeps, not spins
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
try:  # the target-side runs of .ci/run have no PyTorch
    import torch
except ImportError:
    torch = None
else:  # two cores here: let torch use both
    torch.set_num_threads(max(1, os.cpu_count() or 1))


@pytest.fixture
def cli():
    """Invoke ``resnet-deploy ARGS``; returns click's Result with .stdout/.stderr apart."""
    from resnet_deploy.cli import main

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


def cli_without(module: str, *args: str) -> subprocess.CompletedProcess:
    """``resnet-deploy ARGS`` in a fresh process where ``import MODULE`` raises ImportError, as on a
    machine that does not have it installed."""
    script = (f"import sys; sys.modules[{module!r}] = None\n"
              "from resnet_deploy.cli import main\nmain(sys.argv[1:])\n")
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)


def assert_one_line_error(result, code: int = 2, contains: str | None = None) -> None:
    """The CLI's contract for bad input: exit code, one 'error:' line on stderr, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    if contains is not None:
        assert contains in lines[-1], lines[-1]


@pytest.fixture(scope="session")
def digits(request):
    """A resnet18_cifar trained on scikit-learn's digits by tools/train_cifar.py, with its own normalisation
    (x - 0.5) / 0.5: (folder, training record). Cached in pytest's cache folder, so only the first run
    trains (about 2 min on 2 cores)."""
    pytest.importorskip("sklearn", reason="scikit-learn (a test dependency) bundles the digits data set")
    out = Path(request.config.cache.mkdir("digits"))
    with cache_lock(out):
        return out, train_digits(out)


def train_digits(out: Path) -> dict:
    done = subprocess.run([sys.executable, str(TOOLS / "train_cifar.py"), "--out", str(out), "--json"],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.fixture(scope="session")
def small_export(tmp_path_factory):
    """resnet18 at 64 px, profile 1:4:8, fp32 + fp16: the artifact the runtime, verify and OpenVINO tests
    share (tests that change files work on copies)."""
    from resnet_deploy import export

    return export("resnet18", input_size=64, batch="1:4:8", fp16=True, out=tmp_path_factory.mktemp("resnet18"),
                  quiet=True)


@pytest.fixture(scope="session")
def embedded_export(tmp_path_factory):
    """resnet18 at 64 px, profile 1:4:8, fp32 + fp16 + int8 (cpu target, random calibration) with its
    preprocessing embedded (uint8 NHWC pixels in): the embedded-preprocessing and Triton tests share it."""
    from resnet_deploy import export

    return export("resnet18", input_size=64, batch="1:4:8", fp16=True, int8=True, int8_target="cpu",
                  calib_data="random", calib_size=16, embed_preprocess=True, out=tmp_path_factory.mktemp("embedded"),
                  quiet=True)


# The archs whose fp16 and int8 artifacts are checked (issue 5's Must show): their exports are made once.
PRECISION_ARCHS = ["resnet18", "resnet50", "resnext50_32x4d", "seresnet50", "res2net50_26w_4s", "resnest50d",
                   "resnet50_ibn_a"]


@pytest.fixture(scope="session")
def precision_export(tmp_path_factory):
    """``get(arch)``: its fp32 + fp16 + int8 (trt target, random calibration) export at 64 px, made on first
    use and shared by the export and precision tests (a dynamo export of a 50-layer net takes 10-25 s here)."""
    from resnet_deploy import export

    made = {}

    def get(name: str):
        if name not in made:
            made[name] = export(name, input_size=64, fp16=True, int8=True, calib_data="random", calib_size=32,
                                out=tmp_path_factory.mktemp(name), quiet=True)
        return made[name]

    return get


UNREACHABLE = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
               "Network is unreachable", "Connection refused", "ConnectTimeout", "ReadTimeout", "ProxyError",
               "Could not fetch URL")


def pip(*args: str, python: str = sys.executable) -> None:
    """``python -m pip ARGS`` for what a test fetches from the package registry at test time; skips the
    test where the registry cannot be reached, fails it on anything else."""
    done = subprocess.run([python, "-m", "pip", "--disable-pip-version-check", *args], capture_output=True, text=True)
    if done.returncode != 0:
        if any(sign in done.stderr + done.stdout for sign in UNREACHABLE):
            pytest.skip(f"the package registry cannot be reached: {done.stderr.strip().splitlines()[-1]}")
        pytest.fail(f"pip {' '.join(args)} failed:\n{done.stderr[-2000:]}")


def cached_venv(venv: Path, *installs: list[str]) -> Path:
    """A virtual environment at ``venv`` with each ``pip install`` of ``installs`` run in order, made once
    (a marker file says it is complete) and reused by later runs: the real servers' and clients' own
    environments, apart from the project's."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    with cache_lock(venv.parent):
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            for arguments in installs:
                pip("install", "--quiet", *arguments, python=str(venv / "bin" / "python"))
            (venv / ".complete").touch()
    return venv


@contextlib.contextmanager
def cache_lock(folder: Path):
    """An exclusive lock on a folder of pytest's cache, held while it is made or read: two pytest-xdist workers
    (or two runs) never build the same cached thing at once."""
    import fcntl

    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving_in_thread(app, **server_options):
    """The ASGI ``app`` served on a free loopback port in a thread of this process (serve's own HTTP server,
    its header deadline included); yields "127.0.0.1:PORT" and stops the server after."""
    import threading
    import time

    from resnet_deploy.serving.connections import http_server

    port = free_port()
    instance = http_server(app, "127.0.0.1", port, **server_options)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        instance.should_exit = True
        thread.join(timeout=10)


def wait_until_ready(url: str, process: subprocess.Popen, seconds: float, why_not) -> None:
    """Poll ``url`` (a /v2/health/ready endpoint) until it answers 200, within ``seconds``; while waiting,
    a process that exited or the deadline raises RuntimeError with ``why_not()`` (its log)."""
    import time
    import urllib.request

    deadline = time.monotonic() + seconds  # a server that fails to start may hang rather than exit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}):\n{why_not()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server was not ready in {seconds} s:\n{why_not()}")


RAY_FIXTURE = "local_ray"
# the local S3's (moto's) keys: in the environment of the tests that read from it, and of Ray's workers, which
# inherit the environment Ray started with, not the driver's later one
LOCAL_S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray on 2 CPUs for every Ray test of the session (Ray Data's batch job, Ray Serve's deployment):
    its start-up takes 7-13 s here. The modules that use it run one after another (see
    :func:`pytest_collection_modifyitems`) and it is shut down after the last test that needs it, so its
    processes hold no CPU or memory through the rest of the suite."""
    ray = pytest.importorskip("ray", reason="the ray extra runs batch --ray and serve --ray")
    for attempt in (1, 2):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": LOCAL_S3_KEYS})
            break
        except Exception as error:  # Ray gives its raylet a fixed 30 s to register: a busy machine can miss it
            if attempt == 2 or "timed out during startup" not in str(error):
                raise
            ray.shutdown()
    yield ray
    if ray.is_initialized():
        ray.shutdown()


# session fixtures too costly to make twice: under pytest-xdist (`-n 2 --dist loadgroup`), the modules that use
# one of them run on the same worker, one after another; every other module runs whole on one worker
SHARED_ON_ONE_WORKER = (RAY_FIXTURE, "precision_export", "digits", "embedded_export")


def module_groups(rootpath: Path) -> dict[str, str]:
    """Each test module (as node ids name it) -> its group: modules that name a fixture of
    :data:`SHARED_ON_ONE_WORKER` are joined under it (one of a group naming another joins both groups), every
    other module is a group of its own."""
    used = {path.relative_to(rootpath).as_posix(): set(re.findall(r"\b(?:%s)\b" % "|".join(SHARED_ON_ONE_WORKER),
                                                                   path.read_text()))
            for path in sorted(Path(__file__).parent.rglob("test_*.py"))}
    group = {module: module for module in used}
    for fixture in SHARED_ON_ONE_WORKER:
        joined = {group[module] for module, names in used.items() if fixture in names}
        group = {module: fixture if name in joined else name for module, name in group.items()}
    return group


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup``: whole modules to a worker, grouped by :func:`module_groups` (pytest-xdist's own
    loadgroup reads ``xdist_group`` marks into node ids, which pytest 9 no longer lets it change)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    groups = module_groups(config.rootpath)

    class SharedFixtureGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return groups.get(module, module)

    return SharedFixtureGroups(config, log)


def pytest_collection_modifyitems(session, config, items):
    """The modules that use the session's Ray, moved together at the first one's place (each module's tests in
    their order): Ray starts once and stays busy while up."""
    modules = list(dict.fromkeys(item.module for item in items))
    uses_ray = {m for m in modules if any(RAY_FIXTURE in i.fixturenames for i in items if i.module is m)}
    if len(uses_ray) < 2:
        return
    first = next(i for i, item in enumerate(items) if item.module in uses_ray)
    together = [item for item in items if item.module in uses_ray]
    rest = [item for item in items if item.module not in uses_ray]
    items[:] = rest[:first] + together + rest[first:]


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """Once no later test uses the session's Ray, at the end of a module (after its fixtures, which may hold a
    deployment on it, were torn down), shut Ray down."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized() or (nextitem is not None and nextitem.module is item.module):
        return
    later = item.session.items[item.session.items.index(item) + 1:]
    if not any(RAY_FIXTURE in other.fixturenames for other in later):
        ray.shutdown()
