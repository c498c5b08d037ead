"""The guard that the codec learns: trained from scratch by the real ``cdc/train.py`` with the
default recipe, the deterministic one-step decode of a held-out photo must beat a flat image of
its mean colour by 5 dB. The official recipe, same steps, does not (it decodes to grey): the check
can fail for the reason it names."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO

from cdc.coding.coder import Coder
from cdc.evaluation.metrics import psnr
from cdc.zoo.checkpoint import load_codec

STEPS = 600
pytestmark = pytest.mark.slow


def held_out_crop() -> np.ndarray:
    """128 x 128 of scikit-learn's china.jpg at 1/3 scale: not among the tiny shard's photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    img = Image.fromarray(load_sample_image("china.jpg")).resize((213, 142), Image.Resampling.LANCZOS)
    return np.ascontiguousarray(np.asarray(img)[:128, 40:168])


def train_tiny(out, recipe: str) -> subprocess.Popen:
    """Start a one-thread training run of ``recipe`` into ``out / "model"`` (two run side by side on two cores)."""
    out.mkdir(parents=True)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out}/mlflow.db", "OMP_NUM_THREADS": "1"}
    with (out / "stderr.txt").open("w") as stderr:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, str(REPO / "cdc" / "train.py"), "--preset", "tiny", "--recipe",
                                 recipe, "--shards", str(REPO / "tests" / "assets" / "tiny-shard"), "--output-dir",
                                 str(out / "model"), "--max-steps", str(STEPS), "--lmbda", "0.001",
                                 "train.num_workers=0", "train.sample_every=0", "train.checkpoint_every=1000"],
                                env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def one_step_psnr_gain(model_dir) -> tuple[float, float]:
    """(PSNR of the γ = 0, 1-step decode through a real bitstream, PSNR of the flat mean image)."""
    img = held_out_crop()
    coder = Coder(load_codec(model_dir))
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    decoded, _ = coder.decode(coder.encode(x, steps=1, gamma=0.0).data)
    rec = (decoded[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    flat = np.broadcast_to(img.reshape(-1, 3).mean(0).round().astype(np.uint8), img.shape)
    return psnr(img, rec), psnr(img, flat)


def test_default_recipe_learns_and_the_paper_recipe_does_not(tmp_path):
    runs = {recipe: train_tiny(tmp_path / recipe, recipe) for recipe in ("fast", "paper")}
    try:
        for recipe, proc in runs.items():
            assert proc.wait(timeout=900) == 0, (tmp_path / recipe / "stderr.txt").read_text()[-3000:]
    finally:
        for proc in runs.values():
            proc.kill()
    decoded, flat = one_step_psnr_gain(tmp_path / "fast" / "model")
    assert decoded >= flat + 5, f"default recipe: {decoded:.2f} dB vs flat {flat:.2f} dB"
    paper, _ = one_step_psnr_gain(tmp_path / "paper" / "model")
    assert paper < flat + 5, f"the official recipe unexpectedly learned: {paper:.2f} dB vs flat {flat:.2f} dB"
