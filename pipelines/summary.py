"""Summarising a grid: markdown table, checks and RD plots of its registered families."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np

from pipelines.cells import Cell

SHOWN = ("bpp", "psnr-rgb", "ms-ssim-rgb", "stlpips-vgg", "lpips-vgg", "fd-stlpips-vgg", "fid")


def _family_curves(names: set[str], dataset: str, out_dir: Path) -> list[Path]:
    """A CompressAI-schema curve per registered family, from its versions' tags (all lambdas so far)."""
    from cdc.evaluation.rd import curve
    from cdc.registry.catalog import list_versions

    paths = []
    for name in sorted(names):
        versions = [v for v in list_versions(name) if v.name == name and v.metric(dataset, "bpp") is not None]
        points = [{m: v.metric(dataset, m) for m in SHOWN if v.metric(dataset, m) is not None} for v in versions]
        if not points:  # every cell of this family failed: no curve (the failures say why)
            continue
        data = curve(name, "registered CDC family", points, {"dataset": dataset},
                     [{"version": v.version} for v in versions])
        path = out_dir / f"grid-{name}.json"
        path.write_text(json.dumps(data, indent=2))
        paths.append(path)
    return paths


def rate_spread_warning(points: list[tuple[float, float, float | None]], tolerance: float = 0.01) -> str | None:
    """A warning when, within one rho, a larger lambda does not code at fewer bits.

    ``points`` are (lambda, rho, bpp or None) per cell; rates within ``tolerance`` (relative) count
    as equal. Unordered or equal rates mean the models are under-trained (e.g. the decoder does not
    use the latent yet, so every lambda drives the rate to the same floor), and neither the table
    nor the q-aliases (ordered by rate) mean anything."""
    problems = []
    for rho in sorted({r for _, r, _ in points}):
        family = sorted((lmbda, bpp) for lmbda, r, bpp in points if r == rho and bpp is not None)
        for (l1, b1), (l2, b2) in itertools.pairwise(family):
            if l2 > l1 and not b2 * (1 + tolerance) < b1:
                problems.append(f"rho {rho:g}: lambda {l1:g} -> {b1:.4f} bpp, lambda {l2:g} -> {b2:.4f} bpp")
    if not problems:
        return None
    return ("WARNING: lambda does not order the rate (" + "; ".join(problems) + "): the models are under-trained "
            "(the decoder does not use the latent yet); train longer before comparing them or using the q aliases.")


def _at_rate(curve: dict, bpp: float, metric: str) -> float | None:
    """``metric`` of a CompressAI-schema curve at ``bpp`` (linear in log-rate; None outside its range)."""
    pts = sorted(zip(curve["bpp"], curve.get(metric, []), strict=False))
    if len(pts) < 2 or not pts[0][0] <= bpp <= pts[-1][0]:
        return None
    return float(np.interp(math.log(bpp), [math.log(b) for b, _ in pts], [v for _, v in pts]))


def grid_checks(points: list[dict], baselines: dict[str, dict]) -> list[tuple[str, bool | None, str]]:
    """What a trained grid should show: (claim, holds (None: not testable), detail) rows.

    ``points``: one dict per evaluated cell with ``lmbda``, ``rho``, ``bpp``, ``psnr-rgb`` and
    ``stlpips-vgg``; ``baselines``: name -> CompressAI-schema ``results`` of a classical codec.
    """
    rows: list[tuple[str, bool | None, str]] = []
    warning = rate_spread_warning([(p["lmbda"], p["rho"], p["bpp"]) for p in points])
    rows.append(("lambda orders the rate within each rho", warning is None if points else None, warning or ""))
    pairs = [(a, b) for a in points for b in points if a["lmbda"] == b["lmbda"] and a["rho"] < b["rho"]]
    if pairs:
        better = [b["stlpips-vgg"] < a["stlpips-vgg"] for a, b in pairs]
        rows.append(("at equal lambda, the larger rho has the lower ST-LPIPS-VGG", all(better),
                     ", ".join(f"lambda {a['lmbda']:g}: rho {a['rho']:g} {a['stlpips-vgg']:.4f} vs rho {b['rho']:g} "
                               f"{b['stlpips-vgg']:.4f}" for a, b in pairs)))
    for name, curve in baselines.items():
        wins = []
        for p in points:
            psnr, lpips = _at_rate(curve, p["bpp"], "psnr-rgb"), _at_rate(curve, p["bpp"], "stlpips-vgg")
            if psnr is not None and p["psnr-rgb"] > psnr:
                wins.append(f"lambda {p['lmbda']:g} rho {p['rho']:g}: PSNR {p['psnr-rgb']:.2f} vs {psnr:.2f} dB")
            if lpips is not None and p["stlpips-vgg"] < lpips:
                wins.append(f"lambda {p['lmbda']:g} rho {p['rho']:g}: ST-LPIPS {p['stlpips-vgg']:.4f} vs {lpips:.4f}")
        comparable = any(_at_rate(curve, p["bpp"], "psnr-rgb") is not None for p in points)
        rows.append((f"a CDC point beats {name} at equal bpp (PSNR or ST-LPIPS-VGG)",
                     bool(wins) if comparable else None, "; ".join(wins) or "no CDC point inside its rate range"
                     if not comparable else "; ".join(wins) or "none"))
    return rows


def summarize(cells: list[Cell], skipped: list[Cell], registered: dict[str, dict], failures: dict[str, str],
              dataset: str, baseline_files: list[str], out_dir: Path) -> dict:
    """Markdown table of every cell, RD plots of the families and baselines, logged to the parent run."""
    import mlflow

    from cdc.evaluation.rd import plot
    from cdc.registry.catalog import family_name, list_versions

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
    points = [{"lmbda": c.lmbda, "rho": c.rho, **{m: versions[c.key].metric(dataset, m)
                                                   for m in ("bpp", "psnr-rgb", "stlpips-vgg")}}
              for c in cells if c.key in versions]
    points = [p for p in points if None not in p.values()]
    warning = rate_spread_warning([(p["lmbda"], p["rho"], p["bpp"]) for p in points])
    baselines = {d["name"]: d["results"] for d in (json.loads(Path(f).read_text()) for f in baseline_files)}
    checks = grid_checks(points, baselines)
    check_lines = [f"- [{'x' if ok else ' '}] {claim}" + (" (not testable)" if ok is None else "")
                   + (f": {detail}" if detail else "") for claim, ok, detail in checks]
    markdown = "\n".join([f"## CDC grid: {len(cells)} cells on `{dataset}`", "", *lines, "",
                          f"Failures: {len(failures)}. RD plots: " + ", ".join(f"`{p}`" for p in plots),
                          "", "Checks:", *check_lines, *([f"\n**{warning}**"] if warning else [])])
    (out_dir / "summary.md").write_text(markdown + "\n")
    (out_dir / "summary.json").write_text(json.dumps(
        {"dataset": dataset, "table": "\n".join(lines), "checks": "\n".join(check_lines), "warning": warning,
         "cells": rows, "plots": plots}, indent=1) + "\n")
    parent = registered.get("__parent__", {}).get("run_id")
    if parent:
        client = mlflow.MlflowClient()
        client.log_text(parent, markdown, "summary.md")
        for p in plots:
            client.log_artifact(parent, p, "plots")
    return {"markdown": markdown, "cells": rows, "failures": failures, "plots": plots, "curves": curves,
            "parent_run_id": parent, "warning": warning, "checks": checks}
