"""Evaluation datasets: DIV2K validation (100 images), Kodak (24), or any folder of images.

Known sets are looked up in ``--root`` (the folder holding the images, or its parent) or in the
cache ``$CDC_DATA`` (default ``~/.cache/cdc/datasets/<name>``), and downloaded from their official
locations into the cache with ``download=True``. Completeness is checked by exact file names and
count. Their authors publish no checksums, so the SHA-256 of every file is recorded at download
(``checksums.json``) and verified on every later use: a file changed on disk is an error.

Protocols (how an image is prepared before coding):

* ``full``   — native resolution (HiFiC-style patch FID/KID works on this).
* ``cdc768`` — shorter side resized to 768 (Lanczos), centre crop 768 x 768: the CDC paper's DIV2K protocol.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from shards.images import ImageDecodeError, decode_image
from shards.sources import IMAGE_SUFFIXES

PROTOCOLS = ("cdc768", "full")


class DatasetError(FileNotFoundError):
    """A dataset is missing, incomplete or altered; the message says how to get it."""


@dataclass(frozen=True)
class KnownDataset:
    """A public evaluation set: expected file names and where to download them."""
    name: str
    files: tuple[str, ...]
    urls: tuple[str, ...]  # one archive, or one URL per file
    archive_folder: str | None = None


KNOWN = {
    "kodak": KnownDataset(
        "kodak",
        tuple(f"kodim{i:02d}.png" for i in range(1, 25)),
        tuple(f"http://r0k.us/graphics/kodak/kodak/kodim{i:02d}.png" for i in range(1, 25)),
    ),
    "div2k": KnownDataset(
        "div2k",
        tuple(f"{i:04d}.png" for i in range(801, 901)),
        ("https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_valid_HR.zip",),
        archive_folder="DIV2K_valid_HR",
    ),
}


def cache_dir(name: str) -> Path:
    """Where ``name`` is cached: ``$CDC_DATA/<name>`` (default ``~/.cache/cdc/datasets``)."""
    return Path(os.environ.get("CDC_DATA", Path.home() / ".cache" / "cdc" / "datasets")) / name


def _how_to_get(ds: KnownDataset) -> str:
    target = cache_dir(ds.name)
    if ds.archive_folder:
        fetch = f"curl -L -o /tmp/{ds.name}.zip {ds.urls[0]} && unzip -j /tmp/{ds.name}.zip '*.png' -d {target}"
    else:
        fetch = f"mkdir -p {target} && cd {target} && curl -L --remote-name-all {' '.join(ds.urls[:2])} ..."
    return f"run `cdc eval ... --download`, or: {fetch}, or pass --root DIR"


def _find(ds: KnownDataset, root: Path) -> Path | None:
    for candidate in (root, root / ds.archive_folder if ds.archive_folder else root):
        if all((candidate / f).is_file() for f in ds.files):
            return candidate
    return None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verify_recorded(folder: Path, ds: KnownDataset) -> None:
    record = folder / "checksums.json"
    if not record.is_file():
        return
    expected = json.loads(record.read_text())
    for name in ds.files:
        if name in expected and _sha256(folder / name) != expected[name]:
            raise DatasetError(f"{folder / name}: SHA-256 differs from the one recorded at download; re-download")


def download(ds: KnownDataset) -> Path:
    """Fetch ``ds`` into its cache folder and record the files' SHA-256."""
    target = cache_dir(ds.name)
    target.mkdir(parents=True, exist_ok=True)
    try:
        if ds.archive_folder:
            archive = target / "download.zip"
            urllib.request.urlretrieve(ds.urls[0], archive)
            with zipfile.ZipFile(archive) as z:
                for member in z.namelist():
                    if Path(member).name in ds.files:
                        with z.open(member) as src, open(target / Path(member).name, "wb") as dst:
                            shutil.copyfileobj(src, dst)
            archive.unlink()
        else:
            for url, name in zip(ds.urls, ds.files, strict=True):
                urllib.request.urlretrieve(url, target / name)
    except OSError as exc:
        raise DatasetError(f"{ds.name}: download failed ({exc}); {_how_to_get(ds)}") from None
    if _find(ds, target) is None:
        raise DatasetError(f"{ds.name}: the download is incomplete; {_how_to_get(ds)}")
    (target / "checksums.json").write_text(json.dumps({f: _sha256(target / f) for f in ds.files}, indent=1))
    return target


