"""Build verified WebDataset shards from an image corpus: resumable, deterministic, parallel.

Stages (each a plain function, so the CLI and the Prefect flow ``shard-corpus`` share them)::

    input list ─► plan_chunks ─► process_chunk × N ─► assemble ─► write_shard × M ─► finalize
    (sorted on                       (decode, hash;       (dedup,      (deterministic    (manifest.json)
     disk)                            staging tar+json)    split, pack) tar, verified)

* ``process_chunk`` writes ``OUT/.staging/chunk-NNNNNN.{tar,json}``; the JSON is written last, so a
  chunk with a JSON is complete and a rerun skips it.
* ``write_shard`` skips a shard whose members already match the plan (name and SHA-256 of every
  member) and rewrites anything else; tars are written to a temporary name and renamed.
* Everything is ordered by input location, so a build killed at any point and rerun produces the
  same manifest and byte-identical shards as an uninterrupted one.
* An fsspec URL as the output (``s3://bucket/prefix``) builds in a local work directory and then
  publishes the shards, manifest last (``shards.remote``).
* The building process holds neither the input list (``shards.inputs``) nor the per-sample
  plans (``shards.assembly``) in memory, and the mappers keep a bounded number of tasks in
  flight: its memory does not grow with the corpus.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from shards.assembly import Assembly, ShardPlan, assemble
from shards.inputs import InputList, input_signature, write_input_list
from shards.locks import exclusive_dir
from shards.manifest import MANIFEST_NAME, Manifest, ShardInfo, file_sha256, is_remote
from shards.process import BuildConfig, process_image
from shards.remote import publish, remote_up_to_date, work_dir_for
from shards.sources import iter_sources
from shards.tarfiles import read_tar, write_tar

STAGING = ".staging"
OWNED = ".owned-shards.json"
"""Shard names that builds in this directory wrote and a manifest may no longer name: the only tars
the builder ever removes (a folder can hold a user's own ``backup-000001.tar``)."""
INPUTS = ".inputs.txt"
"""The build's sorted input list (``shards.inputs``), removed when the build ends."""


@dataclass(frozen=True)
class Chunk:
    """A contiguous range of the sorted input locations, processed as one task."""

    index: int
    sources: tuple[str, ...]


def plan_chunks(inputs: InputList, cfg: BuildConfig) -> Iterator[Chunk]:
    """The chunks of ``cfg.chunk_size`` consecutive inputs, read from the input list as asked for."""
    for index, sources in inputs.chunks(cfg.chunk_size):
        yield Chunk(index, sources)


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


def finalize(out: str | Path, sources: list[str], inputs: InputList, cfg: BuildConfig, asm: Assembly,
             infos: list[ShardInfo], keep_staging: bool = False) -> Manifest:
    """Write ``manifest.json`` (atomically), remove stale shards and, unless asked, the staging area."""
    out = Path(out)
    manifest = Manifest(
        config=cfg.to_dict(), sources=list(sources), inputs_digest=inputs.digest, fingerprint=asm.fingerprint(),
        shards=infos, quarantine=asm.quarantine, duplicates=asm.duplicates, scanned=asm.scanned,
        written=asm.written, duplicate_samples=asm.duplicate_samples,
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
    (``OWNED``) before anything is written, so that a build killed half-way still knows its files."""
    ledger = out / OWNED
    owned = set(json.loads(ledger.read_text())) if ledger.is_file() else set()
    with contextlib.suppress(OSError, ValueError, KeyError):
        owned |= {info.name for info in Manifest.load(out / MANIFEST_NAME).shards}
    tmp = ledger.with_name(ledger.name + ".tmp")
    tmp.write_text(json.dumps(sorted(owned | set(names))))
    tmp.replace(ledger)


def up_to_date(out: Path, digest: str, cfg: BuildConfig) -> Manifest | None:
    """The existing manifest if it was built from the same inputs and config and its shards verify."""
    path = out / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        manifest = Manifest.load(path)
    except (ValueError, KeyError):
        return None
    if manifest.config != cfg.to_dict() or manifest.inputs_digest != digest:
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
    """A mapper running on ``workers`` processes (serial when ``workers`` is 1), with at most two
    tasks per process in flight: the items are consumed as the results come back."""
    if workers <= 1:
        return serial_map

    def mapper(fn: Callable, items: Iterable, *args) -> Iterator:
        with ProcessPoolExecutor(workers, initializer=_die_with_parent) as pool:
            pending: deque = deque()
            for item in items:
                pending.append(pool.submit(fn, item, *args))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

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
    locations = iter_sources(sources)  # every source checked before anything is created
    url = str(out).rstrip("/") if is_remote(out) else None
    local = Path(out) if url is None else Path(work_dir) if work_dir else work_dir_for(url)
    with exclusive_dir(local, "shard build"):
        inputs = write_input_list(locations, local / INPUTS)
        try:
            existing = remote_up_to_date(url, inputs.digest, cfg.to_dict()) if url else None
            if existing is not None:
                return existing
            manifest = up_to_date(local, inputs.digest, cfg)
            if manifest is not None:
                if not keep_staging:  # a build killed after its manifest, before cleaning up
                    shutil.rmtree(_staging(local), ignore_errors=True)
            else:
                manifest = _build_locked(sources, inputs, local, cfg, mapper, progress, keep_staging)
        finally:
            inputs.path.unlink(missing_ok=True)
        if url:
            publish(local, manifest, url, progress)
        return manifest


def _build_locked(sources: list[str], inputs: InputList, out: Path, cfg: BuildConfig, mapper: Mapper,
                  progress: bool, keep_staging: bool) -> Manifest:
    from tqdm import tqdm

    prepare_staging(out, cfg)
    with tqdm(total=inputs.count, desc="decode", unit="img", disable=not progress) as bar:
        for index, _ in enumerate(mapper(process_chunk, plan_chunks(inputs, cfg), out, cfg)):
            bar.update(min(cfg.chunk_size, inputs.count - index * cfg.chunk_size))
    asm = assemble(_staging(out), math.ceil(inputs.count / cfg.chunk_size), cfg.max_count, cfg.max_bytes)
    record_owned(out, asm.shard_names)
    infos = []
    with tqdm(total=len(asm.shard_names), desc="write", unit="shard", disable=not progress) as bar:
        for info in mapper(write_shard, asm.plans(), out):
            infos.append(info)
            bar.update(1)
    return finalize(out, sources, inputs, cfg, asm, infos, keep_staging)
