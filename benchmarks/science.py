"""The paper's claims, measured on the code we ship: one reproducible, resumable study.

Every CDC model is a ``cdc/train.py`` run launched by the ``train-grid`` flow (registered in the
study's MLflow registry like any grid) and fine-tuned from the shipped family (each cell from the
member nearest its λ, ``base="family"``) on the photo corpus (``python -m shards.photocorpus``); every
number comes from real bitstreams of the corpus's held-out photos.

1. **Few-step decoding, X vs ε** (the paper's central claim): an x0- and an ε-parameterized model,
   same budget, same base; PSNR / MS-SSIM / ST-LPIPS at ``sweep_steps`` DDIM steps, γ ∈ {0, 0.8}.
2. **The ρ trade-off**: ρ ∈ ``rhos`` at every λ: PSNR falls, ST-LPIPS and fd-stlpips-vgg improve.
3. **λ orders the rate**: bpp strictly monotone in λ per ρ; RD curves against JPEG, WebP, AVIF, JPEG
   XL and CompressAI's ``MeanScaleHyperprior`` trained here; BD-rate of each against AVIF.
4. **Warm-up ablation**: the same fine-tune budget from scratch instead of from the base.
5. **Entropy models**: hyperprior vs the Entroformer-style model on the frozen transform of the
   member nearest ``sweep_lmbda`` (``benchmarks/entropy.py`` on the same corpus, same steps for both).
6. **Seeds**: the cells of ``seed_cells`` are trained again with ``train.seed=1``; a claim counts as
   reproduced only where its effect exceeds that seed-to-seed spread.

    python benchmarks/science.py            # the study, ≈ 2 h on 2 CPU cores
    python benchmarks/science.py --quick    # the whole script with tiny settings, ≈ 5 min (CI)
    python benchmarks/science.py --preset paper --base PAPER_BASE --shards s3://…/manifest.json \\
        --launcher slurm --launcher-option partition=gpu --cell-train-steps 100000   # at paper scale (not run here)

Resumable: each section's trained cells are skipped by their registry keys, every evaluation by its
results file (``--work``, default ``runs/science``). Writes ``benchmarks/results/science/``
(``science.json``, ``science.md``, RD and step-sweep plots); ``--quick`` writes ``…/science-quick/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from common import RESULTS
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
PHOTO_SHARDS = REPO / "runs" / "photos" / "shards"


@dataclass(frozen=True)
class Study:
    """Everything the study trains and measures (the defaults are the 2-core study)."""

    preset: str = "small"
    base: str = "family"  # each cell from the shipped member nearest its λ (or a model path / name)
    shards: str = str(PHOTO_SHARDS)
    lmbdas: tuple[float, ...] = (0.005, 0.01, 0.045, 0.09)  # the ρ = 0 members' λ (q4, q3, q1, q0)
    rhos: tuple[float, ...] = (0.0, 0.9)
    cell_train_steps: int = 200  # fine-tune steps per cell
    eval_limit: int = 6  # held-out images per evaluation (0: all)
    decode_steps: int = 9  # DDIM steps of the grid evaluation (γ: each model's default, 0.8)
    sweep_lmbda: float = 0.01  # the X vs ε pair and the warm-up ablation train at (λ, ρ = 0)
    sweep_steps: tuple[int, ...] = (1, 2, 4, 8, 17, 65)
    sweep_gammas: tuple[float, ...] = (0.0, 0.8)
    sweep_limit: int = 2
    seed_cells: tuple[tuple[float, float], ...] = ((0.01, 0.0), (0.01, 0.9))
    baselines: tuple[str, ...] = ("jpeg", "webp", "avif", "jxl")
    anchor_steps: int = 1000  # MeanScaleHyperprior steps per λ
    anchor_lmbdas: tuple[float, ...] | None = None  # the λ the anchor trains at (None: every grid λ)
    entropy_steps: int = 1000
    # s = 1 is a trained member's own quantization step; 2…16 (entropy.py's default, for its warm-up
    # transform) put a member's latents at 0.7 to 1.4 bpp, far above the family's rates
    entropy_scales: str = "0.5,1,2,4"
    launcher: str = "local"
    launcher_options: dict = field(default_factory=dict)
    overrides: tuple[str, ...] = ("train.num_workers=1", "train.sample_every=0")


QUICK = Study(lmbdas=(0.01, 0.2), rhos=(0.0, 0.9), cell_train_steps=4, eval_limit=1, decode_steps=2,
              sweep_steps=(1, 2), sweep_limit=1, seed_cells=((0.01, 0.0),), baselines=("jpeg", "avif"),
              anchor_steps=5, entropy_steps=5, entropy_scales="4,8")


# ------------------------------------------------------------------------------ training (train-grid)
class PrefectServer:
    """One Prefect server for every ``train-grid`` run of the study, started when the first needs it
    (a resumed study that trains nothing starts none) and stopped with ``stack``."""

    def __init__(self, work: Path, stack: contextlib.ExitStack) -> None:
        self.work, self.stack, self._url = work, stack, ""

    def url(self) -> str:
        """The server's API URL (``PREFECT_API_URL``), starting the server on the first call."""
        if not self._url:
            from pipelines.local_server import temporary_server

            self._url = self.stack.enter_context(temporary_server(self.work / "prefect",
                                                                  self.work / "prefect-server.log"))
        return self._url


