"""Shared fixtures: tiny seeded codecs, real photos shipped inside scikit-image's wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).with_name("golden")
REGENERATE = os.environ.get("CDC_REGENERATE_GOLDEN") == "1"
# Tests never read or fill the user's baseline results cache (subprocesses inherit this).
os.environ["CDC_EVAL_CACHE"] = tempfile.mkdtemp(prefix="cdc-eval-cache-")


def photo(name: str = "astronaut", size: tuple[int, int] | None = None) -> np.ndarray:
    """A real RGB photo from scikit-image's bundled data (uint8 H x W x 3), optionally cropped."""
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if size is not None:
        img = img[: size[0], : size[1]]
    return np.ascontiguousarray(img[..., :3])


def photo_tensor(name: str = "astronaut", size: tuple[int, int] | None = None) -> torch.Tensor:
    return torch.from_numpy(photo(name, size)).permute(2, 0, 1)[None].float() / 255


def tiny_codec(seed: int = 0, overrides: tuple[str, ...] = ()):
    from cdc.codec import CDCCodec
    from cdc.config import load_config

    torch.manual_seed(seed)
    codec = CDCCodec(load_config("tiny", overrides)).eval()
    codec.update(force=True)
    return codec


@pytest.fixture
def codec():
    return tiny_codec()


@pytest.fixture
def model_dir(tmp_path):
    """A saved tiny checkpoint directory."""
    from cdc.checkpoint import save_codec

    return save_codec(tiny_codec(), tmp_path / "model")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m cdc ARGS`` in a real subprocess (``timeout`` seconds: a hang fails the test)."""
    return subprocess.run(
        [sys.executable, "-m", "cdc", *map(str, args)], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=timeout,
    )
