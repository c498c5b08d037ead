"""Evaluation benchmark: the JPEG baseline on 17 photos of 768 x 512, old path vs new, in one process.

* **per-pair (before)**: what ``cdc eval --baseline jpeg`` did until now: quality-outer loop, every
  reconstruction compared on its own (the reference passes each network again), metrics
  psnr-rgb, ms-ssim-rgb, stlpips-alex, stlpips-vgg, fd-stlpips-vgg. Too slow for all 17 images on
  2 cores (~8 s per image per quality), so it runs on the first ``--old-images`` and its time is
  also given per image.
* **batched, same metrics**: the new image-outer loop (reference features once, reconstructions in
  batches) with the same metrics, on the same subset: the gain of the harness alone.
* **new default, cold**: the new default metrics (psnr-rgb, ms-ssim-rgb, stlpips-alex) on all 17
  images with an empty baseline cache; **new default, cached**: the same again, from the cache.

Values of the paths are compared (max relative difference per metric).

    python benchmarks/eval.py [--images 17] [--old-images 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine, print_table, write_json
from PIL import Image

SOURCES = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]
OLD_METRICS = ("psnr-rgb", "ms-ssim-rgb", "stlpips-alex", "stlpips-vgg", "fd-stlpips-vgg")


def make_photos(root: Path, n: int) -> Path:
    """``n`` real photos (scikit-image / scikit-learn wheels), resized and cropped to 768 x 512 (flips
    and mirror images when there are fewer photos than ``n``)."""
    from skimage import data
    from sklearn.datasets import load_sample_image

    photos = [getattr(data, name)() for name in SOURCES] + [load_sample_image(f) for f in ("china.jpg", "flower.jpg")]
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = Image.fromarray(np.ascontiguousarray(photos[i % len(photos)][..., :3]))
        scale = max(768 / img.width, 512 / img.height)
        img = img.resize((round(img.width * scale + 0.5), round(img.height * scale + 0.5)), Image.Resampling.LANCZOS)
        img = img.crop((0, 0, 768, 512))
        if (i // len(photos)) % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img.save(root / f"photo{i:02d}.png")
    return root


def per_pair(settings, suite, out_dir: Path) -> Path:
    """The previous harness: quality-outer loop, one ``MetricSuite.pair`` call per reconstruction."""
    from cdc.evaluation.baselines import build_baseline
    from cdc.evaluation.datasets import load_eval_image
    from cdc.evaluation.evaluate import baseline_points, images_for

    jpeg = build_baseline("jpeg")
    refs = [np.asarray(load_eval_image(p, settings.protocol)) for p in images_for(settings)]
    results: dict[str, list[float]] = {}
    for point in baseline_points(jpeg):
        rows = []
        for ref in refs:
            data = point.encode(ref)
            rows.append({"bpp": 8 * len(data) / (ref.shape[0] * ref.shape[1]),
                         **suite.pair(ref, point.decode(data), point.label)})
        for key in rows[0]:
            results.setdefault(key, []).append(float(np.mean([r[key] for r in rows])))
        for key, value in suite.distribution_metrics(point.label).items():
            results.setdefault(key, []).append(value)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "JPEG.json"
    path.write_text(json.dumps({"results": results}))
    return path


def run(label: str, fn, images: int) -> tuple[dict, dict]:
    start = time.perf_counter()
    path = fn()
    seconds = time.perf_counter() - start
    results = json.loads(Path(path).read_text())["results"]
    return {"path": label, "images": images, "seconds": seconds, "s_per_image": seconds / images}, results


def max_rel_diff(a: dict, b: dict) -> dict[str, float]:
    keys = [k for k in a if k in b and k not in ("encoding_time", "decoding_time", "patches")]
    return {k: float(np.max(np.abs(np.subtract(a[k], b[k])) / np.maximum(np.abs(a[k]), 1e-12))) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=17)
    parser.add_argument("--old-images", type=int, default=3)
    args = parser.parse_args()
    from cdc.evaluation.baselines import build_baseline
    from cdc.evaluation.evaluate import EvalSettings, evaluate_all
    from cdc.evaluation.metrics import DEFAULT_METRICS, MetricSuite

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["CDC_EVAL_CACHE"] = str(tmp / "cache")  # start cold, never touch the user's cache
        root = make_photos(tmp / "photos", args.images)
        subset = EvalSettings(dataset="folder", root=str(root), limit=args.old_images, metrics=OLD_METRICS,
                              save_recon=0, cache=False)
        full = EvalSettings(dataset="folder", root=str(root), metrics=DEFAULT_METRICS, save_recon=0)
        jpeg = [build_baseline("jpeg")]
        old_suite = MetricSuite(metrics=OLD_METRICS)
        default_suite_args = {"settings": full, "out_dir": tmp / "new"}
        rows, values = [], {}
        for label, fn, n in [
            ("per-pair (before), old metrics", lambda: per_pair(subset, old_suite, tmp / "old"), args.old_images),
            ("batched, old metrics", lambda: evaluate_all([], jpeg, subset, tmp / "batched")[0], args.old_images),
            ("new default, cold cache", lambda: evaluate_all([], jpeg, **default_suite_args)[0], args.images),
            ("new default, cached", lambda: evaluate_all([], jpeg, **default_suite_args)[0], args.images),
        ]:
            row, values[label] = run(label, fn, n)
            rows.append(row)
            print(f"[eval] {label}: {row['seconds']:.1f} s", flush=True)
    base = rows[0]["s_per_image"]
    for row in rows:
        row["speedup_per_image"] = base / row["s_per_image"]
    table = print_table(rows, [("path", "path"), ("images", "images"), ("seconds", "s"),
                               ("s_per_image", "s / image"), ("speedup_per_image", "x per image")])
    old_17 = base * args.images
    print(f"\nper-pair path extrapolated to {args.images} images: {old_17 / 60:.1f} min; new default cold: "
          f"{rows[2]['seconds'] / 60:.2f} min ({old_17 / rows[2]['seconds']:.1f}x); cached: {rows[3]['seconds']:.1f} s")
    diffs = {"batched vs per-pair": max_rel_diff(values[rows[0]["path"]], values[rows[1]["path"]]),
             "cached vs cold": max_rel_diff(values[rows[2]["path"]], values[rows[3]["path"]])}
    print("max relative difference per metric:", json.dumps(diffs, indent=1))
    write_json("eval", {"machine": machine(), "rows": rows, "per_pair_extrapolated_s": old_17,
                        "value_differences": diffs, "table": table})


if __name__ == "__main__":
    main()