def run_grid(study: Study, work: Path, server: PrefectServer, section: str, **params) -> dict:
    """One ``train-grid`` flow run in its own process and MLflow registry (``work/<section>/.cdc``),
    so that seed and scratch models never join the study's model families."""
    out = work / section
    done = out / "grid.json"
    if done.is_file():
        return json.loads(done.read_text())
    spec = {"lmbdas": list(study.lmbdas), "rhos": list(study.rhos), "preset": study.preset,
            "cell_train_steps": study.cell_train_steps,
            "base": study.base, "shards": study.shards, "eval_dataset": "shards", "eval_limit": study.eval_limit,
            "decode_steps": study.decode_steps, "baselines": [], "launcher": study.launcher,
            "launcher_options": study.launcher_options, "output_dir": str(out),
            "experiment": f"cdc-science-{section}", "overrides": list(study.overrides), **params}
    env = {**os.environ, "CDC_HOME": str(work / "registry" / section), "PREFECT_API_URL": server.url(),
           "PREFECT_HOME": str(work / "prefect")}
    env.pop("MLFLOW_TRACKING_URI", None)
    code = ("import json, sys; from pipelines.grid_params import grouped; from pipelines.train_grid import train_grid; "
            "s = train_grid(**grouped(**json.loads(sys.argv[1]))); "
            "open(sys.argv[2], 'w').write(json.dumps({k: s[k] for k in ('curves', 'failures', 'cells')}))")
    summary = out / "grid-summary.tmp.json"
    summary.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec), str(summary)], cwd=REPO, env=env,
                          text=True, capture_output=True)
    if proc.returncode or not summary.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise RuntimeError(f"train-grid {section} failed (exit {proc.returncode}):\n{tail}")
    result = {**json.loads(summary.read_text()), "spec": spec}
    summary.unlink()
    if result["failures"]:
        raise RuntimeError(f"train-grid {section}: failed cells {result['failures']}")
    done.write_text(json.dumps(result, indent=1))
    return result


def cell_results(section_dir: Path) -> list[dict]:
    """Every evaluated cell of a section: its λ, ρ, model dir and averaged metrics."""
    rows = []
    for path in sorted((section_dir / "eval").glob("CDC_lmbda*.json")):
        if path.name.endswith("per-image.json"):
            continue
        data = json.loads(path.read_text())
        lmbda, rho = (float(v) for v in path.stem.removeprefix("CDC_lmbda").split("-rho"))
        rows.append({"lmbda": lmbda, "rho": rho, "model": data["meta"]["model"],
                     **{k: v[0] for k, v in data["results"].items()}})
    return rows


