"""How a grid runs ``cdc/train.py``: a local subprocess, a Slurm job, or a Kubernetes PyTorchJob.

Owns the launchers and what they share (``.base``); imports ``cdc`` (the run spec) and nothing
of Prefect, so a launcher can be used and tested on its own.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing

from pipelines.launchers.base import LaunchFailed, TrainJob, cpu_share, free_port
from pipelines.launchers.kubernetes import KubernetesLauncher
from pipelines.launchers.local import LocalLauncher
from pipelines.launchers.slurm import SlurmLauncher

LAUNCHERS = {"local": LocalLauncher, "slurm": SlurmLauncher, "k8s": KubernetesLauncher}


def make_launcher(kind: str, options: dict | None = None):
    """``local``, ``slurm`` or ``k8s`` with keyword options from the flow's parameters; text values
    (``nodes="2"`` from a command line) are read as the option's type.

    Raises:
        ValueError: an unknown launcher, an option it does not take, or a value of the wrong type
            (named).
    """
    if kind not in LAUNCHERS:
        raise ValueError(f"unknown launcher {kind!r} ({', '.join(LAUNCHERS)})")
    cls = LAUNCHERS[kind]
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(options or {}) - known
    if unknown:
        raise ValueError(f"{kind} launcher: unknown option {', '.join(sorted(unknown))} "
                         f"(options: {', '.join(sorted(known))})")
    values = {name: _typed(kind, name, value, hints[name]) for name, value in (options or {}).items()}
    return cls(**values)


def _typed(kind: str, name: str, value, hint):
    """``value`` as the option's type (``int``, ``float``, optional ones, ``list[str]``)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # an optional value: its other type
        hint = next(t for t in typing.get_args(hint) if t is not type(None))
    target = typing.get_origin(hint) or hint
    if value is None or (isinstance(value, target) and not (target is int and isinstance(value, bool))):
        return value
    try:
        if target is list and isinstance(value, str):
            return value.split()
        if target in (int, float) and not isinstance(value, bool):
            number = target(value)
            if target is float and not math.isfinite(number):
                raise ValueError
            return number
    except (TypeError, ValueError):
        pass
    raise ValueError(f"{kind} launcher: {name} must be {getattr(target, '__name__', target)}, not {value!r}")


__all__ = ["LAUNCHERS", "KubernetesLauncher", "LaunchFailed", "LocalLauncher", "SlurmLauncher", "TrainJob",
           "cpu_share", "free_port", "make_launcher"]
