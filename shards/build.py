"""Build verified WebDataset shards from an image corpus: resumable, deterministic, parallel.

Stages (each a plain function, so the CLI and the Prefect flow ``shard-corpus`` share them)::

    expand_sources ─► plan_chunks ─► process_chunk × N ─► assemble ─► write_shard × M ─► finalize
                                     (decode, hash;       (dedup,      (deterministic    (manifest.json)
                                      staging tar+json)    split, pack) tar, verified)

* ``process_chunk`` writes ``OUT/.staging/chunk-NNNNNN.{tar,json}``; the JSON is written last, so a
  chunk with a JSON is complete and a rerun skips it.
* ``write_shard`` skips a shard whose members already match the plan (name and SHA-256 of every
  member) and rewrites anything else; tars are written to a temporary name and renamed.
* Everything is ordered by input location, so a build killed at any point and rerun produces the
  same manifest and byte-identical shards as an uninterrupted one.
* An fsspec URL as the output (``s3://bucket/prefix``) builds in a local work directory and then
  publishes the shards, manifest last (:mod:`shards.remote`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from shards.locks import exclusive_dir
from shards.manifest import MANIFEST_NAME, Manifest, ShardInfo, file_sha256, is_remote
from shards.process import BuildConfig, process_image
from shards.remote import publish, remote_up_to_date, work_dir_for
from shards.sources import expand_sources
from shards.tarfiles import read_tar, write_tar

STAGING = ".staging"
OWNED = ".owned-shards.json"
"""Shard names that builds in this directory wrote and a manifest may no longer name: the only tars
the builder ever removes (a folder can hold a user's own ``backup-000001.tar``)."""
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Chunk:
    """A contiguous range of the sorted input locations, processed as one task."""

    index: int
    sources: tuple[str, ...]


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


@dataclass
class Assembly:
    """Result of :func:`assemble`: the shard plan and the accounting of every input."""

    shards: list[ShardPlan]
    scanned: int
    written: int
    quarantine: list[dict]
    duplicates: list[dict]
    duplicate_samples: int


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


def inputs_digest(locations: list[str]) -> str:
    """SHA-256 of the sorted inputs' signatures (a rerun on other or edited inputs rebuilds)."""
    return hashlib.sha256("\n".join(map(input_signature, locations)).encode()).hexdigest()


def plan_chunks(locations: list[str], cfg: BuildConfig) -> list[Chunk]:
    """Split the sorted locations into chunks of ``cfg.chunk_size``."""
    cs = cfg.chunk_size
    return [Chunk(i, tuple(locations[s : s + cs])) for i, s in enumerate(range(0, len(locations), cs))]


def _staging(out: Path) -> Path:
    return out / STAGING


def prepare_staging(out: Path, cfg: BuildConfig) -> None:
    """Create the staging area; wipe it if it was made with a different build config."""
    staging = _staging(out)
    marker = staging / "config.json"
    wanted = json.dumps(cfg.to_dict(), sort_keys=True)
    if marker.exists() and marker.read_text() != wanted:
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    marker.write_text(wanted)


def process_chunk(chunk: Chunk, out: str | Path, cfg: BuildConfig) -> Path:
    """Decode and convert one chunk into the staging area (skipped if already complete)."""
    staging = _staging(Path(out))
    index_path = staging / f"chunk-{chunk.index:06d}.json"
    signatures = [input_signature(source) for source in chunk.sources]
    if index_path.exists():
        done = json.loads(index_path.read_text())
        if [r.get("signature") for r in done] == signatures:
            return index_path
    records, members = [], []
    for slot, source in enumerate(chunk.sources):
        rec = process_image(source, cfg)
        entry = {"source": rec.source, "signature": signatures[slot], "status": rec.status, "reason": rec.reason,
                 "image_hash": rec.image_hash, "split": rec.split, "samples": []}
        for sample in rec.samples:
            parts = sample.members()
            members.extend((f"{slot:06d}.{name}", data) for name, data in parts)  # duplicates stay apart
            entry["samples"].append(
                {"key": sample.key, "members": [[n, hashlib.sha256(d).hexdigest(), len(d)] for n, d in parts]})
        records.append(entry)
    write_tar(staging / f"chunk-{chunk.index:06d}.tar", members)
    tmp = index_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(records))
    tmp.replace(index_path)  # the index is the completion marker: written last, atomically
    return index_path