# ------------------------------------------------------------------------------ evaluation
def eval_settings(study: Study, limit: int, **kw):
    from cdc.evaluation.evaluate import EvalSettings
    from cdc.evaluation.metrics import REPORT_METRICS

    return EvalSettings(dataset="shards", root=study.shards, limit=limit, metrics=REPORT_METRICS, save_recon=1, **kw)


def step_sweep(study: Study, work: Path, models: dict[str, str]) -> dict[str, list[dict]]:
    """Each model at every (steps, γ) of the sweep on ``sweep_limit`` held-out images."""
    from cdc.coding.coder import Coder
    from cdc.evaluation.evaluate import Curve, cdc_points, run_curves
    from cdc.evaluation.metrics import MetricSuite
    from cdc.zoo.checkpoint import load_codec

    out: dict[str, list[dict]] = {}
    for name, model in models.items():
        folder = work / "sweep" / name
        done = folder / "sweep.json"
        if not done.is_file():
            coder = Coder(load_codec(model))
            rows = []
            for gamma in study.sweep_gammas:
                settings = eval_settings(study, study.sweep_limit, gamma=gamma, seed=0)
                curves = [Curve(f"{name} {steps} steps gamma {gamma:g}", "step sweep",
                                cdc_points([coder], steps, settings), {"steps": steps})
                          for steps in study.sweep_steps]
                suite = MetricSuite(metrics=settings.metrics)
                for steps, path in zip(study.sweep_steps, run_curves(curves, settings, suite, folder), strict=True):
                    results = json.loads(path.read_text())["results"]
                    rows.append({"steps": steps, "gamma": gamma, **{k: v[0] for k, v in results.items()}})
            done.write_text(json.dumps(rows, indent=1))
        out[name] = json.loads(done.read_text())
    return out


def baseline_curves(study: Study, work: Path) -> list[Path]:
    """The classical codecs on the grid's evaluation images (CompressAI-schema files)."""
    from cdc.evaluation.baselines import build_baseline
    from cdc.evaluation.evaluate import evaluate_all
    from cdc.evaluation.rd import slug

    folder = work / "baselines"
    chosen = [build_baseline(n) for n in study.baselines]
    missing = [b for b in chosen if not (folder / f"{slug(b.name)}.json").is_file()]
    if missing:
        evaluate_all([], missing, eval_settings(study, study.eval_limit), folder)
    return [folder / f"{slug(b.name)}.json" for b in chosen]


def anchor_curve(study: Study, work: Path) -> Path:
    """CompressAI's MeanScaleHyperprior, trained here at every λ of ``anchor_lmbdas`` (default: the
    grid's; ``anchor_steps`` each), through the harness with CompressAI's own compress/decompress
    (real rANS bytes)."""
    from recipes import train_anchor

    from cdc.evaluation.evaluate import Curve, Point, run_curves
    from cdc.evaluation.metrics import MetricSuite

    path = work / "anchor" / "MeanScaleHyperprior.json"
    lmbdas = study.lmbdas if study.anchor_lmbdas is None else study.anchor_lmbdas
    # resume only a curve over the same λ (each λ's trained weights are kept and reused either way)
    if path.is_file() and sorted(p["lmbda"] for p in json.loads(path.read_text())["meta"]["points"]) == sorted(lmbdas):
        return path
    points = []
    for lmbda in lmbdas:
        folder = work / "anchor" / f"lmbda{lmbda:g}"
        train_anchor(folder, study.shards, study.preset, lmbda, study.anchor_steps)
        points.append(Point(f"lmbda{lmbda:g}", *_anchor_codec(folder / "anchor.pt"), meta={"lmbda": lmbda}))
    settings = eval_settings(study, study.eval_limit)
    curve = Curve("MeanScaleHyperprior", f"CompressAI MeanScaleHyperprior(128, 192), {study.anchor_steps} steps "
                  "per λ on the study's corpus (trained by this study)", points)
    return run_curves([curve], settings, MetricSuite(metrics=settings.metrics), work / "anchor")[0]


