"""A development corpus of real photographs that exists on a machine without internet.

Two offline sources, both real photographs (and a few rendered wallpapers):

* the sample photos shipped inside installed wheels (scikit-image, scikit-learn, matplotlib);
* the full-resolution wallpapers of Debian packages, fetched with ``apt-get download`` (the Debian
  mirror is reachable where PyPI is) and unpacked with ``dpkg -x``; each ``.deb`` is checked
  against the SHA-256 that ``apt-cache show`` lists and kept in a cache directory.

The packages ``mate-backgrounds`` and ``plasma-workspace-wallpapers`` are **reserved for independent
evaluation** and refused here, so nothing trained, tuned or tested with this corpus has seen them.

The images are sharded with the project's own builder (``shards.build.build``), wallpapers
downscaled to ``max_shorter`` pixels on their shorter side (4K wallpapers are mostly smooth at full
resolution; nothing is upscaled), with a held-out ``val`` split **by image** (the builder splits by
content hash before any crop, so no image contributes to both splits)::

    python scripts/offline_corpus.py -o runs/devcorpus     # -> runs/devcorpus/shards/manifest.json

Where ``apt-get`` is missing or the mirror unreachable, the corpus falls back to the wheel photos
and says so on stderr and in ``provenance.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from shards.build import build, process_pool_map
from shards.manifest import Manifest
from shards.process import BuildConfig

DEBIAN_PACKAGES = ("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04", "lomiri-wallpapers", "ukui-wallpapers",
                   "gnome-backgrounds")
RESERVED_PACKAGES = frozenset({"mate-backgrounds", "plasma-workspace-wallpapers"})
"""Independent evaluation only: never used for training, tuning or tests."""

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
DEFAULT_CACHE = Path.home() / ".cache" / "cdc" / "debs"


class CorpusError(RuntimeError):
    """A requested source cannot be used (reserved package, checksum mismatch)."""


@dataclass(frozen=True)
class CorpusFile:
    """One image of the corpus and where it came from."""

    path: str
    origin: str  # "wheel:<package>" or "deb:<package>=<version>"
    sha256: str


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wheel_photos(folder: Path) -> list[CorpusFile]:
    """Write the photos shipped inside scikit-image, scikit-learn and matplotlib as PNGs."""
    import matplotlib.cbook as cbook
    import numpy as np
    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_sample_image

    folder.mkdir(parents=True, exist_ok=True)
    arrays = [(f"{name}.png", "scikit-image", getattr(data, name)()) for name in SKIMAGE_PHOTOS]
    arrays += [(name.replace(".jpg", ".png"), "scikit-learn", load_sample_image(name))
               for name in ("china.jpg", "flower.jpg")]
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        arrays.append(("grace_hopper.png", "matplotlib", np.asarray(Image.open(f).convert("RGB"))))
    files = []
    for name, package, array in arrays:
        path = folder / name
        if not path.is_file():
            Image.fromarray(array).save(path)
        files.append(CorpusFile(str(path), f"wheel:{package}", _sha256(path)))
    return files


def _apt_field(package: str, name: str) -> str:
    """A field of ``apt-cache show PACKAGE`` for the candidate version (the first record)."""
    text = subprocess.run(["apt-cache", "show", package], capture_output=True, text=True, check=True).stdout
    for line in text.split("\n\n")[0].splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise CorpusError(f"{package}: apt-cache show has no {name} field")


def fetch_deb(package: str, cache: Path) -> tuple[Path, str]:
    """The package's ``.deb`` in ``cache`` (downloaded once, SHA-256 verified); returns (path, version)."""
    if package in RESERVED_PACKAGES:
        raise CorpusError(f"{package} is reserved for independent evaluation; never train, tune or test on it")
    version, expected = _apt_field(package, "Version"), _apt_field(package, "SHA256")
    cache.mkdir(parents=True, exist_ok=True)
    candidates = [p for p in cache.glob(f"{package}_*.deb") if _sha256(p) == expected]
    if not candidates:
        subprocess.run(["apt-get", "download", "-q", package], cwd=cache, check=True, capture_output=True, text=True)
        candidates = [p for p in cache.glob(f"{package}_*.deb") if _sha256(p) == expected]
        if not candidates:
            raise CorpusError(f"{package}: downloaded .deb does not match the SHA-256 {expected[:16]}… of apt-cache")
    return candidates[0], version


