"""What a batch job reads: folders, globs, text files of paths, and URIs pyarrow's filesystems open.

Every input is expanded to one ordered list of sources (a folder's images sorted by path, recursively, links
to folders not followed), so a job, its resumption and its Ray form number the same images the same way.
Local sources stay paths (a ``file://`` URI becomes its path); remote ones are written as
``scheme://bucket/key`` without the query that named their endpoint or credentials, and read through the
filesystem their input named (:class:`Filesystems`, which travels to Ray's workers with its endpoints).
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import numpy as np

from ..data import load_preprocessed
from ..errors import DeployError, first_line
from ..fileio import regular_file
from ..imageprep import IMAGE_SUFFIXES, ImagePreprocess, UnreadableImage, UnsupportedPixels, read_rgb

_URI = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)
_GLOB = re.compile(r"[*?[]")
LIST_SUFFIXES = (".txt", ".lst", ".list")  # a text file of paths or URIs, one per line
MAX_REMOTE_BYTES = 256 << 20  # one remote image read whole: larger is refused before it is read


def is_uri(text: str) -> bool:
    return bool(_URI.match(text))


def _has_image_suffix(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _arrow_errors() -> tuple[type[BaseException], ...]:
    """What pyarrow's filesystems raise for a path, a URI or an object they cannot use."""
    import pyarrow

    return (OSError, ValueError, TypeError, pyarrow.ArrowException)


def _split_uri(uri: str) -> tuple[str, str]:
    """``("s3://bucket", "key")`` for ``s3://bucket/key?query``: the filesystem's key (scheme and host) and
    the rest of the path."""
    scheme, rest = uri.split("?", 1)[0].split("://", 1)
    host, _, key = rest.partition("/")
    return f"{scheme.lower()}://{host}", key


class Filesystems:
    """The pyarrow filesystems of a job's URIs, by ``scheme://host``: picklable, so Ray's workers read
    through the same endpoints (an ``s3://...?endpoint_override=...`` input) as the driver. The first URI of
    a host names its filesystem for the whole job, and how its paths are written (``bucket/key`` on S3)."""

    def __init__(self) -> None:
        self.by_root: dict[str, tuple[Any, str]] = {}  # root -> (filesystem, what a key's path begins with)

    def resolve(self, uri: str) -> tuple[Any, str, str]:
        """``(filesystem, path inside it, clean URI without the query)`` for ``uri``.

        Raises:
            DeployError: a URI no filesystem of pyarrow's here opens.
        """
        from pyarrow import fs

        root, key = _split_uri(uri)
        clean = uri.split("?", 1)[0]
        if root not in self.by_root:
            try:
                filesystem, path = fs.FileSystem.from_uri(uri)
            except _arrow_errors() as exc:
                raise DeployError(f"cannot open {clean}: {first_line(exc)}") from None
            if not path.rstrip("/").endswith(key.rstrip("/")):
                raise DeployError(f"cannot open {clean}: pyarrow names it {path}, which this job cannot map")
            prefix = path.rstrip("/")[: len(path.rstrip("/")) - len(key.rstrip("/"))]
            self.by_root[root] = filesystem, prefix if not prefix or prefix.endswith("/") else prefix + "/"
        filesystem, prefix = self.by_root[root]
        return filesystem, prefix + key, clean

    def read(self, uri: str) -> bytes:
        """The bytes of one remote source.

        Raises:
            DeployError: an object that cannot be read, or is larger than :data:`MAX_REMOTE_BYTES`.
        """
        filesystem, path, clean = self.resolve(uri)
        try:
            info = filesystem.get_file_info(path)
            if info.size is not None and info.size > MAX_REMOTE_BYTES:
                raise DeployError(f"{clean} is {info.size >> 20} MiB, more than an image read whole may be "
                                  f"({MAX_REMOTE_BYTES >> 20} MiB)")
            with filesystem.open_input_stream(path) as stream:
                return stream.read()
        except _arrow_errors() as exc:
            raise DeployError(f"cannot read {clean}: {first_line(exc)}") from None


