"""The evaluation harness: codecs x dataset -> real bytes, timings and metrics, as CompressAI JSON.

Every point of every curve is measured the same way: the image (after the protocol) is encoded to
the bytes of a real file, timed, decoded, timed, and compared on 8-bit values. CDC models and
classical baselines share this loop. Output per curve, in ``OUT``:

* ``<name>.json`` — CompressAI's results schema (``name``, ``description``, ``meta``,
  ``results{bpp, psnr-rgb, ms-ssim-rgb, ..., encoding_time, decoding_time}``), one list entry per
  point, so ``python -m compressai.utils.plot`` draws it next to CompressAI's published curves;
* ``<name>.per-image.json`` — every image of every point;
* ``recon/<name>/<point>/<image>.png`` — the first ``save_recon`` reconstructions (for galleries).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from cdc.datasets import dataset_images, load_eval_image
from cdc.metrics import MetricSuite


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate on and how.

    Attributes:
        dataset: ``div2k``, ``kodak`` or ``folder``; root: its folder (else the cache).
        protocol: ``cdc768`` or ``full``.
        steps: DDIM steps for CDC models (one curve per value); gamma, seed: decode noise.
        precision: U-Net precision for CDC decoding; device: ``cpu`` or ``cuda``.
        limit: use only the first N images (0 = all); save_recon: reconstructions kept per point.
        distribution: compute FID / KID / fd-stlpips-vgg over HiFiC patches.
    """

    dataset: str = "kodak"
    root: str | None = None
    download: bool = False
    protocol: str = "full"
    steps: tuple[int, ...] = (17,)
    gamma: float | None = None
    seed: int | None = None
    precision: str = "fp32"
    device: str = "cpu"
    limit: int = 0
    save_recon: int = 2
    distribution: bool = True


@dataclass
class Point:
    """One RD point: a label and an (encode, decode) pair over H x W x 3 uint8 images."""

    label: str
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes], np.ndarray]
    extra: Callable[[np.ndarray], dict] | None = None  # e.g. the estimated bpp of a CDC model
    meta: dict = field(default_factory=dict)


def slug(name: str) -> str:
    """A file-name-safe form of a curve or point name."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", name).strip("_")


def images_for(settings: EvalSettings) -> list[Path]:
    """The dataset files of ``settings`` (first ``limit`` when set)."""
    files = dataset_images(settings.dataset, settings.root, settings.download)
    return files[: settings.limit] if settings.limit else files


def run_curve(name: str, description: str, points: Iterable[Point], settings: EvalSettings, suite: MetricSuite,
              out_dir: Path, meta: dict | None = None) -> Path:
    """Measure every point on every image; write the curve's JSON files; return the results path."""
    files = images_for(settings)
    refs = {path: np.asarray(load_eval_image(path, settings.protocol)) for path in files}
    results: dict[str, list[float]] = {}
    per_image: list[dict] = []
    point_meta: list[dict] = []
    for point in points:
        rows = []
        for i, (path, ref) in enumerate(tqdm(refs.items(), desc=f"{name} {point.label}", unit="img", leave=False)):
            start = time.perf_counter()
            data = point.encode(ref)
            encode_s = time.perf_counter() - start
            start = time.perf_counter()
            rec = point.decode(data)
            decode_s = time.perf_counter() - start
            row = {"image": path.name, "bytes": len(data), "bpp": 8 * len(data) / (ref.shape[0] * ref.shape[1]),
                   "encoding_time": encode_s, "decoding_time": decode_s, **suite.pair(ref, rec)}
            if point.extra:
                row.update(point.extra(ref))
            rows.append(row)
            if i < settings.save_recon:
                recon = out_dir / "recon" / slug(name) / slug(point.label)
                recon.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rec).save(recon / f"{path.stem}.png")
        # metrics every image has (MS-SSIM is absent for images under 161 px)
        averages = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]
                    if k != "image" and all(k in r for r in rows)}
        averages.update(suite.distribution_metrics())
        for key, value in averages.items():
            results.setdefault(key, []).append(value)
        per_image.append({"point": point.label, "images": rows})
        point_meta.append({"label": point.label, **point.meta})
    order = np.argsort(results["bpp"])  # curves are drawn from low to high rate
    results = {k: [v[i] for i in order] for k, v in results.items() if len(v) == len(order)}
    payload = {
        "name": name,
        "description": description,
        "meta": {**asdict(settings), "images": len(files), "points": [point_meta[i] for i in order],
                 "unavailable_metrics": suite.unavailable, **(meta or {})},
        "results": results,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{slug(name)}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    (out_dir / f"{slug(name)}.per-image.json").write_text(json.dumps([per_image[i] for i in order], indent=1) + "\n")
    return path


def baseline_points(baseline) -> list[Point]:
    """One point per quality setting of a classical baseline."""
    return [Point(f"q{q:g}", lambda img, q=q: baseline.encode(img, q), baseline.decode, meta={"quality": q})
            for q in baseline.qualities]


def cdc_points(coders: list, steps: int, settings: EvalSettings) -> list[Point]:
    """One point per CDC model (a ``Coder``), decoded with ``steps`` DDIM steps."""
    import torch

    from cdc.images import to_uint8

    def tensor(img: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1)[None].float() / 255
        return x.to(settings.device)

    points = []
    for coder in coders:
        info = coder.codec.config
        label = f"lmbda{info.loss.lmbda:g}"

        def encode(img: np.ndarray, coder=coder) -> bytes:
            return coder.encode(tensor(img), steps=steps, gamma=settings.gamma, seed=settings.seed).data

        def decode(data: bytes, coder=coder) -> np.ndarray:
            return to_uint8(coder.decode(data, precision=settings.precision)[0])

        def extra(img: np.ndarray, coder=coder) -> dict:
            return {"bpp_estimated": coder.estimate_bits(tensor(img)) / (img.shape[0] * img.shape[1])}

        points.append(Point(label, encode, decode, extra, meta={"fingerprint": coder.fingerprint[:12],
                                                                "lmbda": info.loss.lmbda, "rho": info.loss.rho}))
    return points


def cdc_curve_name(coders: list, steps: int) -> str:
    """The curve name of CDC models decoded with ``steps`` steps."""
    cfg = coders[0].codec.config
    rhos = sorted({c.codec.config.loss.rho for c in coders})
    rho = f"rho{rhos[0]:g}" if len(rhos) == 1 else "rho-mixed"
    pred = {"sample": "x", "epsilon": "eps", "v": "v"}[cfg.diffusion.prediction]
    return f"CDC {cfg.preset} {pred}-param {rho} ({steps} steps)"


def evaluate_all(coders: list, baselines: list, settings: EvalSettings, out_dir: Path,
                 warn: Callable[[str], None] = print) -> list[Path]:
    """Every CDC curve (one per ``settings.steps``) and every baseline curve; returns the results files."""
    from cdc.metrics import MetricSuite

    suite = MetricSuite(settings.device, distribution=settings.distribution)
    for name, reason in suite.unavailable.items():
        warn(f"metric {name} unavailable: {reason}")
    written = []
    if coders:
        for steps in settings.steps:
            meta = {"models": [str(c.codec.config.preset) for c in coders], "steps": steps,
                    "fingerprints": [c.fingerprint[:12] for c in coders]}
            written.append(run_curve(cdc_curve_name(coders, steps), "CDC (Yang & Mandt 2023), real bitstreams",
                                     cdc_points(coders, steps, settings), settings, suite, out_dir, meta))
    for baseline in baselines:
        written.append(run_curve(baseline.name, baseline.description, baseline_points(baseline), settings, suite,
                                 out_dir))
    return written