def _anchor_codec(weights: Path):
    """(encode, decode) of a trained MeanScaleHyperprior over H x W x 3 uint8 images."""
    import numpy as np
    import torch
    from compressai.models import MeanScaleHyperprior

    from cdc.images import from_uint8
    from cdc.models.layers import pad_to_multiple

    net = MeanScaleHyperprior(128, 192)
    net.load_state_dict(torch.load(weights, weights_only=True))
    net.eval()
    header = struct.Struct(">HHHHI")  # image h, w; hyper-latent shape; y string length (counted in the bpp)

    def encode(img: np.ndarray) -> bytes:
        x = from_uint8(img)
        with torch.no_grad():
            enc = net.compress(pad_to_multiple(x, 64))
        y, z = enc["strings"][0][0], enc["strings"][1][0]
        return header.pack(*img.shape[:2], *enc["shape"], len(y)) + y + z

    def decode(data: bytes) -> np.ndarray:
        h, w, zh, zw, n = header.unpack_from(data)
        y, z = data[header.size : header.size + n], data[header.size + n :]
        with torch.no_grad():
            x = net.decompress([[y], [z]], (zh, zw))["x_hat"][..., :h, :w]
        return (x.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)

    return encode, decode


def entropy_study(study: Study, work: Path) -> dict:
    """``benchmarks/entropy.py`` on the study's corpus and the frozen transform of its base (with
    ``base="family"``: the member nearest ``sweep_lmbda``); its JSON is kept in the work folder."""
    from cdc.zoo.pretrained import FAMILY, nearest_member

    done = work / "entropy.json"
    base = nearest_member(study.sweep_lmbda) if study.base == FAMILY else study.base
    asked = {"base": base, "shards": study.shards, "steps": study.entropy_steps, "scales": study.entropy_scales}
    kept = json.loads(done.read_text())["args"] if done.is_file() else {}
    if any(kept.get(k) != v for k, v in asked.items()):  # missing, or measured with other settings
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "entropy.py"), "--base", base, "--shards",
                        study.shards, "--steps", str(study.entropy_steps), "--scales", study.entropy_scales,
                        "--json", str(done)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return json.loads(done.read_text())


# ------------------------------------------------------------------------------ the study
def run(study: Study, work: Path, out: Path) -> dict:
    """Train, measure, judge; write JSON, Markdown and plots into ``out``."""
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        return _run(study, work, out, PrefectServer(work, stack))