def shard_split_images(source: str | Path, split: str = "val") -> list[Path]:
    """The images of a shard build's ``split`` (held out from training), extracted once into the
    dataset cache (``$CDC_DATA/shards/<corpus fingerprint>-<split>``), never into the shard folder.

    Raises:
        DatasetError: no readable manifest at ``source``, or no shards of ``split`` in it.
    """
    import shutil

    from shards.manifest import Manifest, manifest_path
    from shards.reader import ShardError, iterate_images

    try:
        manifest = Manifest.load(manifest_path(source))
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"{source}: no shard manifest ({exc})") from None
    if not any(info.split == split for info in manifest.shards):
        raise DatasetError(f"{source}: no {split} shards (build it with --split-val)")
    folder = cache_dir("shards") / f"{manifest.fingerprint[:16]}-{split}"
    if not (folder / ".complete").is_file():
        staging = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            for key, data, _ in iterate_images(source, split):
                ext = Image.open(io.BytesIO(data)).format.lower().replace("jpeg", "jpg")
                (staging / f"{key}.{ext}").write_bytes(data)
        except ShardError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise DatasetError(f"{source}: {exc}") from None
        (staging / ".complete").touch()
        shutil.rmtree(folder, ignore_errors=True)
        try:
            staging.rename(folder)
        except OSError:  # another process finished the same extraction first
            shutil.rmtree(staging, ignore_errors=True)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def dataset_images(dataset: str, root: str | Path | None = None, download_missing: bool = False) -> list[Path]:
    """The image files of ``dataset`` (``div2k``, ``kodak``, ``folder``, or ``shards``: the held-out
    ``val`` split of the shard build at ``root``), sorted.

    Raises:
        DatasetError: missing or incomplete, with the exact command that gets it.
    """
    if dataset == "shards":
        if root is None:
            raise DatasetError("--dataset shards needs --root MANIFEST_OR_DIR")
        return shard_split_images(root)
    if dataset == "folder":
        if root is None or not Path(root).is_dir():
            raise DatasetError(f"{root}: no such image folder (--dataset folder needs --root DIR)")
        files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"{root}: no images found")
        return files
    if dataset not in KNOWN:
        raise DatasetError(f"unknown dataset {dataset!r} (div2k, kodak, folder or shards)")
    ds = KNOWN[dataset]
    folder = _find(ds, Path(root)) if root else _find(ds, cache_dir(ds.name))
    if folder is None and download_missing and root is None:
        folder = download(ds)
    if folder is None:
        where = root or cache_dir(ds.name)
        raise DatasetError(f"{ds.name}: not found in {where} (needs {ds.files[0]} .. {ds.files[-1]}); "
                           f"{_how_to_get(ds)}")
    _verify_recorded(folder, ds)
    return [folder / f for f in ds.files]


def load_eval_image(path: Path, protocol: str) -> Image.Image:
    """Decode ``path`` to RGB and apply ``protocol``; errors name the file."""
    try:
        image = decode_image(path.read_bytes()).image
    except (OSError, ImageDecodeError) as exc:
        raise DatasetError(f"{path}: {exc}") from None
    if protocol == "full":
        return image
    if protocol != "cdc768":
        raise ValueError(f"unknown protocol {protocol!r} ({', '.join(PROTOCOLS)})")
    scale = 768 / min(image.size)
    size = (max(768, round(image.width * scale)), max(768, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (image.width - 768) // 2, (image.height - 768) // 2
    return image.crop((left, top, left + 768, top + 768))
