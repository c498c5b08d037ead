"""The shard manifest: what a build produced and what happened to every input.

``manifest.json`` (format ``cdc-shards/1``) lists every shard with its split, sample count, bytes
and SHA-256; totals; the quarantine list (source, reason) and the duplicate list (source,
duplicate_of); the build config; a digest of the input locations and a *corpus fingerprint*
(SHA-256 of every written sample's split and key, in shard order). It holds no timestamps, so
a resumed build writes the same bytes as an uninterrupted one.

Invariant, checked on load: ``written + quarantined + duplicates == scanned``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST_NAME = "manifest.json"
FORMAT = "cdc-shards/1"


def is_remote(location: str | Path) -> bool:
    """An fsspec URL other than a local file (``s3://``, ``https://``, ``gs://``, ...)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def manifest_path(source: str | Path) -> str:
    """A manifest, or a build's output directory / URL prefix holding one, as the manifest's location.

    Anything else (a shard file or brace pattern) comes back unchanged."""
    text = str(source)
    if is_remote(text):
        shard_like = text.endswith((".json", ".tar")) or "{" in text
        return text if shard_like else text.rstrip("/") + "/" + MANIFEST_NAME
    path = Path(text)
    return str(path / MANIFEST_NAME if path.is_dir() else path)


def stream_options(url: str) -> dict:
    """``fsspec.open`` options for reading ``url`` front to back: HTTP(S) in one streamed request
    (``block_size=0``), since range requests would pay the server's latency once per block."""
    return {"block_size": 0} if url.startswith(("http://", "https://")) else {}


def read_location(location: str) -> bytes:
    """The bytes of a local path or an fsspec URL."""
    if not is_remote(location):
        return Path(location.removeprefix("file://")).read_bytes()
    import fsspec

    with fsspec.open(location, "rb", **stream_options(location)) as f:
        return f.read()


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ShardInfo:
    """One shard of a manifest: name, split, sample count, bytes, SHA-256."""
    name: str
    split: str
    count: int
    bytes: int
    sha256: str


@dataclass
class Manifest:
    """A parsed ``manifest.json``; shard names are relative to the manifest's directory."""

    config: dict
    sources: list[str]
    inputs_digest: str
    fingerprint: str
    shards: list[ShardInfo]
    quarantine: list[dict] = field(default_factory=list)
    duplicates: list[dict] = field(default_factory=list)
    scanned: int = 0
    written: int = 0
    duplicate_samples: int = 0

    def samples(self, split: str | None = None) -> int:
        return sum(s.count for s in self.shards if split in (None, s.split))

    def totals(self) -> dict:
        return {
            "scanned": self.scanned,
            "written": self.written,
            "quarantined": len(self.quarantine),
            "duplicates": len(self.duplicates),
            "duplicate_samples": self.duplicate_samples,
            "samples": {split: self.samples(split) for split in ("train", "val")},
            "shards": {split: sum(s.split == split for s in self.shards) for split in ("train", "val")},
            "bytes": sum(s.bytes for s in self.shards),
        }

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "totals": self.totals(),
            "config": self.config,
            "sources": self.sources,
            "inputs_digest": self.inputs_digest,
            "shards": [asdict(s) for s in self.shards],
            "quarantine": self.quarantine,
            "duplicates": self.duplicates,
        }

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Parse a manifest (or the one in directory ``path``); raises ``ValueError`` if it is not one
        or its accounting is off."""
        path = manifest_path(path)
        try:
            data = json.loads(read_location(path))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a readable manifest ({exc})") from None
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} manifest")
        try:
            totals = data["totals"]
            manifest = cls(
                config=data["config"], sources=data["sources"], inputs_digest=data["inputs_digest"],
                fingerprint=data["fingerprint"], shards=[ShardInfo(**s) for s in data["shards"]],
                quarantine=data["quarantine"], duplicates=data["duplicates"], scanned=totals["scanned"],
                written=totals["written"], duplicate_samples=totals.get("duplicate_samples", 0),
            )
        except KeyError as exc:
            raise ValueError(f"{path}: incomplete manifest (no {exc.args[0]!r})") from None
        except (TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: malformed manifest ({exc})") from None
        for info in manifest.shards:  # a shard name never leaves the manifest's folder
            if not info.name or "/" in info.name or "\\" in info.name or info.name.startswith("."):
                raise ValueError(f"{path}: shard name {info.name!r} is not a file in the manifest's folder")
            if not isinstance(info.bytes, int) or info.bytes < 0:
                raise ValueError(f"{path}: shard {info.name}: invalid size {info.bytes!r}")
        if manifest.written + len(manifest.quarantine) + len(manifest.duplicates) != manifest.scanned:
            raise ValueError(f"{path}: accounting mismatch (written + quarantined + duplicates != scanned)")
        return manifest


def shard_urls(location: str | Path, split: str = "train") -> list[str]:
    """Paths or URLs of a manifest's shards of ``split`` (resolved next to the manifest)."""
    location = manifest_path(location)
    manifest = Manifest.load(location)
    if is_remote(location):
        base = location.rsplit("/", 1)[0]
        return [f"{base}/{s.name}" for s in manifest.shards if s.split == split]
    return [str(Path(location).parent / s.name) for s in manifest.shards if s.split == split]
