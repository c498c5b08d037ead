"""Enumerate the images of a corpus from directories, globs, list files and fsspec URLs.

A *source* argument may be:

* a local directory or fsspec URL of one (``s3://bucket/div2k/``): searched recursively;
* a glob (``data/**/*.png``, ``gs://b/kodak/*.png``);
* a text file (``.txt``/``.lst``) listing one path or URL per line (``#`` comments allowed);
* a single image path or URL.

Known layouts (DIV2K, Kodak, Vimeo-90k ``sequences/*/*/im*.png``, CLIC) are plain folders of images
and need no flags. The result is sorted and de-duplicated by location, so builds are
deterministic; a missing source directory is an error, an unreadable file is left to the builder
to quarantine.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".avif",
                  ".heic", ".jxl", ".jp2"}
LIST_SUFFIXES = {".txt", ".lst", ".list"}
GLOB_CHARS = set("*?[")


class SourceError(ValueError):
    """A source argument that cannot be enumerated (missing directory, unknown URL scheme, ...)."""


def _is_image(name: str) -> bool:
    # os.path, not pathlib: a Path interns each name it parses, which for a corpus of millions of
    # files grows the interpreter's intern table with every file name
    return os.path.splitext(name.split("?", 1)[0])[1].lower() in IMAGE_SUFFIXES


def _unstrip(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """fsspec lists paths without the protocol; put it back for non-local filesystems."""
    return fs.unstrip_protocol(path) if _protocol(fs) != "file" else path


def _protocol(fs: fsspec.AbstractFileSystem) -> str:
    proto = fs.protocol
    return proto[0] if isinstance(proto, (tuple, list)) else proto


def _walk(root: str) -> Iterator[str]:
    """Every image below a local directory, lazily and in no particular order (a folder of millions
    of files is read as a stream); as fsspec's ``find``, linked files are listed and linked
    directories are not entered (no loops)."""
    folders = [root]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                elif _is_image(entry.name):
                    yield entry.path


def _list_lines(fs: fsspec.AbstractFileSystem, path: str, source: str) -> Iterator[str]:
    """The locations a list file names, one a line (``#`` comments and blank lines skipped)."""
    try:
        with fs.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip() and not line.startswith("#"):
                    yield line.strip()
    except UnicodeDecodeError as exc:
        raise SourceError(f"{source}: not a text list file (byte {exc.start} is not UTF-8)") from None


def _iter_one(source: str) -> Iterator[str]:
    """The image locations of one source, in no particular order; checked before the first is yielded."""
    try:
        fs, path = fsspec.core.url_to_fs(source)
    except (ValueError, ImportError) as exc:
        raise SourceError(f"{source}: unsupported location ({exc})") from None
    if GLOB_CHARS & set(path):
        return iter([_unstrip(fs, p) for p in fs.glob(path) if _is_image(p)])
    if _protocol(fs) != "file" and _is_image(path):
        return iter([source])  # an image URL: no request to classify it (its read is bounded, see read_bytes)
    try:
        is_dir = fs.isdir(path)
    except OSError as exc:
        raise SourceError(f"{source}: cannot access ({exc})") from None
    if is_dir:
        if _protocol(fs) == "file":
            return _walk(path)
        return iter([_unstrip(fs, p) for p in fs.find(path) if _is_image(p)])
    if Path(path).suffix.lower() in LIST_SUFFIXES:
        if not fs.exists(path):
            raise SourceError(f"{source}: no such list file")
        return _list_lines(fs, path, source)
    if _is_image(path):
        # A listed single file is kept even if missing: the builder quarantines it with its reason.
        return iter([source])
    if not fs.exists(path):
        raise SourceError(f"{source}: no such file or directory")
    raise SourceError(f"{source}: not a directory, glob, list file or image")


def iter_sources(sources: list[str]) -> Iterator[str]:
    """The image locations of ``sources``, lazily, unsorted and possibly repeated (see
    ``shards.inputs.write_input_list``, which sorts and de-duplicates them on disk).

    Raises:
        SourceError: for a source that does not exist or cannot be listed (every source is
            checked before the first location is yielded).
    """
    return itertools.chain.from_iterable([_iter_one(str(source)) for source in sources])


def expand_sources(sources: list[str]) -> list[str]:
    """All image locations of ``sources``, sorted and unique, in memory (for small corpora).

    Raises:
        SourceError: for a source that does not exist or cannot be listed.
    """
    return sorted(set(iter_sources(sources)))


MAX_INPUT_BYTES = 2**30  # no image file of a corpus is this large; /dev/zero behind a symlink is


def read_local_file(path: str | os.PathLike, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """Read a regular file of at most ``max_bytes`` (symlinks followed); FIFOs, devices and sockets
    are refused without being opened (opening a FIFO blocks until a writer appears). The one rule for
    every file a user names: shard inputs, the codec CLI's images and ``.cdc`` files.

    Raises:
        OSError: naming the path: missing, a directory, not a regular file, or larger than ``max_bytes``.
    """
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory", path)
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode) else
                "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "special")
        raise OSError(errno.EINVAL, f"not a regular file ({kind})", path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", path)
        # read what the file holds, never the cap: f.read(n) allocates n bytes up front, which fails
        # under an address-space limit (ulimit -v) for every file; a file growing meanwhile is read on
        data = f.read(size + 1)
        while len(data) > size and len(data) <= max_bytes:
            more = f.read(min(2**20, max_bytes + 1 - len(data)))
            if not more:
                break
            data += more
    if len(data) > max_bytes:
        raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", path)
    return data


def http_timeout_s() -> float:
    """Seconds an HTTP(S) read may take in all (``CDC_HTTP_TIMEOUT_S``, default 60): a server that
    stops answering fails the input with a reason instead of hanging the build."""
    return float(os.environ.get("CDC_HTTP_TIMEOUT_S", "60"))


def _timed_out(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, TimeoutError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _remote_options(location: str) -> dict:
    if not location.startswith(("http://", "https://")):
        return {}
    import aiohttp

    return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=http_timeout_s())}}


def read_bytes(location: str, retries: int = 3, backoff: float = 0.5, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """Read a local path or URL of at most ``max_bytes``; transient errors of remote reads are retried
    with backoff. Local inputs must be regular files (see ``read_local_file``).

    Raises:
        OSError: the location cannot be read (after the retries for remote locations), is not a
            regular file, or is larger than ``max_bytes``.
    """
    fs, path = fsspec.core.url_to_fs(location, **_remote_options(location))
    if _protocol(fs) == "file":
        return read_local_file(path, max_bytes)
    for attempt in range(retries):
        try:
            streamed = {"block_size": 0} if location.startswith(("http://", "https://")) else {}  # one GET
            with fs.open(path, "rb", **streamed) as f:
                data = f.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", location)
            return data
        except OSError as exc:
            if _timed_out(exc):  # fsspec reports an HTTP timeout as a missing file
                exc = OSError(errno.ETIMEDOUT, f"timed out after {http_timeout_s():g} s", location)
            elif isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError):
                raise
            if attempt == retries - 1 or exc.errno == errno.EFBIG:
                raise exc from None
            time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")
