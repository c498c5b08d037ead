"""Check a build, local or on object storage: re-hash every shard against the manifest and decode
every sample (remote shards are fetched one at a time into a temporary file)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from shards.images import ImageDecodeError, decode_image
from shards.manifest import Manifest, file_sha256, is_remote, manifest_path
from shards.tarfiles import read_tar


def verify(source: str | Path, progress: Callable[[int], None] | None = None) -> list[str]:
    """Return the problems found (empty when the build is intact).

    Checks, per shard: present, size and SHA-256 as recorded, readable tar, sample count, every
    sample has an image and a JSON record, and every image decodes.
    """
    location = manifest_path(source)
    manifest = Manifest.load(location)
    problems = []
    for info in manifest.shards:
        if is_remote(location):
            found = _check_remote(f"{location.rsplit('/', 1)[0]}/{info.name}", info.count, info.bytes, info.sha256)
        else:
            found = _check_shard(Path(location).parent / info.name, info.count, info.bytes, info.sha256)
        problems.extend(f"{info.name}: {p}" for p in found)
        if progress:
            progress(1)
    return problems


def _check_remote(url: str, count: int, size: int, sha256: str) -> list[str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "shard.tar"
        try:
            fs.get_file(path, str(local))
        except FileNotFoundError:
            return ["missing"]
        return _check_shard(local, count, size, sha256)


def _check_shard(path: Path, count: int, size: int, sha256: str) -> list[str]:
    if not path.exists():
        return ["missing"]
    problems = []
    if path.stat().st_size != size:
        problems.append(f"size {path.stat().st_size} != manifest {size}")
    if file_sha256(path) != sha256:
        problems.append("SHA-256 differs from the manifest")
    try:
        members = read_tar(path)
    except Exception as exc:  # tarfile raises several types for damage
        return [*problems, f"unreadable tar ({exc})"]
    samples: dict[str, dict[str, bytes]] = {}
    for name, data in members:
        key, _, ext = name.partition(".")
        samples.setdefault(key, {})[ext] = data
    if len(samples) != count:
        problems.append(f"{len(samples)} samples, manifest says {count}")
    for key, parts in samples.items():
        images = [ext for ext in parts if ext != "json"]
        if len(images) != 1 or "json" not in parts:
            problems.append(f"sample {key}: expected one image and one json, got {sorted(parts)}")
            continue
        try:
            json.loads(parts["json"])
            decode_image(parts[images[0]])
        except (ValueError, ImageDecodeError) as exc:
            problems.append(f"sample {key}: {exc}")
    return problems
