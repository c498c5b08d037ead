"""Prefect flow ``train-grid``: a corpus becomes registered rate-quality models.

    ensure shards ─► one shared warm-up ─► fine-tune every (lambda, rho) cell ─► evaluate each
    (shard-corpus)   (fast-start recipe,   (concurrent up to the global         (+ the classical
                      cached by config      concurrency limit, retried)          baselines once)
                      hash; or a trained
                      ``base`` model)
                                         ─► register each (MLflow registry) ─► summary (markdown + RD plots)

    prefect deployment run train-grid/local --param grid='{"lmbdas": [0.01, 0.05], "rhos": [0, 0.9]}' \
        --param data='{"corpus": ["photos/"]}'

Idempotent: a cell's key hashes its config, the shards fingerprint and the code version; cells
already registered under that key are skipped. A failing cell is retried, never stops the others,
and is listed in the summary. MLflow gets a parent run for the grid and one child run per cell.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from prefect import flow, get_client, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from cdc.evaluation.metrics import parse_metrics
from cdc.evaluation.rd import slug
from cdc.registry.catalog import register_grid, registered_cell_keys
from cdc.registry.tracking import code_version, setup_mlflow
from cdc.zoo.pretrained import FAMILY
from pipelines.cells import (
    CONCURRENCY_LIMIT,
    CellResult,
    config_key,
    evaluate_baselines,
    evaluate_model,
    plan_grid,
    run_training,
    train_job,
)
from pipelines.grid_params import Data, Evaluation, Execution, Grid, Training
from pipelines.launchers import cpu_share
from pipelines.shard_corpus import shard_corpus
from pipelines.summary import summarize
from shards.manifest import Manifest


def ensure_shards(corpus: list[str] | None, shards: str | None, output_dir: Path, split_val: float,
                  patch_size: int | None, max_shorter: int | None = None) -> str:
    """The manifest to train on: ``shards`` as given, or ``shard-corpus`` run on ``corpus``."""
    if shards:
        return shards
    if not corpus:
        raise ValueError("train-grid needs `corpus` (image sources) or `shards` (a manifest)")
    result = shard_corpus(corpus, str(output_dir / "shards"), split_val=split_val, patch_size=patch_size,
                          max_shorter=max_shorter, max_count=200)
    return result["manifest"]


@flow(name="train-grid", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=8))
def train_grid(
    grid: Grid,
    data: Data,
    # frozen models: one shared default instance is safe
    training: Training = Training(),  # noqa: B008
    evaluation: Evaluation = Evaluation(),  # noqa: B008
    execution: Execution = Execution(),  # noqa: B008
) -> dict:
    """Train, evaluate and register a lambda x rho grid; returns the summary.

    Every field of every group is checked before any task runs (``pipelines.grid_params``); a dict
    is accepted for each group.

    Args:
        grid: the λ and ρ values (``Grid``).
        data: image sources to shard, or an existing manifest (``Data``).
        training: preset, prediction, steps, the warm-up or the ``base`` model, overrides (``Training``).
        evaluation: where and how each cell is evaluated, and the baselines beside it (``Evaluation``).
        execution: launcher and its options, concurrency, retries, output folder, MLflow experiment
            (``Execution``).
    """
    logger = get_run_logger()
    grid, data, training, evaluation, execution = (_group(cls, value) for cls, value in (
        (Grid, grid), (Data, data), (Training, training), (Evaluation, evaluation), (Execution, execution)))
    lmbdas, rhos, preset, prediction = grid.lmbdas, grid.rhos, training.preset, training.prediction
    launcher, experiment = execution.launcher, execution.experiment
    cells = [f"{lmbda:g}/{rho:g}" for lmbda in lmbdas for rho in rhos]
    for name, per_cell in (("execution.cell_launcher_options", execution.cell_launcher_options),
                           ("training.cell_overrides", training.cell_overrides)):
        unknown = set(per_cell) - set(cells)
        if unknown:
            raise ValueError(f"{name}: no such cell {', '.join(sorted(unknown))} (cells: {', '.join(cells)})")
    options = {cell: {**execution.launcher_options, **execution.cell_launcher_options.get(cell, {})}
               for cell in cells}
    if launcher == "local" and "OMP_NUM_THREADS" not in os.environ:  # the other half: the training jobs
        torch.set_num_threads(cpu_share())
    out = Path(execution.output_dir).resolve()
    manifest = ensure_shards(data.corpus, data.shards, out, data.split_val, data.patch_size, data.max_shorter)
    fingerprint = Manifest.load(manifest).fingerprint
    version = code_version()
    overrides = list(training.overrides)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(CONCURRENCY_LIMIT, execution.max_concurrent)
    setup_mlflow(experiment)
    train = run_training.with_options(retries=execution.retries)

    warm_dir = None
    warm_key = ""
    bases = {}
    base, warmup_train_steps, warmup_lmbda = training.base, training.warmup_train_steps, training.warmup_lmbda
    if base == FAMILY:
        from cdc.zoo.pretrained import nearest_member

        for lmbda in lmbdas:
            name = nearest_member(lmbda)
            bases[lmbda] = _start(name)
            logger.info(f"cells at λ = {lmbda:g} start from {name} (fingerprint {bases[lmbda][0]})")
    elif base:
        warm_key, warm_dir = _start(base)
        logger.info(f"cells start from {base} ({warm_dir}, fingerprint {warm_key})")
    elif warmup_train_steps > 0:
        warm_key = config_key({"preset": preset, "prediction": prediction, "steps": warmup_train_steps,
                               "lmbda": warmup_lmbda, "overrides": overrides, "shards": fingerprint, "code": version})
        warm_dir = out / f"warmup-{warm_key}"
        job = train_job(f"warmup-{warm_key[:8]}", warm_dir, shards=manifest, preset=preset, prediction=prediction,
                        train_steps=warmup_train_steps, lmbda=warmup_lmbda, rho=0.0, overrides=overrides,
                        init_from=None, tags={"cdc.role": "warmup"}, experiment=experiment)
        train(job, launcher, execution.launcher_options)

    def planned(registered: set[str]):
        return plan_grid(lmbdas, rhos, preset=preset, prediction=prediction,
                         cell_train_steps=training.cell_train_steps, shards=manifest, shards_fingerprint=fingerprint,
                         code_version=version, out=out, experiment=experiment, overrides=overrides,
                         cell_overrides=dict(training.cell_overrides),
                         warm_key=warm_key, warm_dir=warm_dir, bases=bases, registered=registered)

    registered = registered_cell_keys()
    plan = planned(registered)
    # a cell the registry knows but whose results are gone from this output folder is made again
    gone = {c.key for c in plan.skipped if not (out / "eval" / f"{slug(f'CDC {c.label}')}.json").is_file()}
    if gone:
        logger.warning(f"{len(gone)} registered cell(s) have no results in {out}: trained and evaluated again")
        plan = planned(registered - gone)
    for cell in plan.skipped:
        logger.info(f"{cell.label}: already registered (cell key {cell.key}), skipped")

    eval_dataset = evaluation.dataset
    settings = {"dataset": eval_dataset,
                "root": evaluation.root or (manifest if eval_dataset == "shards" else None),
                "protocol": evaluation.protocol, "limit": evaluation.limit, "save_recon": 1,
                "metrics": parse_metrics(evaluation.metrics)}
    eval_dir = out / "eval"
    futures = {}
    for planned in plan.todo:
        trained = train.submit(planned.job, launcher, options[f"{planned.cell.lmbda:g}/{planned.cell.rho:g}"])
        steps, gamma = (evaluation.distortion_decode if evaluation.distortion_decode and planned.cell.rho == 0
                        else (evaluation.decode_steps, None))
        evaluated = evaluate_model.submit(trained, f"CDC {planned.cell.label}", settings, str(eval_dir), steps, gamma)
        futures[planned.cell] = (planned.output_dir, trained, evaluated)
    baselines = ["jpeg", "webp"] if evaluation.baselines is None else evaluation.baselines
    baseline_files = evaluate_baselines.submit(baselines, settings, str(eval_dir))

    results, failures, attempts = [], {}, {}
    for cell, (cell_dir, trained, evaluated) in futures.items():
        attempts[cell.label] = _attempts(trained)
        try:
            trained.result()
            path, metrics = evaluated.result()
            results.append(CellResult(cell, str(cell_dir), {eval_dataset: metrics}, path))
        except Exception as exc:  # a failed cell is reported, never fatal
            failures[cell.label] = failure_reason(exc)
            logger.error(f"{cell.label}: failed after {attempts[cell.label]} attempt(s): {failures[cell.label]}")
    registered = register_grid([r.trained_model() for r in results], eval_dataset, experiment, settings)
    summary = summarize(plan.cells, plan.skipped, registered, failures, eval_dataset, baseline_files.result(), out)
    summary["attempts"] = attempts
    create_markdown_artifact(summary["markdown"], key="train-grid-summary", description=f"Grid in {out}")
    print(summary["markdown"])
    return summary


def _group(cls: type, value):
    """A parameter group as its model: Prefect passes the flow's parameters validated, a direct call
    of ``train_grid.fn`` may pass dicts."""
    return value if isinstance(value, cls) else cls.model_validate(value)


def _start(model: str) -> tuple[str, Path]:
    """A cell's starting model as (identity: fingerprint prefix, checkpoint path)."""
    from cdc.registry.resolve import resolve_model
    from cdc.zoo.checkpoint import read_checkpoint_info

    path = resolve_model(model)
    return read_checkpoint_info(path)["fingerprint"][:16], path


def failure_reason(exc: BaseException) -> str:
    """A failed cell in one line: the exception's first line and the log's telling line.

    The telling line is the run's own one-line error (``cdc ...: error: ...``) where the log's tail
    has one, else its last line: a run that ends itself (a data watchdog, a bad input) can be
    followed in the log by what its end set off in other processes (loader workers going down).
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [exc.__class__.__name__]
    if len(lines) == 1:
        return lines[0]
    own = [line for line in lines[1:] if line.startswith("cdc ") and ": error:" in line]
    return f"{lines[0]}: {(own or lines)[-1]}"


def _attempts(future) -> int:
    """How many times the task behind ``future`` ran (1 + retries used; 0 if it never started)."""
    from prefect.exceptions import ObjectNotFound

    future.wait()
    if future.task_run_id is None:
        return 0
    with get_client(sync_client=True) as client:
        try:
            return client.read_task_run(future.task_run_id).run_count
        except ObjectNotFound:  # never recorded: it did not start
            return 0
