"""The evaluation harness: codecs x dataset -> real bytes, timings and metrics, as CompressAI JSON.

Every point of every curve is measured the same way: the image (after the protocol) is encoded to
the bytes of a real file, timed, decoded, timed, and compared on 8-bit values. CDC models and
classical baselines share this loop. Output per curve, in ``OUT``:

* ``<name>.json`` — CompressAI's results schema (``name``, ``description``, ``meta``,
  ``results{bpp, psnr-rgb, ms-ssim-rgb, ..., encoding_time, decoding_time}``), one list entry per
  point, so ``python -m compressai.utils.plot`` draws it next to CompressAI's published curves;
* ``<name>.per-image.json`` — every image of every point;
* ``recon/<name>/<point>/<image>.png`` — the first ``save_recon`` reconstructions (for galleries).

Cost: the perceptual networks dominate (a 768 x 512 image through VGG takes ~1.4 s on 2 cores), so
images are the outer loop: every reconstruction of one image (every point of every curve) is
compared with it in one ``MetricSuite.compare`` call, which passes the reference through each
network once and batches the reconstructions; classical-baseline points come from the
``BaselineCache`` when this image was measured before.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from cdc.evaluation.cache import BaselineCache, default_cache_dir, image_key
from cdc.evaluation.datasets import dataset_images, load_eval_image
from cdc.evaluation.metrics import DEFAULT_METRICS, MetricSuite, metric_versions
from cdc.evaluation.rd import curve as rd_curve
from cdc.evaluation.rd import slug


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate on and how.

    Attributes:
        dataset: ``div2k``, ``kodak`` or ``folder``; root: its folder (else the cache).
        protocol: ``cdc768`` or ``full``.
        steps: DDIM steps for CDC models (one curve per value; None: each model's default decode,
            ``cdc.coding.coder.Coder.default_decode``); gamma, seed: decode noise (None: the model's).
        precision: U-Net precision for CDC decoding; device: ``cpu`` or ``cuda``.
        limit: use only the first N images (0 = all); save_recon: reconstructions kept per point.
        metrics: names from ``cdc.evaluation.metrics.ALL_METRICS`` (``fd-stlpips-vgg``, ``fid``, ``kid`` are
            computed over HiFiC patches of the whole dataset).
        cache: reuse classical-baseline measurements (``cdc.evaluation.cache``); either way, what is
            measured is stored (``--no-cache`` refreshes entries).
    """

    dataset: str = "kodak"
    root: str | None = None
    download: bool = False
    protocol: str = "full"
    steps: tuple[int | None, ...] = (None,)
    gamma: float | None = None
    seed: int | None = None
    precision: str = "fp32"
    device: str = "cpu"
    limit: int = 0
    save_recon: int = 2
    metrics: tuple[str, ...] = DEFAULT_METRICS
    cache: bool = True


@dataclass
class Point:
    """One RD point: a label and an (encode, decode) pair over H x W x 3 uint8 images."""

    label: str
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes], np.ndarray]
    extra: Callable[[np.ndarray], dict] | None = None  # e.g. the estimated bpp of a CDC model
    meta: dict = field(default_factory=dict)
    cache_id: str = ""  # a deterministic codec's identity (codec, library versions, quality): cacheable


@dataclass
class Curve:
    """One RD curve: its points and what its results file says about it."""

    name: str
    description: str
    points: list[Point]
    meta: dict = field(default_factory=dict)


def images_for(settings: EvalSettings) -> list[Path]:
    """The dataset files of ``settings`` (first ``limit`` when set)."""
    files = dataset_images(settings.dataset, settings.root, settings.download)
    return files[: settings.limit] if settings.limit else files


def run_curve(name: str, description: str, points: Iterable[Point], settings: EvalSettings, suite: MetricSuite,
              out_dir: Path, meta: dict | None = None) -> Path:
    """Measure every point on every image; write the curve's JSON files; return the results path."""
    return run_curves([Curve(name, description, list(points), meta or {})], settings, suite, out_dir)[0]


def run_curves(curves: list[Curve], settings: EvalSettings, suite: MetricSuite, out_dir: Path) -> list[Path]:
    """Measure every point of every curve on every image; write each curve's JSON files; return their paths."""
    files = images_for(settings)
    # --no-cache (settings.cache False) measures everything and refreshes the entries it measured
    cache = (BaselineCache(default_cache_dir(), metric_versions(suite.computed))
             if any(p.cache_id for c in curves for p in c.points) else None)
    rows: dict[tuple[int, int], list[dict]] = {}
    for i, path in enumerate(tqdm(files, desc="evaluate", unit="img", leave=False)):
        ref = np.asarray(load_eval_image(path, settings.protocol))
        measured, recs = [], []
        for ci, curve in enumerate(curves):
            for pi, point in enumerate(curve.points):
                key = f"{ci}/{pi}"
                hit = cache.get(point.cache_id, image_key(ref), suite.fd_net is not None) \
                    if cache and point.cache_id and settings.cache else None
                if hit is not None:
                    row, feats = hit
                    rows.setdefault((ci, pi), []).append({"image": path.name, **row})
                    if feats is not None:
                        suite.add_features(key, suite.reference_patch_features(ref), feats)
                    if i < settings.save_recon:
                        _save_recon(out_dir, curve.name, point.label, path, point.decode(point.encode(ref)))
                    continue
                start = time.perf_counter()
                data = point.encode(ref)
                encode_s = time.perf_counter() - start
                start = time.perf_counter()
                rec = point.decode(data)
                decode_s = time.perf_counter() - start
                row = {"bytes": len(data), "bpp": 8 * len(data) / (ref.shape[0] * ref.shape[1]),
                       "encoding_time": encode_s, "decoding_time": decode_s}
                if point.extra:
                    row.update(point.extra(ref))
                measured.append((ci, pi, row))
                recs.append(rec)
                if i < settings.save_recon:
                    _save_recon(out_dir, curve.name, point.label, path, rec)
        scores = suite.compare(ref, recs, [f"{ci}/{pi}" for ci, pi, _ in measured])
        for (ci, pi, row), score in zip(measured, scores, strict=True):
            row.update(score)
            point = curves[ci].points[pi]
            if cache and point.cache_id:
                feats = suite.last_patch_features(f"{ci}/{pi}") if suite.fd_net is not None else None
                cache.put(point.cache_id, image_key(ref), row, feats)
            rows.setdefault((ci, pi), []).append({"image": path.name, **row})
    if cache:
        tqdm.write(f"baseline cache {cache.root}: {cache.hits} hits, {cache.misses} measured", file=sys.stderr)
    return [_write_curve(curve, [rows[(ci, pi)] for pi in range(len(curve.points))],
                         [suite.distribution_metrics(f"{ci}/{pi}") for pi in range(len(curve.points))],
                         settings, suite, out_dir, len(files))
            for ci, curve in enumerate(curves)]