def _listed_uri(uri: str, filesystems: Filesystems) -> list[str]:
    from pyarrow import fs

    filesystem, path, clean = filesystems.resolve(uri)
    try:
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.File:
            return [clean]
        if info.type != fs.FileType.Directory:
            raise DeployError(f"{clean} does not exist")
        found = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
    except _arrow_errors() as exc:
        raise DeployError(f"cannot list {clean}: {first_line(exc)}") from None
    root, _ = _split_uri(clean)
    prefix = filesystems.by_root[root][1]
    files = sorted(f.path for f in found if f.type == fs.FileType.File and _has_image_suffix(f.path)
                   and f.path.startswith(prefix))
    if not files:
        raise DeployError(f"{clean} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return [f"{root}/{name[len(prefix):]}" for name in files]


def _listed_folder(folder: Path) -> list[str]:
    """Images under ``folder``, sorted by path; links to folders are not followed (a link loop would never
    end), links to files are."""
    files = sorted(str(Path(root, name)) for root, _, names in os.walk(folder) for name in names
                   if _has_image_suffix(name))
    if not files:
        raise DeployError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _glob_pattern(pattern: str) -> re.Pattern[str]:
    """``pattern`` (``*``, ``?``, ``[...]``, ``**`` for any depth) as a regular expression on paths."""
    parts, index = [], 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            parts.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            parts.append(".*")
            index += 2
        elif pattern[index] == "*":
            parts.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            parts.append("[^/]")
            index += 1
        elif pattern[index] == "[" and "]" in pattern[index + 2:]:
            end = pattern.index("]", index + 2)
            body = pattern[index + 1:end]
            parts.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            index = end + 1
        else:
            parts.append(re.escape(pattern[index]))
            index += 1
    return re.compile("".join(parts) + r"\Z")


def _globbed(pattern: str) -> list[str]:
    """The images ``pattern`` matches, sorted: walked from its fixed leading folder without following links
    to folders (``glob``'s ``**`` follows them, and a link loop made its matches grow without end)."""
    fixed = []
    for part in pattern.split("/"):
        if _GLOB.search(part):
            break
        fixed.append(part)
    base = "/".join(fixed) or "."
    if not os.path.isdir(base):
        return []
    if "**" not in pattern:  # one level per part: glob's own walk cannot loop
        return sorted(m for m in glob.glob(pattern) if _has_image_suffix(m) and os.path.isfile(m))
    matcher, found = _glob_pattern(pattern), []
    for root, _, names in os.walk(base):
        for name in names:
            path = os.path.join(root, name)
            shown = path[2:] if base == "." and not pattern.startswith("./") else path  # as glob names them
            if _has_image_suffix(name) and matcher.match(shown):
                found.append(shown)
    return sorted(found)


def _listed_file(listing: Path, filesystems: Filesystems) -> list[str]:
    """A text file's entries: paths as they are (relative ones from the working folder), URIs cleaned of
    their query once their filesystem is known."""
    try:
        lines = regular_file(listing, "list of inputs").read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployError(f"cannot read the list of inputs {listing}: {exc}") from None
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [_local_or_clean(entry, filesystems) for entry in entries]


def _local_or_clean(entry: str, filesystems: Filesystems) -> str:
    if not is_uri(entry):
        return entry
    if entry.lower().startswith("file://"):
        return unquote(entry[len("file://"):].split("?", 1)[0])
    return filesystems.resolve(entry)[2]


def list_inputs(inputs: Sequence[str], filesystems: Filesystems) -> list[str]:
    """Every source of ``inputs``, in order: a folder's images (recursively, sorted), a glob's matches
    (sorted; ``**`` for any depth), a text file's lines (``.txt``, ``.lst``, ``.list``; ``#`` comments), a
    URI's object or the images under its prefix (``file://`` as the path it names), an image file as itself.

    Args:
        inputs: what the user gave.
        filesystems: where the URIs' filesystems are kept (for reading later).

    Returns:
        The sources; a text file's entries are taken as they are (a missing one becomes a row with its error).

    Raises:
        DeployError: an input that does not exist or names no images.
    """
    sources: list[str] = []
    for given in inputs:
        if is_uri(given) and not given.lower().startswith("file://"):
            sources += _listed_uri(given, filesystems)
            continue
        local = _local_or_clean(given, filesystems)
        if _GLOB.search(local) and not Path(local).exists():
            matches = _globbed(local)
            if not matches:
                raise DeployError(f"{given} matches no images")
            sources += matches
        elif Path(local).is_dir():
            sources += _listed_folder(Path(local))
        elif Path(local).suffix.lower() in LIST_SUFFIXES:
            sources += _listed_file(Path(local), filesystems)
        elif Path(local).exists() or Path(local).is_symlink():
            sources.append(local)
        else:
            raise DeployError(f"{given} does not exist")
    if not sources:
        raise DeployError("no images to classify")
    return sources


def inputs_digest(sources: Iterable[str]) -> str:
    """A key of the ordered list of sources: a resumed job must be given the same list."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


def decode_pixels(source: str, preprocess: ImagePreprocess, filesystems: Filesystems) -> np.ndarray:
    """One source, decoded, resized and cropped: (H, W, 3) uint8 (what :meth:`ImagePreprocess.resized` gives).

    Raises:
        DeployError: a source that cannot be read or is not an image.
    """
    if not is_uri(source):
        return load_preprocessed(source, ImagePreprocess(**{**vars(preprocess), "embedded": True}))
    data = filesystems.read(source)
    try:
        rgb = read_rgb(io.BytesIO(data))
    except UnsupportedPixels as exc:
        raise DeployError(f"{source} {exc}") from None
    except UnreadableImage as exc:  # Pillow names the stream object: the message names the source instead
        message = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "it", first_line(exc))
        raise DeployError(f"cannot read {source} as an image: {message}") from None
    return preprocess.resized(rgb)


def model_input(pixels: np.ndarray, preprocess: ImagePreprocess) -> np.ndarray:
    """The model's input from :func:`decode_pixels`' pixels: normalised, or the pixels where embedded."""
    return pixels if preprocess.embedded else preprocess.normalise(pixels)
