"""Atomic file writes and content hashes, used by every writer in the package.

A file is written under a temporary name in its own folder, flushed to disk and
renamed over the target, so a reader never sees a half-written file and an
interrupted write leaves the previous version (or nothing) in place. Several
files that belong together (an export) are staged and committed one by one,
their manifest last (:class:`Staging`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import IO, Any, TypeVar

from .errors import DeployError

T = TypeVar("T")

TEMP_PREFIX = ".tmp-"  # then the writer's PID: what a later sweep asks about


def _kind(mode: int) -> str:
    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a socket"
            if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")


def special_file(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` is when it exists and is not a regular file (after links): "a FIFO" (a read blocks
    forever), "a device" (/dev/zero never ends), "a folder"...; None for a regular file or nothing there."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else _kind(mode)


_MISSING = "is missing"


def _not_regular(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not a regular file to read: :data:`_MISSING`, "is a FIFO, not a regular file" (or a
    device, a folder, a broken link...); None when it is one."""
    if not os.path.lexists(path):
        return _MISSING
    kind = special_file(path)
    if kind is not None or not os.path.exists(path):
        return f"is {kind or 'a broken link'}, not a regular file"
    return None


def regular_file(path: str | os.PathLike[str], what: str, error: type[DeployError] = DeployError) -> Path:
    """``path``, which must be a regular file: a one-line ``error`` naming ``what`` otherwise, before
    anything opens it.

    Raises:
        DeployError: (or ``error``) it does not exist, or is a FIFO, a device, a folder or a socket.
    """
    path = Path(path)
    problem = _not_regular(path)
    if problem is not None:
        raise error(f"{what} {path} {'does not exist' if problem is _MISSING else problem}")
    return path


def recorded_problem(path: str | os.PathLike[str], sha256: str) -> str | None:
    """Why ``path`` is not the file an export recorded by its ``sha256`` (it is gone, is not a regular file, or its
    bytes changed), in words that follow the path; None when it is that file."""
    problem = _not_regular(path)
    if problem is not None:
        return "is gone" if problem is _MISSING else problem
    return None if sha256_file(path) == sha256 else "changed since export (its sha256 is not the recorded one)"


def from_record(cls: type[T], record: Mapping[str, Any]) -> T:
    """The dataclass ``cls`` from a record read back (a manifest's, a plan's): the fields it knows; keys a later
    version added are left, fields an earlier one lacked take their defaults."""
    return cls(**{name: record[name] for name in cls.__dataclass_fields__ if name in record})


