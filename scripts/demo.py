"""The end-to-end demo (`make demo`): real photos -> shards -> a 2 x 2 lambda x rho grid of `small`
codecs, each cell fine-tuned from the shipped family member nearest in lambda -> evaluation on the
held-out split against JPEG, WebP and AVIF -> MLflow registry -> the rate-quality table, plot paths
and what to run next.

The photos are the photo corpus (shards/photocorpus.py, the 255 photographs of shards/photos.tsv,
fetched from Debian and PyPI packages and verified by SHA-1); its held-out split is the family's. Everything
stays in this folder: MLflow on SQLite (.cdc/mlflow.db, artifacts in .cdc/mlartifacts), Prefect in
local (ephemeral) mode (.cdc/prefect), outputs in runs/demo/. No server is needed. About 10-15
minutes on 2 CPU cores.

    python scripts/demo.py [--fresh] [--publish]

--fresh starts the demo's registry and outputs anew; --publish replaces the README's demo results
(docs/demo/: summary.json, whose tables the README and the docs render, the RD plot, the gallery).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOME = REPO / ".cdc"
OUT = REPO / "runs" / "demo"
os.environ.setdefault("CDC_HOME", str(HOME))
os.environ.setdefault("PREFECT_HOME", str(HOME / "prefect"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


LMBDAS = [0.005, 0.045]  # rate weights (larger: fewer bits): the family's ends within JPEG's reach
RHOS = [0.0, 0.9]  # perceptual weights
STEPS = 60  # fine-tune steps per cell, from the family member nearest in lambda
EVAL_IMAGES = 4  # held-out images per evaluation
# What the summary shows, nothing more: a Fréchet distance over 4 images' ~24 HiFiC patches in 1,472
# dimensions is no estimate, and it and ST-LPIPS-Alex cost ~60 % of a cold evaluation on 2 cores
# (benchmarks/baseline_eval.py).
METRICS = "psnr-rgb,ms-ssim-rgb,stlpips-vgg"


def make_gallery() -> Path:
    """original | JPEG nearest in rate | CDC rho 0 | CDC rho 0.9, all at the largest lambda (lowest rate)."""
    import json

    from cdc.datasets import shard_split_images
    from cdc.rd import gallery, slug

    def results(name: str) -> Path:
        return OUT / "eval" / f"{slug(name)}.json"

    cdc = [results(f"CDC lmbda{LMBDAS[-1]:g}-rho{rho:g}") for rho in (0.0, 0.9)]
    per_image = json.loads(cdc[0].with_name(cdc[0].name.replace(".json", ".per-image.json")).read_text())
    target = per_image[0]["images"][0]["bpp"]
    originals = shard_split_images(OUT / "shards" / "manifest.json")[0].parent
    return gallery([results("JPEG"), *cdc], OUT / "gallery.png", target_bpp=target, originals=originals)


def publish(summary: dict, gallery_png: Path, minutes: float) -> None:
    """Replace the README's demo results in docs/demo/ with this run's (asked for with --publish)."""
    import json

    docs = REPO / "docs" / "demo"
    docs.mkdir(parents=True, exist_ok=True)
    result = json.loads((OUT / "summary.json").read_text())
    result.update({"minutes": round(minutes, 1), "lmbdas": LMBDAS, "steps": STEPS, "eval_images": EVAL_IMAGES,
                   "date": time.strftime("%Y-%m-%d"), "plots": [Path(p).name for p in summary["plots"]]})
    result["timing"] = (f"Wall clock: **{minutes:.1f} min** from `scripts/demo.py` to its summary "
                        f"({result['date']}; the photo corpus fetched, every model trained and measured).")
    for plot in summary["plots"]:
        shutil.copyfile(plot, docs / Path(plot).name)
    shutil.copyfile(gallery_png, docs / "gallery.png")
    (docs / "summary.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"Published to {docs}")


def main() -> None:
    if "--fresh" in sys.argv:  # fresh means fresh: the demo's outputs and its own registry and tracking
        shutil.rmtree(OUT, ignore_errors=True)
        if Path(os.environ["CDC_HOME"]) == HOME:  # never a registry the user pointed CDC_HOME at
            shutil.rmtree(HOME, ignore_errors=True)
    # Prefect keeps its settings and local server database here, reads the folder when it is
    # imported and does not create its parents: make it first (a fresh clone has no .cdc/).
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    from demo_display import Stages, quiet_console

    from pipelines.train_grid import train_grid
    from shards.photocorpus import DEFAULT_CACHE, DEFAULT_LIST, fetch_photos, read_list

    start = time.time()
    log = OUT / "demo.log"
    cells, codecs = len(LMBDAS) * len(RHOS), ["jpeg", "webp", "avif"]
    print(f"cdc demo: {len(LMBDAS)} λ × {len(RHOS)} ρ cells of `small` codecs, {STEPS} fine-tune steps each, "
          f"evaluated on {EVAL_IMAGES} held-out photos (full log: {log})")
    try:
        with quiet_console(log, Stages(OUT, cells, STEPS, len(codecs))):
            photos, _ = fetch_photos(read_list(DEFAULT_LIST), DEFAULT_CACHE)  # warns and goes on for what is missing
            sources = OUT / "corpus" / "sources.txt"
            sources.parent.mkdir(parents=True, exist_ok=True)
            sources.write_text("".join(f"{p}\n" for p in sorted(map(str, photos.values()))))
            summary = train_grid(
                lmbdas=LMBDAS, rhos=RHOS, preset="small", cell_train_steps=STEPS, base="family",
                corpus=[str(sources)], max_shorter=512, split_val=0.15,  # the family's held-out split
                eval_dataset="shards", eval_limit=EVAL_IMAGES, baselines=codecs, metrics=METRICS,
                distortion_decode=[1, 0.0],  # rho 0 cells: the one-step decode; rho 0.9: 9 steps with noise
                output_dir=str(OUT), experiment="cdc-demo", overrides=["train.num_workers=1"],
            )
            gallery_png = make_gallery()
        logging.getLogger("prefect").setLevel(logging.WARNING)  # its shutdown notes belong to the log
    except BaseException:
        print(f"cdc demo: failed; the last lines of {log}:", file=sys.stderr)
        print("".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:]), file=sys.stderr)
        raise SystemExit(1) from None
    print()
    print(summary["markdown"])
    print(f"\nGallery (original | JPEG at the same bpp | CDC rho 0 | CDC rho 0.9): {gallery_png}")
    print(f"Baseline and family curves (CompressAI schema): {', '.join(summary['curves'])}")
    minutes = (time.time() - start) / 60
    if "--publish" in sys.argv:
        publish(summary, gallery_png, minutes)
    print(f"Full log: {log}")
    print(f"Done in {minutes:.1f} min. Next:")
    print(f"  mlflow ui --backend-store-uri sqlite:///{HOME}/mlflow.db        # runs, metrics, sample images, registry")
    print("  .venv/bin/cdc models list --dataset shards")
    print("  .venv/bin/cdc compress photo.png -m models:/cdc-x-rho0.9@q1 -o out/   "
          "# or -m 'best:bpp<=0.5,objective=perception,dataset=shards'")
    print("  make serve   # Prefect server + worker + MLflow server, then: prefect deployment run train-grid/local ...")


if __name__ == "__main__":
    main()
