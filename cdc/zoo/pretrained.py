"""Trained codecs that ship inside the package, loadable by name (e.g. ``small-base``).

Each is one ``cdc/zoo/weights/<name>.safetensors`` file (config and provenance in its metadata, see
``cdc.zoo.checkpoint``) with a model card ``<name>.md`` beside it (data, recipe, steps, the command
that reproduces it, fingerprint, held-out metrics). Every place that takes a model path also
takes these names: ``cdc compress -m small-base``, ``cdc init --from small-base``,
``cdc/train.py --init-from small-base``, ``train-grid`` with ``training.base = "small-base"``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

PRETRAINED_DIR = Path(__file__).with_name("weights")
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


DECODES = PRETRAINED_DIR / "decodes.json"
"""Each shipped model's default decode (DDIM steps, γ), as its card reports it."""


def default_decode(path: str | Path) -> tuple[int, float] | None:
    """The default decode ``(steps, gamma)`` of a shipped model's file; None for any other checkpoint
    (its config's ``sampler`` section decides)."""
    path = Path(path).resolve()
    if path.parent != PRETRAINED_DIR.resolve() or not DECODES.is_file():
        return None
    entry = json.loads(DECODES.read_text()).get(path.stem)
    return (int(entry["steps"]), float(entry["gamma"])) if isinstance(entry, dict) else None


def decode_line(name: str) -> str:
    """The model card's line on a shipped model's default decode and what it costs."""
    decode = json.loads(DECODES.read_text()).get(name) if DECODES.is_file() else None
    if not decode:
        return "* **default decode**: the config's sampler (no card decode recorded)"
    steps = f"{decode['steps']} DDIM step{'s' * (decode['steps'] != 1)}, γ = {decode['gamma']:g}"
    cost = (f" ({decode['cpu_s_768x512']:.2f} s per 768×512 photo on 2 CPU cores, "
            "`benchmarks/shipped_decode.py`)" if "cpu_s_768x512" in decode else "")
    return (f"* **default decode**: {steps}{cost}, what `cdc compress`, `cdc eval`, `cdc serve` and the Python "
            "API use unless told otherwise (`--steps`, `--gamma`)")


def shipped_table() -> str:
    """What ``cdc models list`` prints of the shipped models: objective, default decode and its
    CPU time per 768x512 photo (``benchmarks/shipped_decode.py``)."""
    from cdc.zoo.layout import read_checkpoint_info

    decodes = json.loads(DECODES.read_text()) if DECODES.is_file() else {}
    header = ["shipped", "lmbda", "rho", "default decode", "CPU s / 768x512"]
    rows = []
    for name, path in available().items():
        meta = read_checkpoint_info(path)["metadata"]
        decode = decodes.get(name) or {}
        steps = f"{decode['steps']} step{'s' * (decode['steps'] != 1)}, gamma {decode['gamma']:g}" if decode else ""
        seconds = f"{decode['cpu_s_768x512']:.2f}" if "cpu_s_768x512" in decode else ""
        rows.append([name, f"{meta.get('lmbda', '')}", f"{meta.get('rho', '')}", steps, seconds])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)).rstrip()
                     for r in [header, *rows])


def family() -> dict[str, tuple[float, float]]:
    """The shipped rate-quality family (``scripts/train_family.py``): name -> (λ, ρ) of each member."""
    from cdc.zoo.layout import read_checkpoint_info

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
    candidates = [(abs(math.log(m_lmbda / lmbda)), -m_lmbda, name)
                  for name, (m_lmbda, m_rho) in family().items() if m_rho == rho and m_lmbda > 0]
    if not candidates:
        raise FileNotFoundError(f"no shipped family member with rho = {rho:g} (scripts/train_family.py makes them)")
    return min(candidates)[2]