def assemble(out: str | Path, chunks: list[Chunk], cfg: BuildConfig) -> Assembly:
    """Deduplicate (first occurrence in location order wins), split and pack samples into shards."""
    staging = _staging(Path(out))
    per_split: dict[str, list[SampleRef]] = {s: [] for s in SPLITS}
    first_seen: dict[str, str] = {}
    keys: set[str] = set()
    quarantine, duplicates = [], []
    scanned = written = dup_samples = 0
    for chunk in chunks:
        for slot, rec in enumerate(json.loads((staging / f"chunk-{chunk.index:06d}.json").read_text())):
            scanned += 1
            if rec["status"] != "ok":
                quarantine.append({"source": rec["source"], "reason": rec["reason"]})
            elif rec["image_hash"] in first_seen:
                duplicates.append({"source": rec["source"], "duplicate_of": first_seen[rec["image_hash"]]})
            else:
                first_seen[rec["image_hash"]] = rec["source"]
                written += 1
                for s in rec["samples"]:
                    if s["key"] in keys:  # e.g. two identical patches of different images
                        dup_samples += 1
                        continue
                    keys.add(s["key"])
                    members = tuple((n, h, size) for n, h, size in s["members"])
                    per_split[rec["split"]].append(SampleRef(chunk.index, slot, s["key"], members))
    shards = []
    for split in SPLITS:
        current: list[SampleRef] = []
        size = 0
        for ref in per_split[split]:
            if current and (len(current) >= cfg.max_count or size + ref.size > cfg.max_bytes):
                shards.append(ShardPlan(f"{split}-{sum(s.split == split for s in shards):06d}.tar", split,
                                        tuple(current)))
                current, size = [], 0
            current.append(ref)
            size += ref.size
        if current:
            shards.append(ShardPlan(f"{split}-{sum(s.split == split for s in shards):06d}.tar", split, tuple(current)))
    return Assembly(shards, scanned, written, quarantine, duplicates, dup_samples)


def _expected(plan: ShardPlan) -> list[tuple[str, str]]:
    return [(name, sha) for ref in plan.samples for name, sha, _ in ref.members]


def _matches(path: Path, plan: ShardPlan) -> bool:
    try:
        actual = [(n, hashlib.sha256(d).hexdigest()) for n, d in read_tar(path)]
    except Exception:  # truncated / corrupt tar: rewrite it
        return False
    return actual == _expected(plan)


def write_shard(plan: ShardPlan, out: str | Path) -> ShardInfo:
    """Write one shard from staging (or keep it if it is already complete and correct)."""
    out = Path(out)
    path = out / plan.name
    if not (path.exists() and _matches(path, plan)):
        staged: dict[int, dict[str, bytes]] = {
            chunk: dict(read_tar(_staging(out) / f"chunk-{chunk:06d}.tar"))
            for chunk in sorted({ref.chunk for ref in plan.samples})
        }
        write_tar(path, ((name, staged[ref.chunk][f"{ref.slot:06d}.{name}"])
                         for ref in plan.samples for name, _, _ in ref.members))
    return ShardInfo(name=plan.name, split=plan.split, count=len(plan.samples), bytes=path.stat().st_size,
                     sha256=file_sha256(path))


def finalize(out: str | Path, sources: list[str], locations: list[str], cfg: BuildConfig, asm: Assembly,
             infos: list[ShardInfo], keep_staging: bool = False) -> Manifest:
    """Write ``manifest.json`` (atomically), remove stale shards and, unless asked, the staging area."""
    out = Path(out)
    fingerprint = hashlib.sha256()
    for plan in asm.shards:
        for ref in plan.samples:
            fingerprint.update(f"{plan.split} {ref.key}\n".encode())
    manifest = Manifest(
        config=cfg.to_dict(), sources=list(sources), inputs_digest=inputs_digest(locations),
        fingerprint=fingerprint.hexdigest(), shards=infos, quarantine=asm.quarantine, duplicates=asm.duplicates,
        scanned=asm.scanned, written=asm.written, duplicate_samples=asm.duplicate_samples,
    )
    manifest.save(out / MANIFEST_NAME)
    planned = {i.name for i in infos}
    ledger = out / OWNED
    owned = set(json.loads(ledger.read_text())) if ledger.is_file() else set()
    for stale in sorted(owned - planned):  # only what a build here wrote: never a user's own *-NNNNNN.tar
        (out / stale).unlink(missing_ok=True)
    ledger.unlink(missing_ok=True)
    if not keep_staging:
        shutil.rmtree(_staging(out), ignore_errors=True)
    return manifest


def record_owned(out: Path, names: list[str]) -> None:
    """Add ``names`` (shards about to be written) and the current manifest's shards to the ledger
    (:data:`OWNED`) before anything is written, so that a build killed half-way still knows its files."""
    ledger = out / OWNED
    owned = set(json.loads(ledger.read_text())) if ledger.is_file() else set()
    with contextlib.suppress(OSError, ValueError, KeyError):
        owned |= {info.name for info in Manifest.load(out / MANIFEST_NAME).shards}
    tmp = ledger.with_name(ledger.name + ".tmp")
    tmp.write_text(json.dumps(sorted(owned | set(names))))
    tmp.replace(ledger)


