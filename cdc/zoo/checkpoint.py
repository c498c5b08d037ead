"""Codec checkpoints: safetensors weights (CDF tables included) plus a JSON config.

Two layouts, both loadable without any training code:

* a directory ``MODEL/`` holding ``model.safetensors`` and ``config.json``;
* a single ``MODEL.safetensors`` file whose metadata key ``cdc_config`` holds the same JSON.

The *fingerprint* is the SHA-256 of the canonical codec config and every tensor (name, dtype,
shape, bytes); bitstreams carry its first 6 bytes so a file is never decoded by the wrong model.
"""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cdc.config import Config, ConfigError, config_from_dict
from cdc.files import atomic_path, atomic_write
from cdc.models.codec import CDCCodec
from cdc.zoo.layout import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, read_checkpoint_info
from cdc.zoo.pretrained import default_decode

FORMAT = "cdc-checkpoint/1"
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL"}


def fingerprint(codec: CDCCodec) -> str:
    """Hex SHA-256 over the codec config and all weights/buffers (in name order)."""
    h = hashlib.sha256(json.dumps(codec.config.codec_dict(), sort_keys=True).encode())
    for name, tensor in sorted(codec.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)  # flat: channels-last size-1 dims keep odd strides
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_codec(codec: CDCCodec, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``codec`` (after ``update(force=True)``) as a directory or ``.safetensors`` file.

    Writes are atomic (temp name, then rename) so an interrupted save never leaves a half
    checkpoint behind. ``metadata`` (JSON-serialisable) is stored next to the config.
    """
    path = Path(path)
    codec.update(force=True)
    state = {k: v.detach().cpu().contiguous() for k, v in codec.state_dict().items()}
    info = {
        "format": FORMAT,
        "config": codec.config.to_dict(),  # full config: training settings are provenance
        "fingerprint": fingerprint(codec),
        "parameters": sum(p.numel() for p in codec.parameters()),
        "metadata": metadata or {},
    }
    if path.suffix == ".safetensors":
        with atomic_path(path) as tmp:
            _save_file(state, tmp, metadata={"cdc_config": json.dumps(info)})
    else:
        with atomic_path(path / WEIGHTS_NAME) as tmp:
            _save_file(state, tmp)
        atomic_write(path / CONFIG_NAME, (json.dumps(info, indent=2) + "\n").encode())
    return path


def _save_file(state: dict, path: str, metadata: dict[str, str] | None = None) -> None:
    """safetensors' ``save_file``, its write failures (a full disk) raised as ``OSError`` naming ``path``."""
    try:
        save_file(state, path, metadata=metadata)
    except OSError:
        raise
    except Exception as exc:  # SafetensorError
        raise OSError(errno.EIO, f"cannot write weights ({str(exc).splitlines()[0]})", path) from None


def _check_shapes(path: Path, config: Config, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str]) -> None:
    """Refuse a config whose model differs from the file's tensors, comparing shapes and dtypes on a
    model built of fake tensors (no memory): an edited ``config.json`` must not allocate before it is
    found out, and weights cast to another type (int32 weights would code with truncated values)
    are not loaded silently."""
    from torch._subclasses.fake_tensor import FakeTensorMode  # shapes without storage; public API has none

    with FakeTensorMode():
        state = CDCCodec(config).state_dict()
        expected = {k: tuple(v.shape) for k, v in state.items()}
        wanted_dtypes = {k: _SAFETENSORS_DTYPES.get(v.dtype, str(v.dtype)) for k, v in state.items()}
    wrong = next((k for k in sorted(dtypes) if k in wanted_dtypes and dtypes[k] != wanted_dtypes[k]), None)
    if wrong is not None:
        raise CheckpointError(f"{path}: unexpected dtype {dtypes[wrong]} for {wrong} (the model needs "
                              f"{wanted_dtypes[wrong]})")
    # the coder's tables (CDFs, offsets) are sized by update(): empty in a fresh model
    expected = {k: shapes.get(k, v) if v == (0,) else v for k, v in expected.items()}
    if expected != shapes:
        name = next(k for k in sorted(expected.keys() | shapes.keys()) if expected.get(k) != shapes.get(k))
        raise CheckpointError(f"{path}: weights do not match the config ({name}: config {expected.get(name)}, "
                              f"file {shapes.get(name)})")


def load_codec(path: str | Path, device: str | torch.device = "cpu") -> CDCCodec:
    """Load a codec checkpoint (directory or ``.safetensors`` file) in eval mode.

    A shipped model (``cdc.zoo.pretrained``) also gets ``default_decode``, the (DDIM steps, γ) its
    card reports, which ``cdc.coding.coder.Coder`` uses unless told otherwise.

    Args:
        path: a checkpoint folder (``config.json`` + ``model.safetensors``) or one ``.safetensors``
            file (config in its metadata). For names and ``models:/`` URIs resolve first
            (``cdc.registry.resolve.resolve_model``).
        device: where the weights go (``"cpu"``, ``"cuda"``, ...).

    Returns:
        The codec: it takes images with pixels in [0, 1] and codes them at the rate it was trained for.

    Raises:
        CheckpointError: a missing or damaged checkpoint (one line naming the file and the problem).
    """
    path = Path(path)
    info = read_checkpoint_info(path)
    try:
        config: Config = config_from_dict(info["config"])
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"{path}: invalid config ({exc})") from exc
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
            dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
            _check_shapes(path, config, shapes, dtypes)  # before any real allocation: a config may ask for 100s of GB
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except CheckpointError:
        raise
    except Exception as exc:  # truncated or damaged files raise safetensors' own error types
        raise CheckpointError(f"{weights}: unreadable weights ({str(exc).splitlines()[0]})") from None
    bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
    if bad is not None:  # NaN weights would make the rANS coder loop for ever
        raise CheckpointError(f"{path}: non-finite weights in {bad} (a diverged or damaged model)")
    codec = CDCCodec(config)
    try:
        codec.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match the config ({str(exc).splitlines()[0]})") from exc
    codec.default_decode = default_decode(path)  # a shipped model's card decode; None: its config's
    return codec.to(device).eval()
