"""Atomic file writes: a crash or an error never leaves a partial output file behind, and a write
that may not replace a file never does, even if one appears while the output is being made."""

from __future__ import annotations

import errno
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STALE_TMP_S = 3600
"""Temporary files of an output older than this are left-overs of a killed write (a write takes
seconds), removed by the next write of the same output."""


@contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[str]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only on success.

    With ``overwrite=False`` the move is a hard link, which the kernel refuses if ``path`` exists by
    then (a file made by another process during the write included): ``FileExistsError`` naming
    ``path``, and nothing is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(errno.EEXIST, "exists; pass --overwrite to replace it", str(path)) from None
    except OSError as exc:
        if exc.filename == tmp:  # name the output the user asked for, not our temporary file
            exc.filename = str(path)
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _sweep_stale(path: Path) -> None:
    cutoff = time.time() - STALE_TMP_S
    for old in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:
            pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, data: bytes, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (``overwrite=False``: never replacing a file, see ``atomic_path``)."""
    with atomic_path(path, overwrite) as tmp:
        Path(tmp).write_bytes(data)
