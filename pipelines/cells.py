"""Grid cells: their idempotency keys, and the Prefect tasks that train, evaluate and register them.

A cell is one (lambda, rho) point. Its key hashes the cell's training configuration, the shards'
corpus fingerprint and the code version, so a rerun of the grid skips cells already registered
and retrains one whose data or code changed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency

from cdc.registry.catalog import TrainedModel
from cdc.training.run_spec import RunSpec
from pipelines.launchers import TrainJob, make_launcher

CONCURRENCY_LIMIT = "cdc-train-cells"


def config_key(payload: dict) -> str:
    """A short stable hash of a JSON-serialisable config."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cell:
    """One grid point and everything that defines its result (``train_steps``: its fine-tune length)."""

    lmbda: float
    rho: float
    preset: str
    prediction: str
    train_steps: int
    overrides: tuple[str, ...] = ()
    warmup_key: str = ""
    shards_fingerprint: str = ""
    code_version: str = ""

    @property
    def label(self) -> str:
        return f"lmbda{self.lmbda:g}-rho{self.rho:g}"

    @property
    def key(self) -> str:
        return config_key(asdict(self))


@dataclass
class CellResult:
    """A trained and evaluated cell: its model directory and metrics."""
    cell: Cell
    model_dir: str
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    results_file: str = ""

    def trained_model(self) -> TrainedModel:
        """What the registry needs of this cell (its parameters without the override strings)."""
        params = {k: v for k, v in asdict(self.cell).items() if k != "overrides"}
        return TrainedModel(self.cell.label, self.cell.key, params, self.model_dir, self.metrics, self.results_file)


@dataclass(frozen=True)
class CellJob:
    """A planned cell: what it is and the training run that makes it."""

    cell: Cell
    job: TrainJob

    @property
    def output_dir(self) -> Path:
        return Path(self.job.output_dir)


@dataclass(frozen=True)
class GridPlan:
    """Every cell of a grid in order (ρ-major), the ones to train with their jobs, the skipped ones."""

    cells: list[Cell]
    todo: list[CellJob]
    skipped: list[Cell]


def plan_grid(lmbdas: list[float], rhos: list[float], *, preset: str, prediction: str, cell_train_steps: int,
              shards: str, shards_fingerprint: str, code_version: str, out: Path, experiment: str,
              overrides: list[str] | None = None, cell_overrides: dict[str, list[str]] | None = None,
              warm_key: str = "", warm_dir: Path | None = None,
              bases: Mapping[float, tuple[str, Path]] | None = None,
              registered: set[str] | frozenset[str] = frozenset()) -> GridPlan:
    """The grid's work, without running anything: the cells to train with their ``cdc/train.py`` jobs
    and the cells already registered under their key (skipped). Pure: tests check it without Prefect.

    ``cell_overrides`` maps ``"lambda/rho"`` (``%g``) to extra overrides of that cell; ``warm_dir`` is
    the model every cell starts from (``warm_key`` its identity, part of every cell key); ``bases``
    maps a λ to its own start ``(key, model)`` instead (the shipped family member nearest in λ).
    """
    base = list(overrides or [])
    extra = cell_overrides or {}
    start = {lmbda: (bases or {}).get(lmbda, (warm_key, warm_dir)) for lmbda in lmbdas}
    cells = [Cell(lmbda, rho, preset, prediction, cell_train_steps, tuple(base + extra.get(f"{lmbda:g}/{rho:g}", [])),
                  start[lmbda][0], shards_fingerprint, code_version) for rho in rhos for lmbda in lmbdas]
    todo = [CellJob(c, train_job(c.label, out / "cells" / f"{c.label}-{c.key}", shards=shards, preset=preset,
                                 prediction=prediction, train_steps=cell_train_steps, lmbda=c.lmbda, rho=c.rho,
                                 overrides=list(c.overrides), init_from=start[c.lmbda][1],
                                 tags={"cdc.role": "cell", "cdc.cell_key": c.key}, experiment=experiment))
            for c in cells if c.key not in registered]
    return GridPlan(cells, todo, [c for c in cells if c.key in registered])


def train_job(name: str, output_dir: Path, *, shards: str, preset: str, prediction: str, train_steps: int,
              lmbda: float, rho: float, overrides: list[str], init_from: Path | None, tags: dict[str, str],
              experiment: str) -> TrainJob:
    """The run spec of one grid run, values kept typed (always ``resume: latest``: retries continue)."""
    spec = RunSpec(shards=(shards,), output_dir=str(output_dir), preset=preset,
                   settings={"train.max_steps": train_steps, "loss.lmbda": lmbda, "loss.rho": rho,
                             "diffusion.prediction": prediction},
                   overrides=tuple(overrides), init_from=str(init_from) if init_from is not None else None,
                   resume="latest", experiment=experiment, run_name=name, tags=dict(tags))
    return TrainJob(name=name, spec=spec)


@task(name="train", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def run_training(job: TrainJob, launcher: str, launcher_options: dict) -> str:
    """Run one ``cdc/train.py`` job (warm-up or cell) under the grid's global concurrency limit."""
    logger = get_run_logger()
    if job.finished():
        logger.info(f"{job.name}: already trained in {job.output_dir}")
        return job.output_dir
    with concurrency(CONCURRENCY_LIMIT, occupy=1):
        make_launcher(launcher, launcher_options).run(job, logger.info)
    return job.output_dir


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_model(model_dir: str, name: str, settings: dict, out_dir: str, decode_steps: int | None = None,
                   gamma: float | None = None) -> tuple[str, dict[str, float]]:
    """Evaluate one trained model (one RD point) with ``decode_steps`` DDIM steps and start-noise
    scale ``gamma`` (None: the model's defaults); returns (results file, averaged metrics)."""
    from cdc.coding.coder import Coder
    from cdc.evaluation.evaluate import EvalSettings, cdc_points, run_curve
    from cdc.evaluation.metrics import MetricSuite
    from cdc.zoo.checkpoint import load_codec

    coder = Coder(load_codec(model_dir))
    steps = decode_steps if decode_steps is not None else coder.default_decode[0]
    gamma = gamma if gamma is not None else coder.default_decode[1]
    cfg = EvalSettings(**{**settings, "steps": (steps,), "gamma": gamma})
    suite = MetricSuite(cfg.device, cfg.metrics)
    path = run_curve(name, "CDC grid cell, real bitstreams", cdc_points([coder], steps, cfg), cfg, suite,
                     Path(out_dir), meta={"model": model_dir, "steps": steps, "gamma": gamma})
    results = json.loads(path.read_text())["results"]
    return str(path), {k: v[0] for k, v in results.items()}


@task(name="evaluate-baselines", cache_policy=NO_CACHE)
def evaluate_baselines(names: list[str], settings: dict, out_dir: str) -> list[str]:
    """The classical codecs on the same images (skipped when their results already exist), all in one
    pass over the images: each reference image is decoded and its features computed once."""
    from cdc.evaluation.baselines import build_baseline
    from cdc.evaluation.evaluate import Curve, EvalSettings, baseline_points, run_curves
    from cdc.evaluation.metrics import MetricSuite
    from cdc.evaluation.rd import slug

    cfg = EvalSettings(**settings)
    chosen = [build_baseline(name) for name in names]
    paths = {b.name: Path(out_dir) / f"{slug(b.name)}.json" for b in chosen}
    todo = [Curve(b.name, b.description, baseline_points(b), {}) for b in chosen if not paths[b.name].is_file()]
    if todo:
        run_curves(todo, cfg, MetricSuite(cfg.device, cfg.metrics), Path(out_dir))
    return [str(paths[b.name]) for b in chosen]
