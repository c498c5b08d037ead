"""A cache of classical-baseline measurements, so that each dataset pays for them once.

A classical codec at one quality on one image always gives the same bytes, so its size, its
metric values and its fd-stlpips-vgg patch features can be reused by every later evaluation on the
same image: another grid, the study, a registry refresh. An entry is keyed by

* the codec and its library versions (e.g. ``JPEG|Pillow 11.3.0 libjpeg-turbo 3.1.1``) and quality,
* the SHA-256 of the image's pixels after the evaluation protocol (so a dataset's fingerprint is
  the set of its images' keys, and ``--limit`` or a subset reuses entries),
* each metric's version (its package and weights, ``cdc.evaluation.metrics.metric_versions``),

and holds one image's row (bytes, bpp, encode/decode seconds of the first measurement, metric
values) and, when computed, its patch features (``.npy``). An entry that lacks a requested metric,
or whose checksum does not match its content (a damaged or edited file), is a miss and is
rewritten. Files are written atomically (temporary file + rename), so concurrent
evaluations never read half an entry. ``CDC_EVAL_CACHE`` moves it (default
``~/.cache/cdc/baselines``); deleting the folder is always safe.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from cdc.files import atomic_write


def default_cache_dir() -> Path:
    """``$CDC_EVAL_CACHE`` or ``~/.cache/cdc/baselines``."""
    return Path(os.environ.get("CDC_EVAL_CACHE", Path.home() / ".cache" / "cdc" / "baselines"))


def image_key(img: np.ndarray) -> str:
    """SHA-256 of an H x W x 3 uint8 image's shape and pixels."""
    return hashlib.sha256(repr(img.shape).encode() + np.ascontiguousarray(img).tobytes()).hexdigest()


class BaselineCache:
    """Per (codec version, quality, image) rows of measurements under ``root``.

    Args:
        root: the cache folder (created on first write).
        versions: metric name -> version string of the metrics this evaluation asks for.
    """

    def __init__(self, root: Path, versions: dict[str, str]) -> None:
        self.root, self.versions = Path(root), dict(versions)
        self.hits = self.misses = 0

    def _path(self, codec_id: str, image: str) -> Path:
        key = hashlib.sha256(f"{codec_id}\n{image}".encode()).hexdigest()
        return self.root / key[:2] / f"{key}.json"

    def get(self, codec_id: str, image: str, features: bool) -> tuple[dict, np.ndarray | None] | None:
        """The cached row (and patch features when ``features``) or None when anything asked for is missing."""
        path = self._path(codec_id, image)
        try:
            entry = json.loads(path.read_text())
            feats = np.load(path.with_suffix(".npy")) if features else None
            if not isinstance(entry, dict) or entry.get("checksum") != _checksum(entry):
                raise ValueError("damaged or edited entry")
            known = entry["versions"]
            if any(known.get(m) != v for m, v in self.versions.items()):
                raise ValueError("other metric versions")
            if feats is not None and entry.get("features") != hashlib.sha256(feats.tobytes()).hexdigest():
                raise ValueError("features do not match the entry")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.misses += 1  # a bad entry is a miss; measuring again rewrites it
            return None
        self.hits += 1
        row = {k: v for k, v in entry["row"].items() if k not in known or k in self.versions}
        return row, feats

    def put(self, codec_id: str, image: str, row: dict, features: np.ndarray | None) -> None:
        """Store one image's row (and patch features) for ``codec_id``, atomically."""
        path = self._path(codec_id, image)
        entry_features = None
        if features is not None:
            buf = io.BytesIO()
            np.save(buf, features)
            atomic_write(path.with_suffix(".npy"), buf.getvalue())
            entry_features = hashlib.sha256(np.ascontiguousarray(features).tobytes()).hexdigest()
        versions = dict(self.versions)
        try:  # keep the values of other metrics an earlier (intact) evaluation stored
            old = json.loads(path.read_text())
            if old.get("checksum") == _checksum(old):
                kept = {m: v for m, v in old["versions"].items() if m not in versions}
                row = {**{m: old["row"][m] for m in kept if m in old["row"]}, **row}
                versions.update(kept)
                entry_features = entry_features or old.get("features")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        entry = {"codec": codec_id, "image": image, "versions": versions, "row": row, "features": entry_features}
        entry["checksum"] = _checksum(entry)
        atomic_write(path, json.dumps(entry).encode())


def _checksum(entry: dict) -> str:
    """SHA-256 of an entry's content (every field but the checksum itself): an edited digit is a miss."""
    content = {k: v for k, v in entry.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
