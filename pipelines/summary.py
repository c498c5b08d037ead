"""Registering a grid's cells in MLflow and summarising the grid (markdown table + RD plots)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from pipelines.cells import Cell, CellResult

SHOWN = ("bpp", "psnr-rgb", "ms-ssim-rgb", "stlpips-vgg", "lpips-vgg", "fd-stlpips-vgg", "fid")


def register_cells(results: list[CellResult], dataset: str, experiment: str, settings: dict) -> dict[str, dict]:
    """One MLflow child run per cell under a parent run; each trained cell becomes a model version.

    Returns ``{cell key: {"name", "version"}}`` and leaves the parent run id in the mapping under
    ``"__parent__"``.
    """
    import mlflow

    from cdc.registry import register
    from cdc.tracking import setup_mlflow

    setup_mlflow(experiment)
    out: dict[str, dict] = {}
    with mlflow.start_run(run_name="train-grid", tags={"cdc.role": "grid"}) as parent:
        mlflow.log_params({f"eval.{k}": v for k, v in settings.items()})
        out["__parent__"] = {"run_id": parent.info.run_id}
        for r in results:
            with mlflow.start_run(run_name=r.cell.label, nested=True, tags={"cdc.cell_key": r.cell.key}):
                mlflow.log_params({k: v for k, v in asdict(r.cell).items() if k != "overrides"})
                mlflow.log_metrics({f"{ds}.{k}": v for ds, m in r.metrics.items() for k, v in m.items()})
                mlflow.log_artifact(r.results_file, "eval")
                steps = json.loads(Path(r.results_file).read_text())["meta"]["steps"]
                version = register(r.model_dir, r.metrics, dataset, r.cell.key, steps)
                out[r.cell.key] = {"name": version.name, "version": version.version}
    return out


def _family_curves(names: set[str], dataset: str, out_dir: Path) -> list[Path]:
    """A CompressAI-schema curve per registered family, from its versions' tags (all lambdas so far)."""
    from cdc.registry import list_versions

    paths = []
    for name in sorted(names):
        versions = sorted((v for v in list_versions(name) if v.name == name and v.metric(dataset, "bpp") is not None),
                          key=lambda v: v.metric(dataset, "bpp"))
        metrics = [m for m in SHOWN if all(v.metric(dataset, m) is not None for v in versions)]
        results = {m: [v.metric(dataset, m) for v in versions] for m in metrics}
        path = out_dir / f"grid-{name}.json"
        path.write_text(json.dumps({"name": name, "description": "registered CDC family", "meta": {
            "dataset": dataset, "versions": [v.version for v in versions]}, "results": results}, indent=2))
        paths.append(path)
    return paths


def rate_spread_warning(points: list[tuple[float, float | None]], tolerance: float = 0.01) -> str | None:
    """A warning when cells of different lambda code at the same rate (within ``tolerance``, relative).

    ``points`` are (lambda, bpp or None) per cell. Equal rates mean the models are under-trained: the
    decoder does not use the latent yet, so every lambda drives the rate to the same floor, and neither
    the table nor the q-aliases (ordered by rate) mean anything."""
    bpps = [bpp for _, bpp in points if bpp is not None]
    if len({lmbda for lmbda, _ in points}) < 2 or len(bpps) < 2 or max(bpps) > min(bpps) * (1 + tolerance):
        return None
    return (f"WARNING: every cell codes at the same rate ({min(bpps):.4f} bpp): the models are under-trained "
            "(the decoder does not use the latent yet); train longer before comparing them or using the q aliases.")


def summarize(cells: list[Cell], skipped: list[Cell], registered: dict[str, dict], failures: dict[str, str],
              dataset: str, baseline_files: list[str], out_dir: Path) -> dict:
    """Markdown table of every cell, RD plots of the families and baselines, logged to the parent run."""
    import mlflow

    from cdc.rd import plot
    from cdc.registry import family_name, list_versions

    versions = {v.tags.get("cell_key"): v for v in list_versions()}
    shown = [m for m in SHOWN if any(v.metric(dataset, m) is not None for v in versions.values())]
    header = ["cell", "lambda", "rho", "status", *[f"{dataset} {m}" for m in shown], "model", "aliases"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = []
    for cell in cells:
        v = versions.get(cell.key)
        status = ("failed: " + failures[cell.label]) if cell.label in failures else \
            "skipped (registered)" if cell in skipped else "registered" if v else "not registered"
        values = [f"{v.metric(dataset, m):.4f}" if v and v.metric(dataset, m) is not None else "" for m in shown]
        model = f"models:/{v.name}/{v.version}" if v else ""
        lines.append("| " + " | ".join([cell.label, f"{cell.lmbda:g}", f"{cell.rho:g}", status, *values, model,
                                        ",".join(v.aliases) if v else ""]) + " |")
        rows.append({"cell": cell.label, "key": cell.key, "status": status, "model": model,
                     "aliases": list(v.aliases) if v else []})
    eval_dir = out_dir / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    families = {family_name(c.prediction, c.rho) for c in cells}
    curves = [str(p) for p in _family_curves(families, dataset, eval_dir)] + list(baseline_files)
    plots = [str(p) for p in plot(curves, out_dir / "plots")]
    rates = [(c.lmbda, versions[c.key].metric(dataset, "bpp")) for c in cells if c.key in versions]
    warning = rate_spread_warning(rates)
    markdown = "\n".join([f"## CDC grid: {len(cells)} cells on `{dataset}`", "", *lines, "",
                          f"Failures: {len(failures)}. RD plots: " + ", ".join(f"`{p}`" for p in plots),
                          *([f"\n**{warning}**"] if warning else [])])
    (out_dir / "summary.md").write_text(markdown + "\n")
    parent = registered.get("__parent__", {}).get("run_id")
    if parent:
        client = mlflow.MlflowClient()
        client.log_text(parent, markdown, "summary.md")
        for p in plots:
            client.log_artifact(parent, p, "plots")
    return {"markdown": markdown, "cells": rows, "failures": failures, "plots": plots, "curves": curves,
            "parent_run_id": parent, "warning": warning}
