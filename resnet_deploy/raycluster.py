"""Joining a Ray cluster, for the two things that run on one: the batch job (Ray Data) and ``serve --ray``
(Ray Serve). Ray is never a dependency of the package: each imports it here, with a one-line error naming
the extra where it is missing."""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from typing import Any

from .errors import DeployError


def import_ray(library: str, missing: str) -> Any:
    """The ``ray`` module with ``library`` (``ray.data``, ``ray.serve``) importable.

    Raises:
        DeployError: ``missing`` (which extra to install), where either cannot be imported.
    """
    try:
        import ray

        importlib.import_module(library)
    except ImportError:  # ray.serve without its own dependencies (fastapi...) raises ModuleNotFoundError too
        raise DeployError(missing) from None
    return ray


def connect(ray: Any, address: str | None, *, quiet: tuple[str, ...] = ()) -> bool:
    """Join the Ray cluster at ``address`` (None: start a local one), unless this process already has.
    The signal handlers of the caller are put back: Ray's own SIGTERM handler exits at once, where the
    batch job writes its record as stopped and ``serve --ray`` takes its deployment down.

    Args:
        ray: the module, from :func:`import_ray`.
        address: ``auto``, ``ray://host:10001``, ``host:6379``; None: a local Ray on this machine's CPUs.
        quiet: Ray loggers set to warnings (the caller reports its own progress).

    Returns:
        Whether this call started the connection (so the caller ends it).

    Raises:
        DeployError: Ray could not start or the cluster could not be reached.
    """
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    if ray.is_initialized():
        return False
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING, include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise DeployError(f"cannot start or reach {where}: {str(exc).splitlines()[0]}") from None
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
    return True
