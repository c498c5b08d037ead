"""Model references -> local checkpoints: every form a user may write for a model, in one place.

* a checkpoint path (directory or ``.safetensors`` file);
* a shipped model name (``small-base``, ``cdc.zoo.pretrained``);
* ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (the MLflow registry, downloaded once);
* ``best:bpp<=0.2[,objective=perception|distortion][,dataset=shards]`` (a registry query; the
  dataset defaults to the one the registered models were evaluated on).

The CLI, the Prefect flows and ``cdc/train.py --init-from`` all resolve through
``resolve_model``, which raises ``ModelNotFoundError`` (a ``LookupError``) with a one-line
reason.
"""

from __future__ import annotations

from pathlib import Path


class ModelNotFoundError(LookupError):
    """A model reference that names no usable checkpoint (the message says why)."""


def resolve_model(ref: str | Path) -> Path:
    """The local checkpoint ``ref`` refers to (see the module docstring for the forms).

    Raises:
        ModelNotFoundError: no such path or shipped name, or the registry has no such model or
            cannot be reached.
    """
    text = str(ref)
    if text.startswith(("models:/", "best:")):
        from cdc.registry.catalog import RegistryError, resolve

        try:
            return resolve(text)
        except RegistryError as exc:
            raise ModelNotFoundError(str(exc)) from None
    from cdc.zoo.pretrained import resolve_checkpoint

    try:
        return resolve_checkpoint(ref)
    except FileNotFoundError as exc:
        raise ModelNotFoundError(str(exc)) from None