def debian_wallpapers(package: str, cache: Path, folder: Path) -> list[CorpusFile]:
    """Unpack one package's ``.deb`` into ``folder/<package>`` and list its raster images."""
    deb, version = fetch_deb(package, cache)
    target = folder / package
    if not target.is_dir():
        tmp = folder / f".{package}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        subprocess.run(["dpkg", "-x", str(deb), str(tmp)], check=True, capture_output=True)
        tmp.rename(target)
    images = sorted(p for p in target.rglob("*") if p.is_file() and not p.is_symlink()
                    and p.suffix.lower() in IMAGE_SUFFIXES)
    return [CorpusFile(str(p), f"deb:{package}={version}", _sha256(p)) for p in images]


def assemble(out: Path, packages: tuple[str, ...] = DEBIAN_PACKAGES, cache: Path = DEFAULT_CACHE,
             warn=lambda msg: print(msg, file=sys.stderr)) -> tuple[list[CorpusFile], dict[str, str]]:
    """Collect the corpus files under ``out``; returns (files, {package: why it is missing})."""
    reserved = RESERVED_PACKAGES.intersection(packages)
    if reserved:
        raise CorpusError(f"{', '.join(sorted(reserved))}: reserved for independent evaluation; never train, "
                          "tune or test on it")
    files = wheel_photos(out / "wheels")
    missing: dict[str, str] = {}
    for package in packages:
        try:
            files += debian_wallpapers(package, cache, out / "debian")
        except (OSError, subprocess.CalledProcessError) as exc:
            reason = (getattr(exc, "stderr", "") or str(exc)).strip().splitlines()
            missing[package] = reason[-1] if reason else exc.__class__.__name__
            warn(f"WARNING: {package} unavailable ({missing[package]}); the corpus is built without it")
    return files, missing


def build_corpus(out: str | Path, packages: tuple[str, ...] = DEBIAN_PACKAGES, cache: Path = DEFAULT_CACHE,
                 max_shorter: int = 512, split_val: float = 0.15, workers: int = 2) -> Manifest:
    """Assemble the corpus in ``out`` and shard it into ``out/shards``; returns the manifest.

    Args:
        out: working directory (images, ``sources.txt``, ``provenance.json``, ``shards/``).
        packages: Debian packages to add to the wheel photos (reserved ones are refused).
        cache: where ``.deb`` files are kept between runs.
        max_shorter: downscale images whose shorter side is larger than this (pixels).
        split_val: fraction of images (by content hash) in the held-out ``val`` split.
        workers: shard-builder processes.
    """
    out = Path(out)
    files, missing = assemble(out, packages, cache)
    (out / "sources.txt").write_text("".join(f"{f.path}\n" for f in files))
    provenance = {"files": [vars(f) for f in files], "missing_packages": missing,
                  "reserved_packages_excluded": sorted(RESERVED_PACKAGES)}
    (out / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")
    cfg = BuildConfig(max_count=100, split_val=split_val, max_shorter=max_shorter)
    return build([str(out / "sources.txt")], out / "shards", cfg, mapper=process_pool_map(workers))


def corpus_options(p: argparse.ArgumentParser, output: str, cache: Path, held_out: str) -> None:
    """The options both corpus builders share: output folder, cache, size, held-out split, workers."""
    p.add_argument("-o", "--output", type=Path, default=Path(output))
    p.add_argument("--cache", type=Path, default=cache, help="package and photo cache (default: %(default)s)")
    p.add_argument("--max-shorter", type=int, default=512, help="downscale larger images to this shorter side (pixels)")
    p.add_argument("--split-val", type=float, default=0.15, help=f"fraction of images held out ({held_out})")
    p.add_argument("--workers", type=int, default=2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Build the offline development corpus (real photos) and shard it.")
    corpus_options(p, "runs/devcorpus", DEFAULT_CACHE, "by image")
    p.add_argument("--packages", nargs="*", default=list(DEBIAN_PACKAGES),
                   help="Debian wallpaper packages (none: wheel photos only)")
    args = p.parse_args(argv)
    try:
        manifest = build_corpus(args.output, tuple(args.packages), args.cache, args.max_shorter, args.split_val,
                                args.workers)
    except (CorpusError, ValueError) as exc:
        print(f"offline_corpus: error: {exc}", file=sys.stderr)
        return 2
    totals = manifest.totals()
    print(json.dumps(totals))
    print(f"shards: {args.output / 'shards' / 'manifest.json'}")
    return 0
