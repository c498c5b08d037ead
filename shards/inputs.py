"""A build's input locations, sorted and unique, kept on disk rather than in memory.

A corpus of 100 M images has 100 M locations: several GB as Python strings. The builder never holds
them. ``write_input_list`` streams every location of the sources (``shards.sources.iter_sources``)
through an external merge sort (sorted runs of ``RUN_SIZE`` locations in temporary files, merged)
into one text file, one location per line, counting them and hashing their signatures on the way;
``InputList`` then hands them out lazily, a chunk at a time. Memory stays at one run however
large the corpus.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

RUN_SIZE = 20_000
"""Locations sorted in memory at a time (about 2 MB of strings)."""
FAN_IN = 64
"""Sorted runs merged at once (open files); more runs are first merged into longer ones."""


def input_signature(location: str) -> str:
    """What identifies one input's content cheaply: a local file's path, size and modification time
    (an image edited in place is rebuilt); a URL as it is."""
    if "://" in location and not location.startswith("file://"):
        return location
    try:
        st = os.stat(location.removeprefix("file://"))
    except OSError:
        return location
    return f"{location}|{st.st_size}|{st.st_mtime_ns}"


def _merged(runs: list[Path]) -> Iterator[str]:
    """The lines of sorted run files, merged in order (each line ends with a newline)."""
    files = [run.open() for run in runs]
    try:
        yield from heapq.merge(*files, key=lambda line: line[:-1])  # the order the runs were sorted in
    finally:
        for f in files:
            f.close()


def _sorted_unique(items: Iterable[str], work: Path) -> Iterator[str]:
    """``sorted(set(items))`` in bounded memory: sorted runs of ``RUN_SIZE`` spilled to ``work``,
    merged ``FAN_IN`` at a time until one merge remains."""
    items = iter(items)
    runs: list[Path] = []

    def spill(lines: Iterable[str]) -> Path:
        run = work / f"run-{len(list(work.iterdir())):06d}.txt"
        with run.open("w") as f:
            f.writelines(lines)
        return run

    for batch in iter(lambda: list(itertools.islice(items, RUN_SIZE)), []):
        runs.append(spill(f"{item}\n" for item in sorted(batch)))
    while len(runs) > FAN_IN:
        runs = [spill(_merged(runs[i : i + FAN_IN])) for i in range(0, len(runs), FAN_IN)]
    previous = None
    for line in _merged(runs):
        if line != previous:
            yield line[:-1]
            previous = line


@dataclass(frozen=True)
class InputList:
    """The sorted, unique input locations of a build in a text file.

    Attributes:
        path: the file, one location per line.
        count: how many locations it holds.
        digest: SHA-256 of their signatures (``input_signature``), newline-joined: a rerun
            on other or edited inputs rebuilds.
    """

    path: Path
    count: int
    digest: str

    def __iter__(self) -> Iterator[str]:
        with self.path.open() as f:
            for line in f:
                yield line.rstrip("\n")

    def chunks(self, size: int) -> Iterator[tuple[int, tuple[str, ...]]]:
        """(index, locations) of consecutive runs of ``size`` locations, read as they are asked for."""
        locations = iter(self)
        for index in itertools.count():
            chunk = tuple(itertools.islice(locations, size))
            if not chunk:
                return
            yield index, chunk


def write_input_list(locations: Iterable[str], path: str | Path) -> InputList:
    """Sort and de-duplicate ``locations`` (any order, any number) into the file ``path``.

    Locations containing a newline cannot be listed one a line and are refused.

    Raises:
        ValueError: a location with a line break in it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    count = 0

    def checked() -> Iterator[str]:
        for location in locations:
            if "\n" in location or "\r" in location:
                raise ValueError(f"{location!r}: a location with a line break cannot be sharded")
            yield location

    tmp = path.with_name(path.name + ".tmp")
    with tempfile.TemporaryDirectory(prefix=".runs-", dir=path.parent) as work, tmp.open("w") as out:
        for location in _sorted_unique(checked(), Path(work)):
            digest.update((b"\n" if count else b"") + input_signature(location).encode())
            out.write(location + "\n")
            count += 1
    tmp.replace(path)
    return InputList(path, count, digest.hexdigest())
