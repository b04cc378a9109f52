"""What a batch job reads: folders, globs, text files of paths, and URIs pyarrow's filesystems open.

Every input is expanded to one ordered list of sources (a folder's images sorted by path, recursively), so
a job, its resumption and its Ray form number the same images the same way. Local sources stay paths;
remote ones are written as ``scheme://host/key`` and read through the filesystem their input named
(:class:`Filesystems`, which travels to Ray's workers with its endpoints and options).
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

import numpy as np
from PIL import Image

from ..data import load_preprocessed
from ..errors import DeployError, first_line
from ..imageprep import IMAGE_SUFFIXES, ImagePreprocess, UnsupportedPixels, open_image, to_rgb

_URI = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)
_GLOB = re.compile(r"[*?[]")
LIST_SUFFIXES = (".txt", ".lst", ".list")  # a text file of paths or URIs, one per line
MAX_REMOTE_BYTES = 256 << 20  # one remote image read whole: larger is refused before it is read


def is_uri(text: str) -> bool:
    return bool(_URI.match(text))


def _has_image_suffix(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


class Filesystems:
    """The pyarrow filesystems of a job's URIs, by ``scheme://host``: picklable, so Ray's workers read
    through the same endpoints (an ``s3://...?endpoint_override=...`` input) as the driver."""

    def __init__(self) -> None:
        self.by_root: dict[str, Any] = {}

    def resolve(self, uri: str) -> tuple[Any, str, str]:
        """``(filesystem, path inside it, clean URI without the query)`` for ``uri``."""
        from pyarrow import fs

        clean = uri.split("?", 1)[0]
        root, _ = _split_uri(clean)
        try:
            filesystem, path = fs.FileSystem.from_uri(uri)
        except (ValueError, OSError, TypeError) as exc:
            raise DeployError(f"cannot open {clean}: {first_line(exc)}") from None
        self.by_root.setdefault(root, filesystem)
        return self.by_root[root], path, clean

    def read(self, uri: str) -> bytes:
        """The bytes of one remote source (as its listing named it)."""
        root, path = _split_uri(uri)
        filesystem = self.by_root.get(root)
        if filesystem is None:
            filesystem, path, _ = self.resolve(uri)
        try:
            info = filesystem.get_file_info(path)
            if info.size is not None and info.size > MAX_REMOTE_BYTES:
                raise DeployError(f"{uri} is {info.size >> 20} MiB, more than an image read whole may be "
                                  f"({MAX_REMOTE_BYTES >> 20} MiB)")
            with filesystem.open_input_stream(path) as stream:
                return stream.read()
        except OSError as exc:
            raise DeployError(f"cannot read {uri}: {first_line(exc)}") from None


def _split_uri(uri: str) -> tuple[str, str]:
    """``("s3://bucket", "bucket/key")`` for ``s3://bucket/key``: the filesystem's key and the path in it
    (object stores name paths from the bucket; others from the root)."""
    scheme, rest = uri.split("://", 1)
    host, _, key = rest.partition("/")
    bucketed = scheme.lower() in ("s3", "gs", "gcs")
    return f"{scheme.lower()}://{host}", f"{host}/{key}" if bucketed else f"/{key}"


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
    except OSError as exc:
        raise DeployError(f"cannot list {clean}: {first_line(exc)}") from None
    root, inside = _split_uri(clean)
    files = sorted(f.path for f in found if f.type == fs.FileType.File and _has_image_suffix(f.path))
    if not files:
        raise DeployError(f"{clean} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    bucketed = inside != "/" + inside.lstrip("/")  # a bucket-style path: the host is its first part
    return [f"{root.split('://')[0]}://{name}" if bucketed else root + name for name in files]


def _listed_folder(folder: Path) -> list[str]:
    files = sorted(str(Path(root, name)) for root, _, names in os.walk(folder) for name in names
                   if _has_image_suffix(name))
    if not files:
        raise DeployError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _listed_file(listing: Path) -> list[str]:
    try:
        lines = listing.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DeployError(f"cannot read the list of inputs {listing}: {exc}") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def list_inputs(inputs: Sequence[str], filesystems: Filesystems) -> list[str]:
    """Every source of ``inputs``, in order: a folder's images (recursively, sorted), a glob's matches
    (sorted), a text file's lines (``.txt``, ``.lst``, ``.list``; ``#`` comments), a URI's object or the
    images under its prefix, an image file as itself.

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
        if is_uri(given):
            sources += _listed_uri(given, filesystems)
        elif _GLOB.search(given):
            matches = sorted(m for m in glob.glob(given, recursive=True) if _has_image_suffix(m))
            if not matches:
                raise DeployError(f"{given} matches no images")
            sources += matches
        elif Path(given).is_dir():
            sources += _listed_folder(Path(given))
        elif Path(given).suffix.lower() in LIST_SUFFIXES:
            sources += [s for s in _listed_file(Path(given))]
        elif Path(given).exists():
            sources.append(given)
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
    if not is_uri(source) or source.lower().startswith("file://"):
        local = source[len("file://"):] if is_uri(source) else source
        embedded = ImagePreprocess(**{**vars(preprocess), "embedded": True})
        return load_preprocessed(local, embedded)
    data = filesystems.read(source)
    try:
        with open_image(io.BytesIO(data)) as image:
            image.load()
            return preprocess.resized(to_rgb(image))
    except UnsupportedPixels as exc:
        raise DeployError(f"{source} {exc}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DeployError(f"cannot read {source} as an image: {first_line(exc)}") from None


def model_input(pixels: np.ndarray, preprocess: ImagePreprocess) -> np.ndarray:
    """The model's input from :func:`decode_pixels`' pixels: normalised, or the pixels where embedded."""
    return pixels if preprocess.embedded else preprocess.normalise(pixels)