def up_to_date(out: Path, locations: list[str], cfg: BuildConfig) -> Manifest | None:
    """The existing manifest if it was built from the same inputs and config and its shards verify."""
    path = out / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        manifest = Manifest.load(path)
    except (ValueError, KeyError):
        return None
    if manifest.config != cfg.to_dict() or manifest.inputs_digest != inputs_digest(locations):
        return None
    for info in manifest.shards:
        shard = out / info.name
        if not shard.exists() or shard.stat().st_size != info.bytes or file_sha256(shard) != info.sha256:
            return None
    return manifest


Mapper = Callable[..., Iterator]
"""``mapper(fn, items, *args)`` yields ``fn(item, *args)`` for every item, in order."""


def serial_map(fn: Callable, items: Iterable, *args) -> Iterator:
    """The mapper that runs everything in this process."""
    for item in items:
        yield fn(item, *args)


def _die_with_parent() -> None:
    """Pool-worker initializer: on Linux, the kernel kills the worker when the builder dies (even by
    ``kill -9``), so no orphan keeps decoding images for nobody."""
    import contextlib
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):  # not Linux: workers exit at their next queue read
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def process_pool_map(workers: int) -> Mapper:
    """A mapper running on ``workers`` processes (serial when ``workers`` is 1)."""
    if workers <= 1:
        return serial_map

    def mapper(fn: Callable, items: Iterable, *args) -> Iterator:
        with ProcessPoolExecutor(workers, initializer=_die_with_parent) as pool:
            futures = [pool.submit(fn, item, *args) for item in items]
            for future in futures:
                yield future.result()

    return mapper


def build(sources: list[str], out: str | Path, cfg: BuildConfig, mapper: Mapper = serial_map,
          progress: bool = False, keep_staging: bool = False, work_dir: str | Path | None = None) -> Manifest:
    """Build (or resume, or confirm up to date) the shards of ``sources`` in ``out``.

    Args:
        out: a directory, or an fsspec URL (``s3://bucket/prefix``): then the build runs in
            ``work_dir`` (default: a cache directory per URL) and is published there.
        mapper: how the per-chunk and per-shard tasks run (serial, a process pool, Prefect tasks).

    Raises:
        shards.sources.SourceError: a source directory or list file does not exist.
        OSError: the remote store cannot be written (after retries).
    """
    locations = expand_sources(sources)
    if not is_remote(out):
        return _build_local(sources, locations, Path(out), cfg, mapper, progress, keep_staging)
    url = str(out).rstrip("/")
    existing = remote_up_to_date(url, inputs_digest(locations), cfg.to_dict())
    if existing is not None:
        return existing
    local = Path(work_dir) if work_dir else work_dir_for(url)
    manifest = _build_local(sources, locations, local, cfg, mapper, progress, keep_staging)
    publish(local, manifest, url, progress)
    return manifest


def _build_local(sources: list[str], locations: list[str], out: Path, cfg: BuildConfig, mapper: Mapper,
                 progress: bool, keep_staging: bool) -> Manifest:
    with exclusive_dir(out, "shard build"):
        existing = up_to_date(out, locations, cfg)
        if existing is not None:
            if not keep_staging:  # a build killed after its manifest, before cleaning up
                shutil.rmtree(_staging(out), ignore_errors=True)
            return existing
        return _build_locked(sources, locations, out, cfg, mapper, progress, keep_staging)


def _build_locked(sources: list[str], locations: list[str], out: Path, cfg: BuildConfig, mapper: Mapper,
                  progress: bool, keep_staging: bool) -> Manifest:
    from tqdm import tqdm

    prepare_staging(out, cfg)
    chunks = plan_chunks(locations, cfg)
    with tqdm(total=len(locations), desc="decode", unit="img", disable=not progress) as bar:
        for chunk, _ in zip(chunks, mapper(process_chunk, chunks, out, cfg), strict=True):
            bar.update(len(chunk.sources))
    asm = assemble(out, chunks, cfg)
    record_owned(out, [plan.name for plan in asm.shards])
    infos = []
    with tqdm(total=len(asm.shards), desc="write", unit="shard", disable=not progress) as bar:
        for info in mapper(write_shard, asm.shards, out):
            infos.append(info)
            bar.update(1)
    return finalize(out, sources, locations, cfg, asm, infos, keep_staging)
