"""The ``train-grid`` flow's parameters in five typed groups, which Prefect's UI renders as forms.

Every field is checked when the flow run starts, before any task: a bad value fails the run with
the field's path (``grid.lmbdas.0``, ``evaluation.metrics``) and the problem. From Python, pass a
group as a model or as a plain dict (``grid={"lmbdas": [0.01], "rhos": [0]}``); from the command
line, as JSON (``--param grid='{"lmbdas": [0.01], "rhos": [0]}'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Lambda = Annotated[float, Field(ge=0.0, le=1e6, allow_inf_nan=False)]
Rho = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Steps = Annotated[int, Field(ge=1, le=10**9)]
Pixels = Annotated[int, Field(ge=64, le=65536)]


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Grid(_Group):
    """The λ × ρ grid: one model per (λ, ρ) cell.

    Attributes:
        lmbdas: rate weights λ (bits per pixel in the loss), each in [0, 1e6], distinct, at least one.
        rhos: perceptual weights ρ in [0, 1] (0: distortion only), distinct, at least one.
    """

    lmbdas: list[Lambda] = Field(min_length=1)
    rhos: list[Rho] = Field(min_length=1)

    @field_validator("lmbdas", "rhos")
    @classmethod
    def _distinct(cls, values: list[float]) -> list[float]:
        if len(set(values)) != len(values):
            raise ValueError(f"{values} repeats a value")
        return values


class Data(_Group):
    """What the grid trains on: image sources to shard, or an existing shard manifest.

    Attributes:
        corpus: image sources for ``shard-corpus`` (folders, archives, URLs); ignored when ``shards``
            is given.
        shards: an existing shard manifest (path or URL).
        split_val: share of the corpus held out for evaluation, in [0, 0.99].
        patch_size: crop every image to this many pixels per side when sharding (64-65536; None: whole).
        max_shorter: downscale images whose shorter side is larger (pixels, 64-65536; None: keep).
    """

    corpus: list[str] | None = None
    shards: str | None = None
    split_val: float = Field(0.1, ge=0.0, le=0.99)
    patch_size: Pixels | None = None
    max_shorter: Pixels | None = None

    @model_validator(mode="after")
    def _a_source(self) -> Data:
        if not self.corpus and not self.shards:
            raise ValueError("give corpus (image sources) or shards (a manifest)")
        return self


class Training(_Group):
    """How each cell is trained (``cdc/train.py`` settings).

    Attributes:
        preset: ``tiny`` | ``small`` | ``paper`` or a YAML file.
        prediction: what the U-Net predicts: ``sample`` (x0), ``epsilon`` or ``v``.
        cell_train_steps: each cell's fine-tune, in optimisation steps (>= 1).
        warmup_train_steps: the shared warm-up from scratch (ρ 0, the preset's recipe), in steps; 0 skips it.
        warmup_lmbda: the warm-up's λ.
        base: start every cell from this trained model (a path or a shipped name such as ``small-q2``)
            instead of a warm-up; ``"family"``: each cell from the shipped member nearest to its λ.
            The start's fingerprint is part of every cell key.
        overrides: config overrides (``key=value``) for every run.
        cell_overrides: extra overrides per cell, keyed ``"lambda/rho"`` (e.g. ``{"0.05/0": [...]}``).
    """

    preset: str = "small"
    prediction: Literal["sample", "epsilon", "v"] = "sample"
    cell_train_steps: Steps = 300
    warmup_train_steps: int = Field(300, ge=0, le=10**9)
    warmup_lmbda: Lambda = 0.004
    base: str | None = None
    overrides: list[str] = []
    cell_overrides: dict[str, list[str]] = {}

    @model_validator(mode="after")
    def _loads(self) -> Training:
        from cdc.config import PRESETS, load_config

        if self.preset not in PRESETS and not Path(self.preset).is_file():
            raise ValueError(f"preset {self.preset!r} is not one of {', '.join(PRESETS)} nor a YAML file")
        for extra in ([], *self.cell_overrides.values()):
            load_config(self.preset, [*self.overrides, *extra])  # a bad override names itself
        return self


class Evaluation(_Group):
    """Where and how every cell is evaluated, through real bitstreams.

    Attributes:
        dataset: ``shards`` (the held-out split of the grid's shards), ``kodak``, ``div2k`` or a folder.
        root: where ``dataset`` lives (None: the shards' manifest for ``shards``, else the data cache).
        protocol: ``full`` (whole images) or ``cdc768`` (the paper's 768-pixel crops).
        decode_steps: DDIM steps of every decode (1-256; None: each model's default decode).
        distortion_decode: ``[DDIM steps, γ]`` for the ρ = 0 cells instead (e.g. ``[1, 0.0]``: the
            deterministic one-step decode); None: as every cell.
        limit: evaluate the first N images only (0: all).
        baselines: classical codecs on the same images (None: jpeg and webp).
        metrics: as ``cdc eval --metrics`` (``default``, ``report``, ``all`` or a comma list).
    """

    dataset: str = "shards"
    root: str | None = None
    protocol: Literal["full", "cdc768"] = "full"
    decode_steps: Annotated[int, Field(ge=1, le=256)] | None = None
    distortion_decode: tuple[Annotated[int, Field(ge=1, le=256)],
                             Annotated[float, Field(ge=0.0, le=65.535, allow_inf_nan=False)]] | None = None
    limit: int = Field(0, ge=0, le=10**9)
    baselines: list[str] | None = None
    metrics: str = "report"

    @field_validator("baselines")
    @classmethod
    def _known_baselines(cls, names: list[str] | None) -> list[str] | None:
        from cdc.evaluation.baselines import BUILDERS

        for name in names or ():
            if name not in BUILDERS:
                raise ValueError(f"unknown baseline {name!r} ({', '.join(BUILDERS)})")
        return names

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, text: str) -> str:
        from cdc.evaluation.metrics import parse_metrics

        parse_metrics(text)
        return text


class Execution(_Group):
    """Where the trainings run and where the results go.

    Attributes:
        launcher: ``local`` | ``slurm`` | ``k8s`` (``pipelines.launchers``).
        launcher_options: the launcher's keyword options (e.g. ``{"nodes": 2, "partition": "gpu"}``).
        cell_launcher_options: extra options per cell, keyed ``"lambda/rho"``.
        max_concurrent: simultaneous trainings (the global concurrency limit ``cdc-train-cells``), >= 1.
        retries: extra attempts of a failing cell's training, 0-100.
        output_dir: the grid's folder (shards, runs, evaluation, summary).
        experiment: the MLflow experiment of the grid's runs.
    """

    launcher: Literal["local", "slurm", "k8s"] = "local"
    launcher_options: dict = {}
    cell_launcher_options: dict[str, dict] = {}
    max_concurrent: int = Field(1, ge=1, le=10**4)
    retries: int = Field(1, ge=0, le=100)
    output_dir: str = "runs/grid"
    experiment: str = "cdc-grid"

    @model_validator(mode="after")
    def _options(self) -> Execution:
        from pipelines.launchers import make_launcher

        for options in (self.launcher_options, *self.cell_launcher_options.values()):
            make_launcher(self.launcher, {**self.launcher_options, **options})
        return self


GROUPS: dict[str, type[_Group]] = {"grid": Grid, "data": Data, "training": Training, "evaluation": Evaluation,
                                   "execution": Execution}
EVAL_PREFIXED = ("dataset", "root", "protocol", "limit")
"""The evaluation fields whose flat keyword (``grouped``) carries an ``eval_`` prefix."""


def grouped(**flat) -> dict[str, dict]:
    """The flow's groups from flat keywords, for scripts: ``train_grid(**grouped(lmbdas=[0.01], rhos=[0],
    corpus=["photos/"], eval_limit=2))``. The evaluation fields ``EVAL_PREFIXED`` take an ``eval_`` prefix
    (``eval_dataset``, ``eval_limit``, ...); the others keep their names.

    Raises:
        TypeError: a keyword that no group has.
    """
    groups: dict[str, dict] = {}
    for group, model in GROUPS.items():
        keyword = {field: f"eval_{field}" if group == "evaluation" and field in EVAL_PREFIXED else field
                   for field in model.model_fields}
        values = {field: flat.pop(key) for field, key in keyword.items() if key in flat}
        if values or group in ("grid", "data"):
            groups[group] = values
    if flat:
        raise TypeError(f"train-grid has no parameter {', '.join(sorted(flat))}")
    return groups
