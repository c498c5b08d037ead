"""One writer per output directory: a lock file that a second run into the same folder refuses on.

Used by the shard builder and by training (``cdc.training.trainer``), so two builds or two runs pointed at one
output directory do not interleave their files: the second fails at once with one line instead of
silently replacing the first one's shards, checkpoints or metrics. The lock is an ``flock`` on
``DIR/.lock``, held by the process for as long as it works in the directory and removed when it is
done; the kernel releases it when the process ends, however it ends (``kill -9`` included), so a lock
file left by a dead process never blocks a rerun.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".lock"


class DirectoryBusyError(RuntimeError):
    """Another process holds the output directory."""


@contextlib.contextmanager
def exclusive_dir(folder: str | Path, what: str = "run") -> Iterator[Path]:
    """Hold ``folder``'s lock for the ``with`` block, creating the folder (and removing it again if it
    ends empty).

    Raises:
        DirectoryBusyError: another live process holds it (the message names the folder and its pid).
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    fd = _acquire(lock, folder, what)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield folder
    finally:
        lock.unlink(missing_ok=True)  # while still holding it: a waiting locker then sees a new file
        os.close(fd)
        # a refused start, or a run with nothing to do (a remote store already up to date), leaves nothing
        if created and not any(folder.iterdir()):
            folder.rmdir()


def _acquire(lock: Path, folder: Path, what: str) -> int:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise DirectoryBusyError(f"{folder}: another {what} is writing here (pid {holder}); "
                                     "wait for it or choose another output directory") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file between our open and our lock: lock the new one
