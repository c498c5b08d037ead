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
FAMILY = "family"
"""The grid's ``base`` value that starts each cell from the family member nearest in λ."""


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


def family() -> dict[str, tuple[float, float]]:
    """The shipped rate-quality family (``scripts/train_family.py``): name -> (λ, ρ) of each member."""
    from cdc.checkpoint import read_checkpoint_info

    members = {}
    for name, path in available().items():
        meta = read_checkpoint_info(path)["metadata"]
        if meta.get("family"):
            members[name] = (float(meta["lmbda"]), float(meta["rho"]))
    return members


def nearest_member(lmbda: float, rho: float = 0.0) -> str:
    """The family member with objective ρ nearest to ``lmbda`` in log λ (λ > 0; ties: the lower rate).

    Raises:
        FileNotFoundError: no shipped member has that ρ.
    """
    import math

    candidates = [(abs(math.log(m_lmbda / lmbda)), -m_lmbda, name)
                  for name, (m_lmbda, m_rho) in family().items() if m_rho == rho and m_lmbda > 0]
    if not candidates:
        raise FileNotFoundError(f"no shipped family member with rho = {rho:g} (scripts/train_family.py makes them)")
    return min(candidates)[2]