def _save_recon(out_dir: Path, curve: str, label: str, image: Path, rec: np.ndarray) -> None:
    recon = out_dir / "recon" / slug(curve) / slug(label)
    recon.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rec).save(recon / f"{image.stem}.png")


def _write_curve(curve: Curve, point_rows: list[list[dict]], distribution: list[dict], settings: EvalSettings,
                 suite: MetricSuite, out_dir: Path, images: int) -> Path:
    averages = []
    for rows, extra in zip(point_rows, distribution, strict=True):
        # metrics every image has (MS-SSIM is absent for images under 161 px)
        averages.append({**{k: float(np.mean([r[k] for r in rows])) for k in rows[0]
                            if k != "image" and all(k in r for r in rows)}, **extra})
    payload = rd_curve(curve.name, curve.description, averages,  # ordered from low to high rate
                       {**asdict(settings), "images": images, "unavailable_metrics": suite.unavailable, **curve.meta},
                       [{"label": p.label, **p.meta} for p in curve.points])
    order = sorted(range(len(averages)), key=lambda i: averages[i]["bpp"])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{slug(curve.name)}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    per_image = [{"point": curve.points[i].label, "images": point_rows[i]} for i in order]
    (out_dir / f"{slug(curve.name)}.per-image.json").write_text(json.dumps(per_image, indent=1) + "\n")
    return path


def baseline_points(baseline) -> list[Point]:
    """One point per quality setting of a classical baseline."""
    return [Point(f"q{q:g}", lambda img, q=q: baseline.encode(img, q), baseline.decode, meta={"quality": q},
                  cache_id=f"{baseline.name}|{baseline.version}|q{q:g}" if baseline.version else "")
            for q in baseline.qualities]


def cdc_points(coders: list, steps: int | None, settings: EvalSettings) -> list[Point]:
    """One point per CDC model (a ``Coder``), decoded with ``steps`` DDIM steps (None: its default)."""
    from cdc.images import from_uint8, to_uint8

    points = []
    for coder in coders:
        info = coder.codec.config
        label = f"lmbda{info.loss.lmbda:g}"

        def encode(img: np.ndarray, coder=coder) -> bytes:
            x = from_uint8(img, settings.device)
            return coder.encode(x, steps=steps, gamma=settings.gamma, seed=settings.seed).data

        def decode(data: bytes, coder=coder) -> np.ndarray:
            return to_uint8(coder.decode(data, precision=settings.precision)[0])

        def extra(img: np.ndarray, coder=coder) -> dict:
            bits = coder.estimate_bits(from_uint8(img, settings.device))
            return {"bpp_estimated": bits / (img.shape[0] * img.shape[1])}

        decode_steps, decode_gamma = coder.default_decode
        points.append(Point(label, encode, decode, extra, meta={
            "fingerprint": coder.fingerprint[:12], "lmbda": info.loss.lmbda, "rho": info.loss.rho,
            "steps": decode_steps if steps is None else steps,
            "gamma": decode_gamma if settings.gamma is None else settings.gamma}))
    return points


def cdc_curve_name(coders: list, steps: int | None) -> str:
    """The curve name of CDC models decoded with ``steps`` steps (None: each model's default decode)."""
    cfg = coders[0].codec.config
    rhos = sorted({c.codec.config.loss.rho for c in coders})
    rho = f"rho{rhos[0]:g}" if len(rhos) == 1 else "rho-mixed"
    pred = {"sample": "x", "epsilon": "eps", "v": "v"}[cfg.diffusion.prediction]
    return f"CDC {cfg.preset} {pred}-param {rho} ({'default decode' if steps is None else f'{steps} steps'})"


def evaluate_all(coders: list, baselines: list, settings: EvalSettings, out_dir: Path,
                 warn: Callable[[str], None] = print) -> list[Path]:
    """Every CDC curve (one per ``settings.steps``) and every baseline curve, in one pass over the
    images; returns the results files."""
    suite = MetricSuite(settings.device, settings.metrics)
    for name, reason in suite.unavailable.items():
        warn(f"metric {name} unavailable: {reason}")
    curves = [Curve(cdc_curve_name(coders, steps), "CDC (Yang & Mandt 2023), real bitstreams",
                    cdc_points(coders, steps, settings),
                    {"models": [str(c.codec.config.preset) for c in coders], "steps": steps,
                     "fingerprints": [c.fingerprint[:12] for c in coders]})
              for steps in (settings.steps if coders else ())]
    curves += [Curve(b.name, b.description, baseline_points(b)) for b in baselines]
    return run_curves(curves, settings, suite, out_dir)
