"""A codec checkpoint's file names, its error and its JSON info, read without PyTorch.

Light on purpose: the training launcher refuses a wrong output directory, and ``cdc models list``
lists the shipped models, without loading PyTorch, compressai and accelerate (seconds on a small
machine). Loading and saving weights is ``cdc.zoo.checkpoint``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
MAX_CONFIG_BYTES = 16 * 2**20
"""Largest checkpoint config read (a real one is a few KB)."""


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or does not match its config."""


def read_checkpoint_info(path: str | Path) -> dict[str, Any]:
    """The JSON info of a checkpoint (config, fingerprint, metadata) without loading weights."""
    path = Path(path)
    if path.is_dir():
        cfg_file = path / CONFIG_NAME
        if not cfg_file.is_file() or not (path / WEIGHTS_NAME).is_file():
            raise CheckpointError(f"{path}: not a codec checkpoint (needs {WEIGHTS_NAME} and {CONFIG_NAME})")
        if cfg_file.stat().st_size > MAX_CONFIG_BYTES:
            raise CheckpointError(f"{cfg_file}: broken checkpoint config (larger than {MAX_CONFIG_BYTES} bytes)")
        return _json_info(cfg_file, cfg_file.read_bytes())
    if not path.is_file():
        raise CheckpointError(f"{path}: {'not a regular file' if path.exists() else 'no such checkpoint'}")
    try:
        with safe_open(str(path), framework="numpy") as f:  # the metadata only: no PyTorch
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a safetensors file ({exc})") from exc
    if "cdc_config" not in meta:
        raise CheckpointError(f"{path}: safetensors file without a cdc_config entry")
    if len(meta["cdc_config"]) > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: broken checkpoint config (larger than {MAX_CONFIG_BYTES} bytes)")
    return _json_info(path, meta["cdc_config"])


def _json_info(path: Path, text: str | bytes) -> dict[str, Any]:
    try:
        info = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: broken checkpoint config ({exc})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: broken checkpoint config (nested too deeply)") from None
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise CheckpointError(f"{path}: broken checkpoint config (no 'config' object)")
    return info
