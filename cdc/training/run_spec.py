"""One training run as data: everything ``cdc/train.py`` needs, in one typed, JSON-serializable spec.

The grid writes one spec per cell (``<output_dir>/job.json``) and launchers run
``cdc/train.py --job job.json --world-size N``; by hand, the command-line flags build the same spec
(``cdc.train.spec_from_args``). Config values travel typed: ``settings`` maps dotted config
keys to JSON values (``{"loss.lmbda": 0.0064}`` stays a float from the grid to the trainer);
``overrides`` keeps hand-written ``a.b=value`` strings, applied last::

    {"shards": ["runs/shards"], "output_dir": "runs/grid/l0.0064-r0", "preset": "small",
     "settings": {"loss.lmbda": 0.0064, "loss.rho": 0.0, "train.max_steps": 400},
     "init_from": "small-base", "resume": "latest", "experiment": "cdc-grid", "tags": {"grid": "g1"}}
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdc.config import RECIPES, Config, load_config
from cdc.files import atomic_write


class SpecError(ValueError):
    """A run spec file that cannot be used (unreadable, not JSON, unknown or missing fields)."""


@dataclass(frozen=True)
class RunSpec:
    """What one training run needs.

    Attributes:
        shards: manifest.json files, their directories, or shard URLs (train split).
        output_dir: checkpoints, logs and, at the end, the exported model.
        preset: ``tiny`` | ``small`` | ``paper`` or a YAML config file.
        recipe: ``fast`` (autoencoder first, residual diffusion) or ``paper`` (the official recipe).
        settings: dotted config keys -> typed values (e.g. ``{"loss.rho": 0.5}``).
        overrides: ``a.b=value`` strings, applied after ``settings``.
        init_from: model to start from (any ``cdc.registry.resolve`` form); the run is then a fine-tune.
        resume: ``latest`` or a checkpoint directory.
        overwrite: replace a model already exported in ``output_dir``.
        experiment: the MLflow experiment of the run.
        run_name: the MLflow run's name.
        tags: MLflow run tags.
        world_size: processes the launch was asked for; the run refuses to start with another number.
    """

    shards: tuple[str, ...]
    output_dir: str
    preset: str = "tiny"
    recipe: str = "fast"
    settings: dict[str, Any] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()
    init_from: str | None = None
    resume: str | None = None
    overwrite: bool = False
    experiment: str = "cdc-train"
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    world_size: int | None = None

    def __post_init__(self) -> None:
        if not self.shards:
            raise SpecError("a run spec needs at least one shards source")
        if not self.output_dir:
            raise SpecError("a run spec needs an output_dir")
        if self.recipe not in RECIPES:
            raise SpecError(f"unknown recipe {self.recipe!r} (one of {', '.join(RECIPES)})")
        if self.world_size is not None and self.world_size < 1:
            raise SpecError(f"world_size must be >= 1, got {self.world_size}")

    def config(self) -> Config:
        """The preset with the recipe, ``settings`` and ``overrides`` applied (raises ConfigError)."""
        return load_config(self.preset, self.overrides, recipe=self.recipe, settings=self.settings)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def save(self, path: str | Path) -> Path:
        """Write the spec as JSON (atomically); returns the path."""
        path = Path(path)
        atomic_write(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "run spec") -> RunSpec:
        """Build and check a spec; unknown keys and wrong types are refused naming ``source``."""
        if not isinstance(data, dict):
            raise SpecError(f"{source}: expected a JSON object")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SpecError(f"{source}: unknown field(s) {', '.join(unknown)}")
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in data
                         and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        if missing:
            raise SpecError(f"{source}: missing field(s) {', '.join(missing)}")
        values = {}
        for key, value in data.items():
            values[key] = _typed(value, hints[key], f"{source}: {key}")
        try:
            return cls(**values)
        except SpecError as exc:
            raise SpecError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> RunSpec:
        """Read a spec written by ``save`` (or by hand)."""
        from shards.sources import read_local_file

        try:
            data = json.loads(read_local_file(path, max_bytes=2**20).decode("utf-8"))
        except OSError as exc:
            raise SpecError(f"{path}: cannot read ({exc.strerror or exc})") from None
        except UnicodeDecodeError as exc:
            raise SpecError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        except json.JSONDecodeError as exc:
            raise SpecError(f"{path}: not JSON ({exc})") from None
        except RecursionError:
            raise SpecError(f"{path}: nested too deeply to be a run spec") from None
        return cls.from_dict(data, str(path))


def _typed(value: Any, hint: Any, where: str) -> Any:
    """Check a JSON value against a field's annotation (tuples arrive as lists)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SpecError(f"{where}: expected a list of strings")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise SpecError(f"{where}: expected an object")
        if args[1] is str and not all(isinstance(v, str) for v in value.values()):
            raise SpecError(f"{where}: expected string values")
        return dict(value)
    if hint is bool or hint is str:
        if not isinstance(value, hint):
            raise SpecError(f"{where}: expected {hint.__name__}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where}: expected an integer")
        return value
    raise SpecError(f"{where}: unsupported field type {hint}")