def _plain(value: Any) -> Any:
    """``value`` as JSON holds it: a record as its object, a tuple as a list."""
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class Record(Mapping[str, Any]):
    """Base of the frozen dataclasses written as JSON objects (the manifest's preprocessing and parity rows):
    read by attribute, or by key as the JSON object they are written as, so code that read the dict reads the
    record. Subclasses are ``@dataclass(frozen=True, eq=False)``: equality is the Mapping's, so a record
    equals the dict it was read from."""

    def __post_init__(self) -> None:
        """Lists as read are held as tuples: a frozen record does not change under its readers."""
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        """The record from its JSON object (:func:`from_record`'s rules for unknown and missing keys).

        Args:
            data: the JSON object as read.

        Returns:
            The record.
        """
        return from_record(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: fields in order, records nested as objects, tuples as lists."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


def clear_derived(path: str | os.PathLike[str]) -> str | None:
    """Unlink a FIFO, device node, socket or link put where a derived file (a cache) of the package goes, so
    the file can be made again; returns what was there (None: nothing, a regular file, or a folder, which is
    left for its owner)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    os.unlink(path)
    return "a link" if stat.S_ISLNK(mode) else _kind(mode)


def _replaceable(target: Path) -> None:
    """Refuse to rename a file over anything but a regular file or a link: a FIFO or a device given as an
    output (``--plot /dev/null`` as root) would be replaced, the system's /dev/null with it."""
    try:
        mode = os.lstat(target).st_mode
    except OSError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
        raise DeployError(f"{target} is {_kind(mode)}, not a regular file: it is not written over")


def temp_prefix() -> str:
    """The name start of this process's temporaries: ``.tmp-PID-``."""
    return f"{TEMP_PREFIX}{os.getpid()}-"


def _owner_alive(name: str) -> bool:
    pid = name[len(TEMP_PREFIX):].split("-", 1)[0]
    if not pid.isdigit():
        return True  # not named by this package: not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def sweep_temporaries(folder: str | os.PathLike[str]) -> list[str]:
    """Remove the temporaries (files and folders) left in ``folder`` by writers that are gone: an export
    killed by SIGKILL or a power cut could not clean up after itself. Those of live processes (another
    export running into the same folder) are left alone. Returns the names removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(TEMP_PREFIX) and not _owner_alive(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


class Staging:
    """Files written under temporary names in one folder and put in place by :meth:`commit`: flushed
    to disk, made readable (mkstemp makes 0600; an artifact is meant to be shared) and renamed over
    their final names. As a context manager, whatever was staged and not committed is removed on exit,
    so a failed step leaves nothing behind. The one write path of the package: :func:`atomic_path`,
    the export pipeline, manifests, downloads."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._pending: list[Path] = []

    def file(self, suffix: str = "") -> Path:
        """A new empty temporary file in the folder, removed on exit unless committed."""
        fd, name = tempfile.mkstemp(prefix=temp_prefix(), suffix=suffix, dir=self.folder)
        os.close(fd)
        self._pending.append(Path(name))
        return self._pending[-1]

    def name(self, suffix: str = "") -> Path:
        """A new temporary name in the folder with no file behind it yet, for writers that treat an
        existing file as input (ONNX Runtime's range cache); removed on exit unless committed."""
        path = self.file(suffix)
        path.unlink()
        return path

    def commit(self, staged: Path, target: str | os.PathLike[str]) -> Path:
        """Put ``staged`` in place as ``target`` (in this folder, or another of the same file system), durably."""
        with open(staged, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(staged, 0o644)
        _replaceable(Path(target))
        os.replace(staged, target)
        self._pending.remove(staged)
        _fsync_folder(Path(target).parent)
        return Path(target)

    def discard(self) -> None:
        """Remove every staged file not committed."""
        for path in self._pending:
            path.unlink(missing_ok=True)
        self._pending.clear()

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; where a folder cannot be opened, the rename stands)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target`` (see :class:`Staging`).

    For writers that insist on a file name (torch.save, onnx.save, TensorRT).
    On any exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    _replaceable(target)
    with Staging(target.parent) as staging:
        tmp = staging.file(target.suffix)
        yield tmp
        staging.commit(tmp, target)


@contextlib.contextmanager
def atomic_open(target: str | os.PathLike[str], mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``target`` for writing; rename it into place on success."""
    with atomic_path(target) as tmp, open(tmp, mode) as handle:
        yield handle


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(target, "wb") as handle:
        handle.write(data)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def locked(path: str | os.PathLike[str], *, busy: str | None = None) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``PATH.lock`` (created if missing): writers of one shared file
    from several processes (a timing cache two builds update) take turns instead of overwriting. The lock
    file is opened without blocking and must be a regular file (opening a FIFO for writing waits forever
    for a reader). ``busy``: do not wait for a holder; raise a DeployError with this message instead."""
    import fcntl

    lock = f"{os.fspath(path)}.lock"
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        raise DeployError(f"cannot open the lock file {lock}: {exc.strerror}") from None
    with os.fdopen(fd, "a") as handle:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise DeployError(f"the lock file {lock} is {_kind(mode)}, not a regular file: remove it")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (fcntl.LOCK_NB if busy else 0))
        except BlockingIOError:
            raise DeployError(busy) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
