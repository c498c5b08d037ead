"""Read shards back for training: a deterministic, resumable WebDataset stream of image batches.

``train_loader(source, ...)`` is the one function training uses. ``source`` is a manifest (or a
directory holding ``manifest.json``), or shard URLs / brace patterns (``s3://b/train-{000000..000099}.tar``);
local paths and any fsspec URL work alike.

How batches are made (per rank)::

    rank's shards (split_by_node: disjoint when #shards >= world size)
      └─ lane ℓ = one DataLoader worker (split_by_worker): shards drawn with replacement
         (resampled) from rng(seed, rank, ℓ, epoch) ─► tar samples (webdataset) ─► shuffle buffer
         ─► skip already-consumed samples ─► decode ─► random crop (rng per sample) ─► batch
      every lane epoch is ``epoch_batches`` batches long (webdataset's ``with_epoch`` counts per
      worker, so this is per lane)

The DataLoader takes batches from its workers round-robin, so global batch b comes from lane
``b % W`` at local index ``b // W``. After a restart at batch s, worker w serves lane
``(s + w) % W`` from local index ``(s + w) // W``: with the same seed, world size and worker count
the stream continues exactly where it stopped, which makes ``--resume`` bit-exact.

Batches are uint8 (B, 3, crop, crop) in [0, 255], a quarter of float32's bytes on the worker ->
main process and host -> GPU hops (+23-38 % reader throughput on 2 cores); ``unit_range``
turns them into float in [0, 1] where they are used (on the GPU, for training).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import random
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import fsspec
import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shards.images import ImageDecodeError, decode_image
from shards.manifest import Manifest, is_remote, manifest_path, shard_urls, stream_options
from shards.remote import with_retries
from shards.tarfiles import iter_tar

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


class ShardError(ValueError):
    """The shard source is missing, empty or unusable."""


def resolve_shards(source: str | Path | list[str], split: str = "train", skip_missing: bool = False) -> list[str]:
    """Shard URLs from a manifest, a directory with a manifest, or URLs/brace patterns.

    Local shard files are checked to exist: a missing one is an error, or with ``skip_missing``
    a warning (and it is left out).

    Raises:
        ShardError: nothing to read (missing manifest or shard files, no shards of ``split``).
    """
    items = [str(s) for s in source] if isinstance(source, list | tuple) else [str(source)]
    urls: list[str] = []
    for item in items:
        path = manifest_path(item)
        if path.endswith(".json"):
            if not is_remote(path) and not Path(path).is_file():
                raise ShardError(f"{path}: no such shard manifest")
            try:
                found = shard_urls(path, split)
                if not is_remote(path):  # a cheap check at open: sizes the manifest recorded
                    sizes = {s.name: s.bytes for s in Manifest.load(path).shards}
                    for url in found:
                        local = Path(url)
                        if local.is_file() and local.stat().st_size != sizes[local.name]:
                            raise ShardError(f"{url}: {local.stat().st_size} bytes, the manifest says "
                                             f"{sizes[local.name]} (a changed or damaged shard: rebuild or verify it)")
                urls += found
            except ValueError as exc:
                raise ShardError(str(exc)) from None
        else:
            urls += wds.shardlists.expand_urls(item)
    if not urls:
        raise ShardError(f"{', '.join(items)}: no {split} shards")
    missing = [u for u in urls if _local_path(u) and not _local_path(u).is_file()]
    if missing and (not skip_missing or len(missing) == len(urls)):
        raise ShardError(f"{len(missing)} of {len(urls)} {split} shards missing (first: {missing[0]})"
                         + ("" if len(missing) == len(urls) else "; set train.skip_bad_shards=true to skip them"))
    for url in missing:
        warnings.warn(f"{url}: missing shard skipped", stacklevel=2)
    return [u for u in urls if u not in missing]


def shards_for_rank(urls: list[str], rank: int, world_size: int) -> list[str]:
    """split_by_node: rank r gets urls[r::world]; disjoint across ranks, union is everything.

    With fewer shards than ranks every rank reads all shards (their random streams still differ).
    """
    if len(urls) < world_size:
        return list(urls)
    return urls[rank::world_size]


def _seed(*parts: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def _local_path(url: str) -> Path | None:
    """The file of a local URL (plain path or ``file://``), None for remote ones."""
    return None if is_remote(url) else Path(url.removeprefix("file://"))


def _open(url: str):
    """``fsspec.open(url, "rb")`` opened (see ``shards.manifest.stream_options``), retrying
    transient failures of remote URLs."""
    def opened():
        return fsspec.open(url, "rb", **stream_options(url)).open()

    return opened() if _local_path(url) else with_retries(opened)


def _tar_files(urls: Iterable[str], skip_bad: bool = False, distinct: int = 0) -> Iterator[dict]:
    """Members of each shard as webdataset file dicts, an end-of-shard marker after each shard.

    A missing or damaged shard raises ``ShardError`` naming it; with ``skip_bad`` it is
    skipped with a warning instead, until all ``distinct`` shards proved bad (then it raises:
    an endless stream of nothing must never spin silently). The next remote shard is opened in the
    background while this one is read, so the store's latency is paid once per shard at most and
    usually not at all.
    """
    bad: set[str] = set()
    with _ReadAhead(urls) as shards:
        for url, opened in shards:
            try:
                with opened.result() as stream:
                    for name, data in iter_tar(stream):
                        yield {"fname": name, "data": data, "__url__": url}
            except (OSError, ValueError) as exc:
                _bad_shard(url, exc, skip_bad, bad, distinct)
            yield {}


def _bad_shard(url: str, exc: Exception, skip_bad: bool, bad: set[str], distinct: int) -> None:
    """Raise ``ShardError`` for an unreadable shard, or (``skip_bad``) warn and count it."""
    reason = f"{url}: {exc.strerror or exc}" if isinstance(exc, OSError) else f"{url}: {exc}"
    if not skip_bad:
        raise ShardError(f"{reason} (set train.skip_bad_shards=true to skip bad shards)") from None
    bad.add(url)
    warnings.warn(f"{reason}; skipping the rest of this shard ({len(bad)} bad so far)", stacklevel=3)
    if distinct and len(bad) >= distinct:
        raise ShardError(f"every one of the {distinct} shards is unreadable (last: {reason})") from None


class _ReadAhead:
    """Iterate ``(url, future of the opened stream)``; the next remote shard is opened by a background
    thread while the caller reads the current one (local files are opened when their turn comes)."""

    def __init__(self, urls: Iterable[str]) -> None:
        self.urls = iter(urls)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="shard-read-ahead")
        self.pending: tuple[str, Future] | None = None

    def _submit(self) -> tuple[str, Future] | None:
        url = next(self.urls, None)
        if url is None:
            return None
        if is_remote(url):
            return url, self.pool.submit(_open, url)
        done: Future = Future()
        try:
            done.set_result(_open(url))
        except OSError as exc:
            done.set_exception(exc)
        return url, done

    def __iter__(self) -> Iterator[tuple[str, Future]]:
        self.pending = self._submit()
        while self.pending is not None:
            current = self.pending
            if is_remote(current[0]):
                self.pending = self._submit()  # starts opening the next one now
                yield current
            else:
                yield current
                self.pending = self._submit()

    def __enter__(self) -> _ReadAhead:
        return self

    def __exit__(self, *exc) -> None:
        if self.pending is not None and not self.pending[1].cancel():
            with contextlib.suppress(Exception):
                self.pending[1].result().close()  # opened ahead, never read
        self.pool.shutdown(wait=False)


