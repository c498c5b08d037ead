"""The end-to-end demo (`make demo`): real photos -> shards -> a 2 x 2 lambda x rho grid of `small`
codecs (shared warm-up + fine-tunes) -> evaluation on the held-out split against JPEG, WebP and AVIF
-> MLflow registry -> the rate-quality table, plot paths and what to run next.

Everything stays in this folder: MLflow on SQLite (.cdc/mlflow.db, artifacts in .cdc/mlartifacts),
Prefect in local (ephemeral) mode (.cdc/prefect), outputs in runs/demo/. No server is needed.
About 10-15 minutes on 2 CPU cores. Models trained for minutes (the paper warms up for 700k steps)
reconstruct poorly: the demo shows the machinery, its numbers are not CDC's quality.
"""

from __future__ import annotations

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

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]


def build_corpus(folder: Path) -> None:
    """Real photos shipped inside installed wheels (scikit-image, scikit-learn, matplotlib)."""
    import matplotlib.cbook as cbook
    import numpy as np
    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_sample_image

    folder.mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")
    for name in ("china.jpg", "flower.jpg"):
        Image.fromarray(load_sample_image(name)).save(folder / name.replace(".jpg", ".png"))
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        Image.fromarray(np.asarray(Image.open(f).convert("RGB"))).save(folder / "grace_hopper.png")


def main() -> None:
    sys.path.insert(0, str(REPO))
    from pipelines.train_grid import train_grid

    start = time.time()
    if "--fresh" in sys.argv:
        shutil.rmtree(OUT, ignore_errors=True)
    build_corpus(OUT / "corpus")
    # Prefect's local server keeps its SQLite database here and does not create the folder itself.
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    summary = train_grid(
        lmbdas=[0.01, 0.04], rhos=[0.0, 0.9], preset="small", steps=60, warmup_steps=150,
        corpus=[str(OUT / "corpus")], patch_size=256, split_val=0.15,  # val: 2 of the 10 photos (by hash)
        eval_dataset="shards", eval_limit=4, baselines=["jpeg", "webp", "avif"], output_dir=str(OUT),
        experiment="cdc-demo",
    )
    print("\n" + "=" * 100)
    print(summary["markdown"])
    print(f"\nBaseline and family curves (CompressAI schema): {', '.join(summary['curves'])}")
    print(f"Done in {(time.time() - start) / 60:.1f} min. Next:")
    print(f"  mlflow ui --backend-store-uri sqlite:///{HOME}/mlflow.db        # runs, metrics, sample images, registry")
    print("  .venv/bin/cdc models list --dataset shards")
    print("  .venv/bin/cdc compress photo.png -m models:/cdc-x-rho0.9@q1 -o out/   "
          "# or -m 'best:bpp<=0.5,objective=perception,dataset=shards'")
    print("  make serve   # Prefect server + worker + MLflow server, then: prefect deployment run train-grid/local ...")


if __name__ == "__main__":
    main()
