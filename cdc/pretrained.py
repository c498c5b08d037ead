"""Trained codecs that ship inside the package, loadable by name (e.g. ``small-base``).

Each is one ``cdc/pretrained/<name>.safetensors`` file (config and provenance in its metadata, see
:mod:`cdc.checkpoint`) with a model card ``<name>.md`` beside it (data, recipe, steps, the command
that reproduces it, fingerprint, held-out metrics). Every place that takes a model path also
takes these names: ``cdc compress -m small-base``, ``cdc init --from small-base``,
``cdc/train.py --init-from small-base``, ``train-grid(base="small-base")``.
"""

from __future__ import annotations

from pathlib import Path

PRETRAINED_DIR = Path(__file__).with_name("pretrained")


def available() -> dict[str, Path]:
    """Shipped model names and their checkpoint files."""
    return {p.stem: p for p in sorted(PRETRAINED_DIR.glob("*.safetensors"))}


def resolve_checkpoint(ref: str | Path) -> Path:
    """A checkpoint path, or the file of a shipped model named ``ref``; an existing path wins.

    Raises:
        FileNotFoundError: neither a path nor a shipped name (the message lists the names).
    """
    path = Path(ref)
    if path.exists():
        return path
    shipped = available()
    if str(ref) in shipped:
        return shipped[str(ref)]
    names = ", ".join(shipped) or "none"
    raise FileNotFoundError(f"{ref}: no such model checkpoint (nor a shipped model name: {names})")
