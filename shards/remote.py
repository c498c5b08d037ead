"""Shards on object storage: publish a local build to an fsspec URL (``s3://bucket/prefix``, ``gs://``...).

A remote build runs the ordinary local build in a work directory (staging, deterministic tars,
verification: everything a rerun resumes from), then uploads::

    shards, one object each ──► stale shards of an older build removed ──► manifest.json, last

An object store's PUT is atomic (an object is either absent or complete), so uploading a shard
straight to its final key never exposes half a shard; the manifest goes last, so a reader that
finds ``manifest.json`` finds every shard it names. A rerun (after a crash, or with more inputs)
skips the shards already there with the right size and is a no-op when the remote manifest matches
the inputs and config. Credentials and endpoints come from the usual environment (``AWS_*``,
``AWS_ENDPOINT_URL_S3``, ``FSSPEC_S3_*``), never from files in the repository.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from shards.manifest import MANIFEST_NAME, Manifest

RETRIES = 3  # after the first attempt, with 1, 2, 4 s pauses: a flaky object store, not a dead one
T = TypeVar("T")
WORK_ROOT = Path.home() / ".cache" / "cdc" / "shard-builds"


def work_dir_for(url: str) -> Path:
    """The default local work directory of a remote build (stable per URL, so reruns resume)."""
    return WORK_ROOT / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url.rstrip("/"))


def with_retries(fn: Callable[[], T], retries: int = RETRIES) -> T:
    """``fn()``, retried on transient ``OSError`` s (not on a missing file) with 1, 2, 4... s pauses;
    the last error is raised as it is."""
    for attempt in range(retries):
        try:
            return fn()
        except FileNotFoundError:
            raise
        except OSError:
            time.sleep(2**attempt)
    return fn()


def _retry(what: str, fn: Callable[[], object]) -> object:
    try:
        return with_retries(fn)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise OSError(f"{what}: failed after {1 + RETRIES} attempts ({exc})") from None


def remote_up_to_date(url: str, digest: str, config: dict) -> Manifest | None:
    """The remote manifest if it was built from the same inputs (``digest``) and ``config`` and every
    shard it names is there with its recorded size."""
    fs, root = _fs(url)
    try:
        manifest = Manifest.load(f"{url.rstrip('/')}/{MANIFEST_NAME}")
    except ValueError:
        return None
    if manifest.config != config or manifest.inputs_digest != digest:
        return None
    sizes = _sizes(fs, root)
    return manifest if all(sizes.get(s.name) == s.bytes for s in manifest.shards) else None


def _sizes(fs, root: str) -> dict[str, int]:
    """Shard object name -> size under ``root`` (one listing, not a request per shard)."""
    try:
        entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        return {}
    return {e["name"].rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in entries if e.get("type") != "directory"}


def publish(local: Path, manifest: Manifest, url: str, progress: bool = False) -> dict[str, int]:
    """Upload the shards of ``manifest`` from ``local`` to ``url``, remove stale shards there, then
    upload the manifest. Returns counts: ``uploaded``, ``kept`` (already there), ``removed``."""
    from tqdm import tqdm

    fs, root = _fs(url)
    fs.makedirs(root, exist_ok=True)
    present = _sizes(fs, root)
    previous = _previous_shards(url)
    counts = {"uploaded": 0, "kept": 0, "removed": 0}
    with tqdm(total=len(manifest.shards), desc="upload", unit="shard", disable=not progress) as bar:
        for info in manifest.shards:
            # kept only when the previous manifest there vouches for the same bytes: tars pad to 10 KiB,
            # so equal sizes alone are common between different shards
            known = previous.get(info.name)
            if present.get(info.name) == info.bytes and known is not None and known.sha256 == info.sha256:
                counts["kept"] += 1
            else:
                source, target = str(local / info.name), f"{root}/{info.name}"
                _retry(f"{url}/{info.name}", lambda s=source, t=target: fs.put_file(s, t))
                counts["uploaded"] += 1
            bar.update(1)
    planned = {info.name for info in manifest.shards}
    for name in sorted(present):
        if name in previous and name not in planned:  # an older build's shard: only those its manifest named
            _retry(f"{url}/{name}", lambda n=name: fs.rm_file(f"{root}/{n}"))
            counts["removed"] += 1
    _retry(f"{url}/{MANIFEST_NAME}", lambda: fs.put_file(str(local / MANIFEST_NAME), f"{root}/{MANIFEST_NAME}"))
    return counts


def _previous_shards(url: str) -> dict:
    """Shard name -> ``ShardInfo`` of the manifest already at ``url`` (empty if none or unreadable):
    the only objects a publish may replace without uploading, or remove."""
    try:
        return {info.name: info for info in Manifest.load(f"{url.rstrip('/')}/{MANIFEST_NAME}").shards}
    except (ValueError, KeyError):
        return {}
