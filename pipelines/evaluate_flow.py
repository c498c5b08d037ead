"""Prefect flow ``evaluate``: CDC models (paths or ``models:/`` URIs) and baselines on a dataset.

    prefect deployment run evaluate/local --param models='["models:/cdc-x-rho0.9@q2"]' --param dataset=kodak
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact


@flow(name="evaluate", log_prints=True)
def evaluate(models: list[str] | None = None, baselines: list[str] | None = None, dataset: str = "kodak",
             root: str | None = None, download: bool = False, protocol: str = "full", steps: list[int] | None = None,
             limit: int = 0, device: str = "cpu", output_dir: str = "runs/eval", metrics: str = "report") -> list[str]:
    """Write CompressAI-schema results (and RD plots) for ``models`` and ``baselines``; returns the files.

    ``metrics``: as ``cdc eval --metrics`` (default ``report``: what the grid and the registry record).
    """
    from cdc.coding.coder import Coder
    from cdc.evaluation.baselines import build_baseline, zoo_baseline
    from cdc.evaluation.evaluate import EvalSettings, evaluate_all
    from cdc.evaluation.metrics import parse_metrics
    from cdc.evaluation.rd import plot
    from cdc.registry.resolve import resolve_model
    from cdc.zoo.checkpoint import load_codec

    logger = get_run_logger()
    settings = EvalSettings(dataset=dataset, root=root, download=download, protocol=protocol,
                            steps=tuple(steps or (17,)), limit=limit, device=device,
                            metrics=parse_metrics(metrics))
    coders = [Coder(load_codec(resolve_model(m), device)) for m in models or []]
    chosen = [zoo_baseline(b[4:]) if b.startswith("zoo:") else build_baseline(b) for b in baselines or []]
    files = evaluate_all(coders, chosen, settings, Path(output_dir), warn=logger.warning)
    plots = plot(files, Path(output_dir) / "plots")
    create_markdown_artifact("\n".join(f"- `{f}`" for f in [*files, *plots]), key="evaluate-results")
    return [str(f) for f in files]