def _run(study: Study, work: Path, out: Path, server: PrefectServer) -> dict:
    from claims import judge, write_report

    (work / "study.json").write_text(json.dumps(asdict(study), indent=1))
    lx = study.sweep_lmbda
    seed_lmbdas = sorted({lmbda for lmbda, _ in study.seed_cells})
    seed_rhos = sorted({rho for _, rho in study.seed_cells})
    stages = [
        ("grid: λ x ρ from the base", lambda: run_grid(study, work, server, "grid")),
        ("ε-parameterization", lambda: run_grid(study, work, server, "eps", lmbdas=[lx], rhos=[0.0],
                                                prediction="epsilon")),
        ("warm-up ablation: from scratch", lambda: run_grid(study, work, server, "scratch", lmbdas=[lx], rhos=[0.0],
                                                            base=None, warmup_train_steps=0)),
        ("seeds", lambda: run_grid(study, work, server, "seed1", lmbdas=seed_lmbdas, rhos=seed_rhos,
                                   overrides=[*study.overrides, "train.seed=1"])),
        ("baselines", lambda: baseline_curves(study, work)),
        ("MeanScaleHyperprior anchor", lambda: anchor_curve(study, work)),
        ("step sweep X vs ε", lambda: step_sweep(study, work, {
            "x": _model_at(work / "grid", lx, 0.0), "eps": _model_at(work / "eps", lx, 0.0)})),
        ("entropy models", lambda: entropy_study(study, work)),
    ]
    results: dict[str, object] = {}
    ledger = work / "seconds.json"  # a resumed run keeps the time each stage took when it ran
    seconds: dict[str, float] = json.loads(ledger.read_text()) if ledger.is_file() else {}
    for name, stage in (bar := tqdm(stages, desc="science", unit="stage")):
        bar.set_postfix_str(name)
        start = time.perf_counter()
        results[name] = stage()
        took = time.perf_counter() - start
        if took > 5 or name not in seconds:  # under 5 s: found done, keep when it ran
            seconds[name] = took
        ledger.write_text(json.dumps(seconds, indent=1))
        tqdm.write(f"[science] {name}: {took:.0f} s")
    data = {
        "study": asdict(study),
        "cells": {s: cell_results(work / s) for s in ("grid", "eps", "scratch", "seed1")},
        "baselines": [str(p) for p in results["baselines"]],
        "anchor": str(results["MeanScaleHyperprior anchor"]),
        "sweep": results["step sweep X vs ε"],
        "entropy": results["entropy models"],
        "seconds": seconds,
    }
    data["claims"] = judge(data)
    write_report(data, out)
    return data


def _model_at(section: Path, lmbda: float, rho: float) -> str:
    rows = [r for r in cell_results(section) if r["lmbda"] == lmbda and r["rho"] == rho]
    if not rows:
        raise RuntimeError(f"{section}: no evaluated cell at lambda {lmbda:g}, rho {rho:g}")
    return rows[0]["model"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: the script end to end in minutes")
    parser.add_argument("--work", type=Path, help="runs and evaluations (default runs/science[-quick])")
    parser.add_argument("--out", type=Path, help="report folder (default benchmarks/results/science[-quick])")
    parser.add_argument("--preset")
    parser.add_argument("--base")
    parser.add_argument("--shards")
    parser.add_argument("--cell-train-steps", type=int, help="fine-tune steps per cell")
    parser.add_argument("--anchor-lmbda", type=float, action="append", dest="anchor_lmbdas",
                        help="train the MeanScaleHyperprior anchor only at this λ (repeatable; default: every grid λ)")
    parser.add_argument("--launcher", choices=("local", "slurm", "k8s"))
    parser.add_argument("--launcher-option", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    study = QUICK if args.quick else Study()
    given = {"preset": args.preset, "base": args.base, "shards": args.shards,
             "cell_train_steps": args.cell_train_steps, "launcher": args.launcher,
             "anchor_lmbdas": tuple(args.anchor_lmbdas) if args.anchor_lmbdas else None}
    changes = {k: v for k, v in given.items() if v is not None}
    if args.launcher_option:
        changes["launcher_options"] = dict(o.split("=", 1) for o in args.launcher_option)
    study = replace(study, **changes)
    if study.shards == str(PHOTO_SHARDS) and not (PHOTO_SHARDS / "manifest.json").is_file():
        print(f"[science] building the photo corpus into {PHOTO_SHARDS} (python -m shards.photocorpus)", flush=True)
        subprocess.run([sys.executable, "-m", "shards.photocorpus", "-o", str(PHOTO_SHARDS.parent)], check=True,
                       cwd=REPO)
    suffix = "-quick" if args.quick else ""
    work = args.work or REPO / "runs" / f"science{suffix}"
    out = args.out or RESULTS / f"science{suffix}"
    data = run(study, work.resolve(), out)
    print((out / "science.md").read_text())
    failed = [c for c in data["claims"] if c["verdict"] == "error"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
