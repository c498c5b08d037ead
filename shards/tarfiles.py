"""Deterministic tar files: the same members always give byte-identical archives.

Headers carry no wall-clock time, owner or permissions of the writer (mtime 0, uid/gid 0, mode
0444, ustar format), so a shard rebuilt after a crash is identical to one built in one go.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from shards.sources import MAX_INPUT_BYTES as MAX_MEMBER_BYTES  # a member is one input image


def write_tar(path: str | Path, members: Iterable[tuple[str, bytes]]) -> int:
    """Write ``members`` (name, data) to ``path`` atomically; returns the archive size in bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o444
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path.stat().st_size


def read_tar(path: str | Path) -> list[tuple[str, bytes]]:
    """All regular members of a tar file, in order.

    Raises:
        tarfile.TarError or OSError: the archive is truncated or corrupt.
    """
    out = []
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            if info.isfile():
                f = tar.extractfile(info)
                out.append((info.name, f.read() if f else b""))
    return out


def iter_tar(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """Stream (name, data) of the regular members of a tar archive, fast.

    A small ustar/pax/GNU reader: about 10x cheaper per member than ``tarfile``'s generic
    iterator, which matters when a loader worker handles thousands of samples per second.

    Raises:
        ValueError: a header is damaged (bad checksum) or the archive ends mid-member.
    """
    long_name: str | None = None
    while True:
        header = stream.read(512)
        if len(header) < 512:
            if header.strip(b"\0"):
                raise ValueError("truncated tar header")
            return
        if header == _ZERO_BLOCK:
            return
        stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
        if stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise ValueError("tar header checksum mismatch")
        size = _octal(header[124:136])
        if size > MAX_MEMBER_BYTES:
            raise ValueError(f"tar member {_name(header)!r} claims {size} bytes, over the limit of {MAX_MEMBER_BYTES}")
        kind = header[156:157]
        data = stream.read(size)
        if len(data) < size:
            raise ValueError("truncated tar member")
        stream.read(-size % 512)
        if kind in (b"L",):  # GNU long name for the next member
            long_name = data.rstrip(b"\0").decode()
            continue
        if kind in (b"x",):  # pax extended header: only "path" matters here
            for record in data.decode().splitlines():
                _, _, kv = record.partition(" ")
                if kv.startswith("path="):
                    long_name = kv[5:]
            continue
        if kind not in (b"0", b"\0", b"7"):
            long_name = None
            continue
        name = long_name or _name(header)
        long_name = None
        yield name, data


_ZERO_BLOCK = b"\0" * 512


def _octal(field: bytes) -> int:
    if field[0] & 0x80:  # base-256 (GNU) for very large sizes
        return int.from_bytes(field[1:], "big")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0].decode()
    prefix = header[345:500].split(b"\0", 1)[0].decode() if header[257:262] == b"ustar" else ""
    return f"{prefix}/{name}" if prefix else name
