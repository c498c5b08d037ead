"""Assembling processed chunks into shard plans: de-duplicate, split and pack, in bounded memory.

The chunks' records are read one chunk at a time, in input order. What must be remembered across
the whole corpus (the content hash of every image kept, the key of every sample kept) lives in a
SQLite table in the staging area, not in memory; the shard plans are written to disk as they fill
(one JSON line each) and read back lazily by the shard writers. The coordinator's memory is then
that of one chunk and one shard, whatever the corpus size; only the quarantine and duplicate lists
(which the manifest records in full) grow, with the bad inputs.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SPLITS = ("train", "val")


@dataclass(frozen=True)
class SampleRef:
    """A sample in the staging area: its chunk, slot, key and members."""

    chunk: int
    slot: int  # position of the input within its chunk: staging names are "{slot:06d}.{name}"
    key: str
    members: tuple[tuple[str, str, int], ...]  # (member name, sha256, size)

    @property
    def size(self) -> int:
        return sum(m[2] for m in self.members)


@dataclass(frozen=True)
class ShardPlan:
    """The samples (in order) of one shard to write."""

    name: str
    split: str
    samples: tuple[SampleRef, ...]

    def to_json(self) -> str:
        return json.dumps([self.name, self.split, [[r.chunk, r.slot, r.key, r.members] for r in self.samples]])

    @classmethod
    def from_json(cls, line: str) -> ShardPlan:
        name, split, samples = json.loads(line)
        return cls(name, split, tuple(SampleRef(c, s, k, tuple(tuple(m) for m in members))
                                      for c, s, k, members in samples))


@dataclass
class Assembly:
    """Result of ``assemble``: the shard plans (on disk, train then val) and the accounting of
    every input."""

    plan_files: tuple[Path, ...]
    shard_names: list[str]
    scanned: int = 0
    written: int = 0
    quarantine: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    duplicate_samples: int = 0

    def plans(self) -> Iterator[ShardPlan]:
        """Every shard plan in order, read as it is asked for."""
        for path in self.plan_files:
            with path.open() as f:
                yield from (ShardPlan.from_json(line) for line in f)

    def fingerprint(self) -> str:
        """SHA-256 of every written sample's split and key, in shard order (the corpus fingerprint)."""
        digest = hashlib.sha256()
        for plan in self.plans():
            for ref in plan.samples:
                digest.update(f"{plan.split} {ref.key}\n".encode())
        return digest.hexdigest()


class _Packer:
    """Packs one split's samples into shards of at most ``max_count`` samples and ``max_bytes``,
    writing each full shard's plan as a line of ``path``."""

    def __init__(self, split: str, path: Path, max_count: int, max_bytes: int) -> None:
        self.split, self.max_count, self.max_bytes = split, max_count, max_bytes
        self.file = path.open("w")
        self.names: list[str] = []
        self.current: list[SampleRef] = []
        self.size = 0

    def add(self, ref: SampleRef) -> None:
        if self.current and (len(self.current) >= self.max_count or self.size + ref.size > self.max_bytes):
            self.flush()
        self.current.append(ref)
        self.size += ref.size

    def flush(self) -> None:
        if self.current:
            plan = ShardPlan(f"{self.split}-{len(self.names):06d}.tar", self.split, tuple(self.current))
            self.file.write(plan.to_json() + "\n")
            self.names.append(plan.name)
            self.current, self.size = [], 0

    def close(self) -> None:
        self.flush()
        self.file.close()


def assemble(staging: Path, chunks: int, max_count: int, max_bytes: int) -> Assembly:
    """De-duplicate (first occurrence in input order wins), split and pack the samples of the
    ``chunks`` processed chunks in ``staging`` into shard plans.

    Args:
        staging: the build's staging area (``chunk-NNNNNN.json`` records of every chunk).
        max_count: the most samples in one shard.
        max_bytes: the most bytes in one shard.
    """
    db_path = staging / "assembly.sqlite"
    db_path.unlink(missing_ok=True)  # a scratch index: rebuilt by every assembly
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE TABLE images (hash TEXT PRIMARY KEY, source TEXT NOT NULL) WITHOUT ROWID")
    db.execute("CREATE TABLE keys (key TEXT PRIMARY KEY) WITHOUT ROWID")
    packers = {split: _Packer(split, staging / f"plans-{split}.jsonl", max_count, max_bytes) for split in SPLITS}
    asm = Assembly(tuple(staging / f"plans-{split}.jsonl" for split in SPLITS), [])
    try:
        for chunk in range(chunks):
            records = json.loads((staging / f"chunk-{chunk:06d}.json").read_text())
            db.execute("BEGIN")
            for slot, rec in enumerate(records):
                asm.scanned += 1
                if rec["status"] != "ok":
                    asm.quarantine.append({"source": rec["source"], "reason": rec["reason"]})
                    continue
                if db.execute("INSERT OR IGNORE INTO images VALUES (?, ?)", (rec["image_hash"], rec["source"])
                              ).rowcount == 0:
                    first = db.execute("SELECT source FROM images WHERE hash = ?", (rec["image_hash"],)).fetchone()
                    asm.duplicates.append({"source": rec["source"], "duplicate_of": first[0]})
                    continue
                asm.written += 1
                for s in rec["samples"]:
                    if db.execute("INSERT OR IGNORE INTO keys VALUES (?)", (s["key"],)).rowcount == 0:
                        asm.duplicate_samples += 1  # e.g. two identical patches of different images
                        continue
                    members = tuple((n, h, size) for n, h, size in s["members"])
                    packers[rec["split"]].add(SampleRef(chunk, slot, s["key"], members))
            db.execute("COMMIT")
    finally:
        for packer in packers.values():
            packer.close()
        db.close()
        db_path.unlink(missing_ok=True)
    asm.shard_names = [name for split in SPLITS for name in packers[split].names]
    return asm
