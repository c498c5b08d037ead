"""The held-out packages (``shards/heldout.py``): disjoint from the training list, verified, downscaled,
and never silently fewer."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest
from conftest import photo
from PIL import Image

from shards.devcorpus import CorpusError
from shards.heldout import HELDOUT_LIST, heldout_photos, read_heldout
from shards.photocorpus import DEFAULT_LIST, read_list


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_the_shipped_list_shares_no_package_with_the_training_list():
    rows = read_heldout()
    assert len(rows) == 11 and {r.package for r in rows} == {"scikit-learn", "pyiqa"}
    assert not {r.package for r in rows} & {r.package for r in read_list(DEFAULT_LIST)}
    assert all(len(r.sha1) == 40 for r in rows)


def test_a_package_of_the_training_list_is_refused(tmp_path):
    trained = read_list(DEFAULT_LIST)[0]
    listing = tmp_path / "heldout.tsv"
    listing.write_text(HELDOUT_LIST.read_text() + "\t".join(
        [trained.source, trained.member, trained.sha1, "800", "600", "JPEG", "photo"]) + "\n")
    with pytest.raises(CorpusError, match=f"{listing}: {trained.package} also in .*photos.tsv"):
        read_heldout(listing)


def test_photos_are_verified_downscaled_and_a_missing_one_is_an_error(tmp_path):
    cache = tmp_path / "cache"
    wheel = cache / "wheels" / "demo_pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    big = _png(Image.fromarray(photo("coffee", (256, 384))).resize((900, 600)))  # larger than 512 px: downscaled
    small = _png(Image.fromarray(photo("astronaut", (300, 200))))
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("demo/big.png", big)
        z.writestr("demo/small.png", small)
    lines = [f"pypi:demo-pkg==1.0\tdemo/{n}.png\t{hashlib.sha1(b).hexdigest()}\t0\t0\tPNG\tphoto"
             for n, b in (("big", big), ("small", small))]
    listing = tmp_path / "heldout.tsv"
    listing.write_text("# two\n" + "\n".join(lines) + "\n")
    photos = heldout_photos(cache, listing, max_shorter=512)
    assert [(n, im.size) for n, im in photos] == [("demo-pkg/big.png", (768, 512)), ("demo-pkg/small.png", (200, 300))]
    listing.write_text(listing.read_text() + "pypi:demo-pkg==1.0\tdemo/gone.png\t" + "1" * 40 + "\t0\t0\tPNG\tphoto\n")
    with pytest.raises(CorpusError, match=r"heldout.tsv: 1 of 3 photos unavailable, e.g. pypi:demo-pkg==1.0 "
                                          r"demo/gone.png: not in the package"):
        heldout_photos(cache, listing)
