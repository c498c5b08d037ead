"""Prefect flow ``train-grid``: a corpus becomes registered rate-quality models.

    ensure shards ─► one shared warm-up ─► fine-tune every (lambda, rho) cell ─► evaluate each
    (shard-corpus)   (fast-start recipe,   (concurrent up to the global         (+ the classical
                      cached by config      concurrency limit, retried)          baselines once)
                      hash; or a trained
                      ``base`` model)
                                         ─► register each (MLflow registry) ─► summary (markdown + RD plots)

    prefect deployment run train-grid/local --param lmbdas='[0.01,0.05]' --param rhos='[0,0.9]'

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

from cdc.metrics import parse_metrics
from cdc.pretrained import FAMILY
from cdc.rd import slug
from cdc.registry import register_grid, registered_cell_keys
from cdc.tracking import code_version, setup_mlflow
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
    lmbdas: list[float],
    rhos: list[float],
    prediction: str = "sample",
    preset: str = "small",
    cell_train_steps: int = 300,
    warmup_train_steps: int = 300,
    warmup_lmbda: float = 0.004,
    base: str | None = None,
    corpus: list[str] | None = None,
    shards: str | None = None,
    split_val: float = 0.1,
    patch_size: int | None = None,
    max_shorter: int | None = None,
    eval_dataset: str = "shards",
    eval_root: str | None = None,
    eval_protocol: str = "full",
    decode_steps: int | None = None,
    distortion_decode: list | None = None,
    eval_limit: int = 0,
    baselines: list[str] | None = None,
    metrics: str = "report",
    launcher: str = "local",
    launcher_options: dict | None = None,
    max_concurrent: int = 1,
    retries: int = 1,
    output_dir: str = "runs/grid",
    experiment: str = "cdc-grid",
    overrides: list[str] | None = None,
    cell_overrides: dict[str, list[str]] | None = None,
) -> dict:
    """Train, evaluate and register a lambda x rho grid; returns the summary.

    Args:
        lmbdas, rhos: the grid (rate weights; perceptual weights in [0, 1]).
        prediction, preset, cell_train_steps: per-cell training (``cdc/train.py`` flags; the cell's
            fine-tune length in optimisation steps).
        warmup_train_steps, warmup_lmbda: the shared warm-up from scratch (rho 0, the config's recipe: the
            fast-start recipe by default, so a moderate rate works; the paper's recipe needs ~1e-6
            and hundreds of thousands of steps); 0 steps skips it.
        base: start every cell from this trained model (a path or a shipped name such as
            ``small-q2``) instead of a warm-up; ``"family"``: each cell from the shipped family member
            nearest to its λ (:func:`cdc.pretrained.nearest_member`), so that cells land at different
            rates after a short fine-tune. The start's fingerprint is part of every cell key.
        corpus / shards: image sources to shard (``split_val``, ``patch_size``, ``max_shorter`` as in
            ``shard-corpus``), or an existing manifest.
        eval_dataset, eval_root, eval_protocol, decode_steps (DDIM steps; None: each model's default), eval_limit:
            where and how cells are evaluated (``shards`` = the held-out val split).
        distortion_decode: ``[DDIM steps, γ]`` for the ρ = 0 cells instead (e.g. ``[1, 0.0]``: the
            deterministic one-step decode, an x0-model's best PSNR); None: as every cell.
        baselines: classical codecs evaluated on the same images (default jpeg, webp).
        metrics: what every evaluation measures, as ``cdc eval --metrics`` (default ``report``; the
            VGG-based ones dominate a cold evaluation's time on a CPU).
        launcher, launcher_options: ``local`` | ``slurm`` | ``k8s`` and their keyword options.
        max_concurrent: global concurrency limit ``cdc-train-cells`` (simultaneous trainings).
        retries: extra attempts of a failing cell's training.
        overrides: config overrides for every run; cell_overrides: extra ones per ``"lambda/rho"``.
    """
    logger = get_run_logger()
    if launcher == "local" and "OMP_NUM_THREADS" not in os.environ:  # the other half: the training jobs
        torch.set_num_threads(cpu_share())
    out = Path(output_dir).resolve()
    manifest = ensure_shards(corpus, shards, out, split_val, patch_size, max_shorter)
    fingerprint = Manifest.load(manifest).fingerprint
    version = code_version()
    overrides = list(overrides or [])
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(CONCURRENCY_LIMIT, max_concurrent)
    setup_mlflow(experiment)
    train = run_training.with_options(retries=retries)

    warm_dir = None
    warm_key = ""
    bases = {}
    if base == FAMILY:
        from cdc.pretrained import nearest_member

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
        train(job, launcher, launcher_options or {})

    def planned(registered: set[str]):
        return plan_grid(lmbdas, rhos, preset=preset, prediction=prediction, cell_train_steps=cell_train_steps,
                         shards=manifest, shards_fingerprint=fingerprint, code_version=version, out=out,
                         experiment=experiment, overrides=overrides, cell_overrides=cell_overrides,
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

    settings = {"dataset": eval_dataset, "root": eval_root or (manifest if eval_dataset == "shards" else None),
                "protocol": eval_protocol, "limit": eval_limit, "save_recon": 1, "metrics": parse_metrics(metrics)}
    eval_dir = out / "eval"
    futures = {}
    for planned in plan.todo:
        trained = train.submit(planned.job, launcher, launcher_options or {})
        steps, gamma = (distortion_decode if distortion_decode and planned.cell.rho == 0 else (decode_steps, None))
        evaluated = evaluate_model.submit(trained, f"CDC {planned.cell.label}", settings, str(eval_dir), steps, gamma)
        futures[planned.cell] = (planned.output_dir, trained, evaluated)
    baseline_files = evaluate_baselines.submit(["jpeg", "webp"] if baselines is None else baselines, settings,
                                               str(eval_dir))

    results, failures, attempts = [], {}, {}
    for cell, (cell_dir, trained, evaluated) in futures.items():
        attempts[cell.label] = _attempts(trained)
        try:
            trained.result()
            path, metrics = evaluated.result()
            results.append(CellResult(cell, str(cell_dir), {eval_dataset: metrics}, path))
        except Exception as exc:  # a failed cell is reported, never fatal
            lines = [line for line in str(exc).splitlines() if line.strip()] or [exc.__class__.__name__]
            failures[cell.label] = lines[0] if len(lines) == 1 else f"{lines[0]}: {lines[-1]}"
            logger.error(f"{cell.label}: failed after {attempts[cell.label]} attempt(s): {failures[cell.label]}")
    registered = register_grid([r.trained_model() for r in results], eval_dataset, experiment, settings)
    summary = summarize(plan.cells, plan.skipped, registered, failures, eval_dataset, baseline_files.result(), out)
    summary["attempts"] = attempts
    create_markdown_artifact(summary["markdown"], key="train-grid-summary", description=f"Grid in {out}")
    print(summary["markdown"])
    return summary


def _start(model: str) -> tuple[str, Path]:
    """A cell's starting model as (identity: fingerprint prefix, checkpoint path)."""
    from cdc.checkpoint import read_checkpoint_info
    from cdc.resolve import resolve_model

    path = resolve_model(model)
    return read_checkpoint_info(path)["fingerprint"][:16], path


def _attempts(future) -> int:
    """How many times the task behind ``future`` ran (1 + retries used)."""
    future.wait()
    with get_client(sync_client=True) as client:
        return client.read_task_run(future.task_run_id).run_count
