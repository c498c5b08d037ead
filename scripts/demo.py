"""The end-to-end demo (`make demo`): real photos -> shards -> a 2 x 2 lambda x rho grid of `small`
codecs, each cell fine-tuned from the shipped family member nearest in lambda -> evaluation on the
held-out split against JPEG, WebP and AVIF -> MLflow registry -> the rate-quality table, plot paths
and what to run next.

The photos are the photo corpus (shards/photocorpus.py, the 255 photographs of shards/photos.tsv,
fetched from Debian and PyPI packages and verified by SHA-1); its held-out split is the family's. Everything
stays in this folder: MLflow on SQLite (.cdc/mlflow.db, artifacts in .cdc/mlartifacts), a Prefect
server of its own for the run (state in .cdc/prefect; it ends with the script, however the script
ends), outputs in runs/demo/. About 10-15 minutes on 2 CPU cores.

    python scripts/demo.py [--fresh] [--publish]

--fresh starts the demo anew: it removes runs/demo/ (refusing if it holds anything the demo did not
make) and, from the registry, the demo's own runs and the model versions they registered; every
other model, run and file stays. --publish replaces the README's demo results (docs/demo/:
summary.json, whose tables the README and the docs render, the RD plot, the gallery).
"""

from __future__ import annotations

import argparse
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
EXPERIMENT = "cdc-demo"
MADE = {"corpus", "shards", "cells", "eval", "plots", "summary.md", "summary.json", "demo.log", "gallery.png",
        ".lock"}
"""What the demo writes into runs/demo/ (besides grid-*.json curves and warmup-* folders)."""


def start_fresh() -> None:
    """Remove the demo's outputs and its runs and model versions, nothing else; refuse with one line
    when runs/demo/ holds files the demo did not make."""
    if OUT.exists():
        foreign = sorted(p.name for p in OUT.iterdir()
                         if p.name not in MADE and not p.name.startswith(("grid-", "warmup-")))
        if foreign:
            raise SystemExit(f"cdc demo: --fresh: {OUT} holds files the demo did not make "
                             f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}): move them away first")
        shutil.rmtree(OUT)
    forget_demo_runs()


def forget_demo_runs() -> None:
    """Delete the demo experiment's runs and the model versions they registered (and a registered
    model left without versions); other experiments' runs and models stay."""
    import mlflow

    from cdc.registry.tracking import configure_tracking

    configure_tracking()
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return
    runs, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], max_results=1000, page_token=token)
        runs += [r.info.run_id for r in page]
        token = page.token
        if not token:
            break
    ours = set(runs)
    for model in client.search_registered_models():
        versions = client.search_model_versions(f"name='{model.name}'")
        mine = [v for v in versions if v.run_id in ours]
        for version in mine:
            client.delete_model_version(model.name, version.version)
        if mine and len(mine) == len(versions):
            client.delete_registered_model(model.name)
    for run_id in runs:
        client.delete_run(run_id)


def make_gallery() -> Path:
    """original | JPEG nearest in rate | CDC rho 0 | CDC rho 0.9, all at the largest lambda (lowest rate)."""
    import json

    from cdc.evaluation.datasets import shard_split_images
    from cdc.evaluation.rd import gallery, slug

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="remove the demo's outputs, runs and models first "
                        "(nothing else)")
    parser.add_argument("--publish", action="store_true", help="replace the README's demo results (docs/demo/)")
    args = parser.parse_args(argv)
    # Prefect keeps its settings and local server database here, reads the folder when it is
    # imported and does not create its parents: make it first (a fresh clone has no .cdc/).
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    if args.fresh:
        start_fresh()
    from demo_display import Stages, quiet_console

    from pipelines.grid_params import grouped
    from pipelines.local_server import temporary_server
    from pipelines.train_grid import train_grid
    from shards.photocorpus import DEFAULT_CACHE, DEFAULT_LIST, fetch_photos, read_list

    start = time.time()
    log = OUT / "demo.log"
    cells, codecs = len(LMBDAS) * len(RHOS), ["jpeg", "webp", "avif"]
    print(f"cdc demo: {len(LMBDAS)} λ × {len(RHOS)} ρ cells of `small` codecs, {STEPS} fine-tune steps each, "
          f"evaluated on {EVAL_IMAGES} held-out photos (full log: {log})")
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        with quiet_console(log, Stages(OUT, cells, STEPS, len(codecs))), \
                temporary_server(Path(os.environ["PREFECT_HOME"]), log):
            photos, _ = fetch_photos(read_list(DEFAULT_LIST), DEFAULT_CACHE)  # warns and goes on for what is missing
            sources = OUT / "corpus" / "sources.txt"
            sources.parent.mkdir(parents=True, exist_ok=True)
            sources.write_text("".join(f"{p}\n" for p in sorted(map(str, photos.values()))))
            summary = train_grid(**grouped(
                lmbdas=LMBDAS, rhos=RHOS, preset="small", cell_train_steps=STEPS, base="family",
                corpus=[str(sources)], max_shorter=512, split_val=0.15,  # the family's held-out split
                eval_dataset="shards", eval_limit=EVAL_IMAGES, baselines=codecs, metrics=METRICS,
                distortion_decode=[1, 0.0],  # rho 0 cells: the one-step decode; rho 0.9: 9 steps with noise
                output_dir=str(OUT), experiment=EXPERIMENT, overrides=["train.num_workers=1"],
            ))
            gallery_png = make_gallery()
        logging.getLogger("prefect").setLevel(logging.WARNING)  # its shutdown notes belong to the log
    except KeyboardInterrupt:
        print(f"cdc demo: interrupted; rerun it to continue (finished cells are kept), log: {log}", file=sys.stderr)
        return 130
    except Exception:
        print(f"cdc demo: failed; the last lines of {log}:", file=sys.stderr)
        print("".join(log.read_text(errors="replace").splitlines(keepends=True)[-25:]), file=sys.stderr)
        return 1
    print()
    print(summary["markdown"])
    print(f"\nGallery (original | JPEG at the same bpp | CDC rho 0 | CDC rho 0.9): {gallery_png}")
    print(f"Baseline and family curves (CompressAI schema): {', '.join(summary['curves'])}")
    minutes = (time.time() - start) / 60
    if args.publish:
        publish(summary, gallery_png, minutes)
    print(f"Full log: {log}")
    print(f"Done in {minutes:.1f} min. Next:")
    print(f"  mlflow ui --backend-store-uri sqlite:///{HOME}/mlflow.db        # runs, metrics, sample images, registry")
    print("  .venv/bin/cdc models list --dataset shards")
    print("  .venv/bin/cdc compress photo.png -m models:/cdc-x-rho0.9@q1 -o out/   "
          "# or -m 'best:bpp<=0.5,objective=perception,dataset=shards'")
    print("  make serve   # Prefect server + worker + MLflow server, then: prefect deployment run train-grid/local ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