def decode_crop(sample: dict, crop: int, rng: random.Random) -> torch.Tensor:
    """Decode a sample's image, upscale it if a side is below ``crop``, take a random crop.

    The image is decoded as the builder decodes it (``shards.images.decode_image``: one pixel
    limit for both). Returns a (3, crop, crop) uint8 tensor (see ``unit_range``).

    Raises:
        ShardError: naming the shard and the member: no image in the sample, or an undecodable one.
    """
    where = f"{sample.get('__url__', 'shard')}: member {sample.get('__key__', '?')}"
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise ShardError(f"{where}: no image in the sample")
    try:
        image = decode_image(sample[ext]).image
    except ImageDecodeError as exc:
        raise ShardError(f"{where}: {exc}") from None
    w, h = image.size
    if min(w, h) < crop:
        scale = crop / min(w, h)
        image = image.resize((max(crop, round(w * scale)), max(crop, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = image.size
    left, top = rng.randint(0, w - crop), rng.randint(0, h - crop)
    arr = np.asarray(image, dtype=np.uint8)[top:top + crop, left:left + crop]  # no Pillow limit on the view
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def unit_range(batch: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] -> float32 in [0, 1] (on the batch's device)."""
    return batch.float().div_(255)


class ShardStream(IterableDataset):
    """Endless, resumable stream of (B, 3, crop, crop) batches in [0, 1] for one rank.

    Args:
        urls: shard URLs (all ranks pass the same list).
        batch_size: images per batch.
        crop: square crop side, pixels.
        rank: this process's rank in the job (split_by_node).
        world_size: the job's number of processes.
        seed: base seed; the stream is a pure function of (seed, rank, world_size, workers).
        shuffle_buffer: samples in the shuffle buffer of each lane.
        epoch_batches: batches per lane epoch (bounds the work to skip on resume).
        start_batch: index of the first batch to produce (batches already consumed).
        num_workers: DataLoader workers that will iterate this dataset (0 = main process).
        skip_bad: skip (with a warning) instead of failing on a damaged or vanished shard.
    """

    def __init__(self, urls: list[str], batch_size: int, crop: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle_buffer: int = 1000, epoch_batches: int = 1000, start_batch: int = 0,
                 num_workers: int = 0, skip_bad: bool = False) -> None:
        super().__init__()
        self.skip_bad = skip_bad
        self.urls = shards_for_rank(list(urls), rank, world_size)
        self.batch_size, self.crop = batch_size, crop
        self.rank, self.seed = rank, seed
        self.shuffle_buffer, self.epoch_batches = shuffle_buffer, epoch_batches
        self.start_batch, self.lanes = start_batch, max(1, num_workers)

    def _lane_samples(self, lane: int, epoch: int) -> Iterator[dict]:
        rng = random.Random(_seed(self.seed, self.rank, lane, epoch))
        urls = (rng.choice(self.urls) for _ in itertools.count())  # resampled: with replacement
        files = _tar_files(urls, self.skip_bad, len(set(self.urls)))
        samples = wds.tariterators.group_by_keys(files, handler=wds.warn_and_continue)
        initial = min(self.shuffle_buffer, 100)
        return wds.shuffle(self.shuffle_buffer, initial, rng=rng)(samples)

    def lane_batches(self, lane: int, start: int = 0) -> Iterator[torch.Tensor]:
        """Batches of one lane from its local index ``start`` on (deterministic)."""
        per_epoch = self.epoch_batches * self.batch_size
        first_epoch = start // self.epoch_batches
        for epoch in itertools.count(first_epoch):
            skip = (start - epoch * self.epoch_batches) * self.batch_size if epoch == first_epoch else 0
            stream = itertools.islice(self._lane_samples(lane, epoch), skip, per_epoch)
            batch = []
            for index, sample in enumerate(stream, start=skip):
                rng = random.Random(_seed(self.seed, self.rank, lane, epoch, index))
                try:
                    batch.append(decode_crop(sample, self.crop, rng))
                except ShardError as exc:
                    if not self.skip_bad:
                        raise ShardError(f"{exc} (set train.skip_bad_shards=true to skip bad samples)") from None
                    warnings.warn(f"{exc}; sample skipped", stacklevel=2)
                    continue
                if len(batch) == self.batch_size:
                    yield torch.stack(batch)
                    batch = []

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if workers != self.lanes:
            raise ShardError(f"ShardStream built for {self.lanes} workers, iterated by {workers}")
        position = self.start_batch + worker
        yield from self.lane_batches(position % self.lanes, position // self.lanes)


def train_loader(source: str | Path | list[str], batch_size: int, crop: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, num_workers: int = 0, shuffle_buffer: int = 1000, epoch_batches: int = 1000,
                 start_batch: int = 0, split: str = "train", skip_bad: bool = False,
                 pin_memory: bool = False) -> DataLoader:
    """The training data: a DataLoader over a ``ShardStream`` (batching happens in the workers);
    batches are uint8 (B, 3, crop, crop), see ``unit_range``.

    ``skip_bad``: see ``ShardStream``. ``pin_memory``: page-locked batches, so a CUDA copy
    with ``non_blocking=True`` overlaps the step instead of waiting for it.
    """
    stream = ShardStream(resolve_shards(source, split, skip_missing=skip_bad), batch_size, crop, rank=rank,
                         world_size=world_size, seed=seed, shuffle_buffer=shuffle_buffer,
                         epoch_batches=epoch_batches, start_batch=start_batch, num_workers=num_workers,
                         skip_bad=skip_bad)
    # A private generator: creating the iterator must not consume the global torch RNG, or a
    # resumed run (iterator created after the RNG state is restored) would diverge.
    return DataLoader(stream, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
                      prefetch_factor=4 if num_workers else None, generator=torch.Generator().manual_seed(seed),
                      pin_memory=pin_memory)


def iterate_images(source: str | Path | list[str], split: str = "val") -> Iterator[tuple[str, bytes, dict]]:
    """Every sample of a split once, in shard order: (key, image bytes, json record); for evaluation."""
    import json

    for url in resolve_shards(source, split):
        for sample in wds.tariterators.group_by_keys(_tar_files([url])):
            ext = next(e for e in IMAGE_EXTS if e in sample)
            yield sample["__key__"], sample[ext], json.loads(sample.get("json", b"{}"))


__all__ = ["Manifest", "ShardError", "ShardStream", "iterate_images", "resolve_shards", "shards_for_rank",
           "train_loader", "unit_range"]
