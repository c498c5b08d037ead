"""Cold evaluation of the classical baselines, as the demo's grid pays for it on a fresh machine.

Before: each codec its own pass over the images (``run_curve`` per codec) at the grid's ``report``
metrics. After: the demo's settings, one pass for all codecs (``pipelines.cells.evaluate_baselines``:
each reference image and its features once) at the metrics its summary shows. Both start from an
empty results cache (``CDC_EVAL_CACHE`` points at a new folder per variant) on the same held-out
photos of the photo corpus, in this one process, alternating, so the machine's noise hits both.

    python benchmarks/baseline_eval.py [--images 4] [--shards runs/photos/shards]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from common import print_table, write_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CODECS = ["jpeg", "webp", "avif"]
DEMO_METRICS = "psnr-rgb,ms-ssim-rgb,stlpips-vgg"  # scripts/demo.py's METRICS (importing it sets up its home)


def before(settings: dict, out: Path) -> None:
    """One pass over the images per codec, every report metric."""
    from cdc.evaluation.baselines import build_baseline
    from cdc.evaluation.evaluate import EvalSettings, baseline_points, run_curve
    from cdc.evaluation.metrics import REPORT_METRICS, MetricSuite

    cfg = EvalSettings(**{**settings, "metrics": REPORT_METRICS})
    suite = MetricSuite(cfg.device, cfg.metrics)
    for name in CODECS:
        b = build_baseline(name)
        run_curve(b.name, b.description, baseline_points(b), cfg, suite, out)


def after(settings: dict, out: Path) -> None:
    """The demo's path: every codec in one pass, the metrics its summary shows."""
    from cdc.evaluation.metrics import parse_metrics
    from pipelines.cells import evaluate_baselines

    evaluate_baselines.fn(CODECS, {**settings, "metrics": parse_metrics(DEMO_METRICS)}, str(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4, help="held-out photos (the demo evaluates 4)")
    p.add_argument("--shards", type=Path, default=REPO / "runs" / "photos" / "shards",
                   help="a shard folder with a val split")
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    settings = {"dataset": "shards", "root": str(args.shards.resolve() / "manifest.json"), "protocol": "full",
                "limit": args.images, "save_recon": 0}
    seconds: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(args.repeat):
        for name, fn in (("before", before), ("after", after)):
            with tempfile.TemporaryDirectory() as tmp:
                os.environ["CDC_EVAL_CACHE"] = str(Path(tmp) / "cache")  # cold: nothing measured yet
                start = time.perf_counter()
                fn(settings, Path(tmp) / "eval")
                seconds[name].append(time.perf_counter() - start)
    rows = [{"variant": name, "seconds": min(s), "per_image_s": min(s) / args.images,
             "speedup": min(seconds["before"]) / min(s)} for name, s in seconds.items()]
    table = print_table(rows, [("variant", "variant"), ("seconds", "cold s"), ("per_image_s", "s / image"),
                               ("speedup", "× before")])
    write_json("baseline_eval", {"images": args.images, "codecs": CODECS, "rows": rows, "table": table})


if __name__ == "__main__":
    main()
