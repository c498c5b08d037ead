"""The offline development corpus: reserved packages refused, real shards with an image-level split."""

import json

import pytest
from PIL import Image

from shards.devcorpus import RESERVED_PACKAGES, CorpusError, assemble, build_corpus, fetch_deb
from shards.manifest import Manifest
from shards.process import BuildConfig, process_image


@pytest.mark.parametrize("package", sorted(RESERVED_PACKAGES))
def test_reserved_evaluation_packages_are_refused(tmp_path, package):
    with pytest.raises(CorpusError, match="reserved for independent evaluation"):
        assemble(tmp_path, packages=("ukui-wallpapers", package))
    with pytest.raises(CorpusError, match="reserved"):
        fetch_deb(package, tmp_path)
    assert not (tmp_path / "wheels").exists()  # refused before anything was written


def test_max_shorter_downscales_large_images_and_never_upscales(tmp_path):
    Image.new("RGB", (900, 600), (10, 20, 30)).save(tmp_path / "big.png")
    Image.new("RGB", (300, 200), (10, 20, 30)).save(tmp_path / "small.png")
    cfg = BuildConfig(max_shorter=400)
    big, small = (process_image(str(tmp_path / n), cfg) for n in ("big.png", "small.png"))
    assert (big.samples[0].meta["width"], big.samples[0].meta["height"]) == (600, 400)
    assert (small.samples[0].meta["width"], small.samples[0].meta["height"]) == (300, 200)
    assert small.samples[0].data == (tmp_path / "small.png").read_bytes()  # kept byte for byte
    with pytest.raises(ValueError, match="not both"):
        BuildConfig(max_shorter=400, resize_shorter=300)


def test_wheel_photos_become_shards_with_a_held_out_split_by_image(tmp_path):
    manifest = build_corpus(tmp_path, packages=(), max_shorter=256, split_val=0.3, workers=1)
    totals = manifest.totals()
    assert totals["scanned"] == totals["written"] == 10 and totals["quarantined"] == 0
    assert totals["samples"]["val"] >= 1 and totals["samples"]["train"] >= 1
    provenance = json.loads((tmp_path / "provenance.json").read_text())
    assert {f["origin"].split(":")[0] for f in provenance["files"]} == {"wheel"}
    assert set(provenance["reserved_packages_excluded"]) == RESERVED_PACKAGES
    loaded = Manifest.load(tmp_path / "shards" / "manifest.json")
    assert loaded.fingerprint == manifest.fingerprint


@pytest.mark.slow
def test_debian_wallpapers_download_verified_and_cached(tmp_path):
    """A real `apt-get download` of the smallest package, checked against apt-cache's SHA-256."""
    files, missing = assemble(tmp_path / "corpus", packages=("lomiri-wallpapers",), cache=tmp_path / "cache")
    assert not missing
    debs = [f for f in files if f.origin.startswith("deb:lomiri-wallpapers=")]
    assert len(debs) >= 1 and all(f.path.endswith(".png") for f in debs)
    deb = next((tmp_path / "cache").glob("lomiri-wallpapers_*.deb"))
    mtime = deb.stat().st_mtime_ns
    assemble(tmp_path / "corpus", packages=("lomiri-wallpapers",), cache=tmp_path / "cache")
    assert deb.stat().st_mtime_ns == mtime  # served from the cache, not downloaded again
