"""Fast-start training recipes, chosen by measurement: which recipe makes a CDC codec learn in minutes?

Every candidate trains for the same wall-clock budget on the same shards (the offline development
corpus, ``shards/devcorpus.py``) through the real ``cdc/train.py``, and is evaluated on the
held-out images (the corpus's ``val`` split, whole images) through real bitstreams: real bpp,
PSNR, MS-SSIM and ST-LPIPS, with the deterministic decoder (γ = 0) at 1 and 4 DDIM steps and the
preset's default steps with γ = 0.8. CompressAI's ``MeanScaleHyperprior`` (Minnen et al. 2018)
trains in the same run, with the same budget and data, as the distortion anchor.

Candidates (all at the same target λ, ρ = 0):

* ``a-paper-scratch``: the official recipe (ResBlock encoder, min-SNR-5 x0 loss) from scratch;
* ``a-paper-warmup``: the same, half the budget as a high-rate warm-up (λ = 1e-6), half at λ;
* ``b-floor-warmup``: the warm-up with the x0 loss weighted clamp(SNR, 1, 5), so that high-noise
  steps, where only the latent can help, are trained;
* ``c-autoencoder-first``: the HiFiC / MS-ILLM habit: g_a (GDN) and the entropy model pretrained
  as an MSE autoencoder with a light auxiliary synthesis g_s (noise proxy), then the diffusion
  decoder on the frozen latent, then joint (paper loss weighting);
* ``d-residual``: c, with the U-Net predicting a residual over g_s's reconstruction and the
  floored weighting: the one-step decode starts at the autoencoder's output.

The budget is wall-clock: each phase's seconds per step are measured first in this process (same
threads, same crops), and every run gets the number of steps that fills its share of the budget.
The winner is the candidate with the lowest held-out rate-distortion cost ``λ·bpp + MSE`` (pixels in
[-1, 1], the objective they all minimise) at γ = 0 and 1 step; it and the anchor are then trained
at more λ values for the rate-distortion comparison (PSNR gap at equal bpp, λ separation).

    python benchmarks/recipes.py                 # ≈ 3.5 h on 2 cores: budget 20 min per run, 10 runs
    python benchmarks/recipes.py --quick         # the script end to end in minutes (tiny settings)

Resumable: finished runs and evaluations are kept under ``--work`` and skipped on a rerun. A second
process started with ``--reverse`` shares the runs (a lock per run; use ``--threads 1`` for both).
Writes ``benchmarks/results/recipes.json`` (and ``recipes-rd.png``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, print_table, write_json

from cdc.coding.coder import Coder
from cdc.config import RECIPES, load_config
from cdc.evaluation.datasets import load_eval_image, shard_split_images
from cdc.evaluation.metrics import PER_IMAGE_METRICS, MetricSuite
from cdc.images import from_uint8, to_uint8
from cdc.models.codec import CDCCodec
from cdc.models.layers import pad_to_multiple
from cdc.training.losses import RateDistortionPerceptionLoss
from cdc.training.phases import build_optimizer
from cdc.zoo.checkpoint import load_codec
from shards.reader import resolve_shards, train_loader, unit_range

REPO = Path(__file__).resolve().parents[1]
PAPER = RECIPES["paper"]
FAST_ARCH = ("model.analysis=gdn", "model.aux_synthesis=true", "loss.aux_mse=1")
WARMUP_LMBDA = 1e-6
# wall-clock shares of the autoencoder-first recipes: autoencoder, frozen-latent decoder, joint
PHASE_SHARES = (0.25, 0.10, 0.65)


@dataclass(frozen=True)
class Stage:
    """One ``cdc/train.py`` run of a candidate: its share of the budget, λ (None: the target) and overrides."""

    share: float
    overrides: tuple[str, ...]
    lmbda: float | None = None


@dataclass(frozen=True)
class Candidate:
    name: str
    description: str
    stages: tuple[Stage, ...]
    phased: bool = False  # the autoencoder-first phases (step counts from PHASE_SHARES)


CANDIDATES = (
    Candidate("a-paper-scratch", "official recipe from scratch", (Stage(1.0, PAPER),)),
    Candidate("a-paper-warmup", "official recipe, high-rate warm-up then λ",
              (Stage(0.5, PAPER, WARMUP_LMBDA), Stage(0.5, PAPER))),
    Candidate("b-floor-warmup", "warm-up with x0 weight clamp(SNR, 1, 5), then λ",
              (Stage(0.5, (*PAPER, "diffusion.snr_floor=1"), WARMUP_LMBDA),
               Stage(0.5, (*PAPER, "diffusion.snr_floor=1")))),
    Candidate("c-autoencoder-first", "GDN autoencoder first, then diffusion on the frozen latent, then joint",
              (Stage(1.0, (*FAST_ARCH, "diffusion.residual=false", "diffusion.snr_floor=0")),), phased=True),
    Candidate("d-residual", "c + U-Net residual over the autoencoder's output + floored weighting",
              (Stage(1.0, (*FAST_ARCH, "diffusion.residual=true", "diffusion.snr_floor=1")),), phased=True),
)
ANCHOR = "hyperprior"


# --------------------------------------------------------------------------------------- timing
def _batches(shards: str, batch: int, crop: int, seed: int = 0, device: str = "cpu"):
    loader = train_loader(resolve_shards([shards], "train"), batch, crop, seed=seed, num_workers=0,
                          shuffle_buffer=200, epoch_batches=10_000)
    return (unit_range(x.to(device)) for x in loader)


def _seconds_per_step(step, batches, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        step(next(batches))
    _sync()
    start = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    _sync()
    return (time.perf_counter() - start) / steps


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


STEP_KINDS = {"paper": (PAPER, "joint"),
              "fast-autoencoder": ((*FAST_ARCH, "diffusion.residual=true"), "autoencoder"),
              "fast-joint": ((*FAST_ARCH, "diffusion.residual=true"), "joint")}


def calibrate(preset: str, shards: str, steps: int, kinds: tuple[str, ...] = (*STEP_KINDS, ANCHOR),
              device: str = "cpu", extra: tuple[str, ...] = ()) -> dict[str, float]:
    """Seconds per optimizer step of every kind of step the candidates run (same process, same data;
    on CUDA with bf16 autocast, as ``cdc/train.py`` runs there)."""
    out = {}
    for key in (k for k in kinds if k in STEP_KINDS):
        overrides, phase = STEP_KINDS[key]
        cfg = load_config(preset, (*overrides, *extra))
        codec = CDCCodec(cfg).to(device).train()
        loss_fn = RateDistortionPerceptionLoss(cfg.loss, codec.diffusion)
        optimizer, _ = build_optimizer(codec, cfg.train)
        batches = _batches(shards, cfg.train.batch_size, cfg.train.crop, device=device)

        def step(x, codec=codec, loss_fn=loss_fn, optimizer=optimizer, phase=phase, crop=cfg.train.crop):
            with torch.autocast("cuda", torch.bfloat16, enabled=x.is_cuda):
                out = codec(x, phase=phase)
            (loss_fn(out, crop * crop)["loss"] + out["aux_loss"]).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        out[key] = _seconds_per_step(step, batches, steps)
    if ANCHOR not in kinds:
        return out
    cfg = load_config(preset)
    anchor = AnchorTrainer(0.01)
    out[ANCHOR] = _seconds_per_step(anchor.step, _batches(shards, cfg.train.batch_size, cfg.train.crop), steps)
    return out


# ------------------------------------------------------------------------------ the anchor
class AnchorTrainer:
    """CompressAI's ``MeanScaleHyperprior`` trained as in its examples/train.py (Adam 1e-4, aux
    optimizer 1e-3 on the quantiles, clip 1.0), on the CDC loss's λ mapped to CompressAI's: our
    ``λ·bpp + 4·MSE[0,1]`` (pixels in [-1, 1]) equals ``λ·(bpp + λ_c·255²·MSE)`` with
    ``λ_c = 4 / (λ·255²)``."""

    def __init__(self, lmbda: float, lr: float = 1e-4) -> None:
        from compressai.models import MeanScaleHyperprior

        torch.manual_seed(0)
        self.net = MeanScaleHyperprior(128, 192).train()
        self.lmbda_c = 4 / (lmbda * 255**2)
        params = [p for n, p in self.net.named_parameters() if not n.endswith("quantiles")]
        quantiles = [p for n, p in self.net.named_parameters() if n.endswith("quantiles")]
        self.params = params
        self.optimizer = torch.optim.Adam(params, lr=lr)
        self.aux_optimizer = torch.optim.Adam(quantiles, lr=1e-3)

    def step(self, x: torch.Tensor) -> None:
        out = self.net(x)
        bpp = sum(-torch.log2(lk).sum() for lk in out["likelihoods"].values()) / (x.shape[0] * x.shape[2] * x.shape[3])
        loss = self.lmbda_c * 255**2 * (out["x_hat"] - x).square().mean() + bpp
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.aux_optimizer.zero_grad(set_to_none=True)
        self.net.aux_loss().backward()
        self.aux_optimizer.step()


def train_anchor(out: Path, shards: str, preset: str, lmbda: float, steps: int) -> dict:
    """Train the anchor for ``steps`` steps; saves its state dict (updated CDFs) into ``out``."""
    done = out / "anchor.pt"
    if done.is_file():
        return json.loads((out / "train_summary.json").read_text())
    cfg = load_config(preset)
    trainer = AnchorTrainer(lmbda)
    batches = _batches(shards, cfg.train.batch_size, cfg.train.crop)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step(next(batches))
    trainer.net.update(force=True)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"steps": steps, "seconds": time.perf_counter() - start}
    torch.save(trainer.net.state_dict(), out / "anchor.tmp")
    (out / "train_summary.json").write_text(json.dumps(summary))
    os.replace(out / "anchor.tmp", done)
    return summary


# ------------------------------------------------------------------------------ training runs
def run_candidate(candidate: Candidate, work: Path, preset: str, shards: str, lmbda: float, budget_s: float,
                  timing: dict[str, float], workers: int = 0, extra: tuple[str, ...] = (),
                  shares: tuple[float, float, float] = PHASE_SHARES) -> dict:
    """Train every stage of ``candidate`` through ``cdc/train.py``; returns {model, steps, seconds}.
    ``shares``: wall-clock shares of a phased candidate's autoencoder, frozen-latent and joint phases."""
    previous, steps_total, seconds = None, 0, 0.0
    for index, stage in enumerate(candidate.stages):
        out = work / f"{candidate.name}-lmbda{lmbda:g}" / f"stage{index}"
        share = stage.share * budget_s
        phases: list[str] = []
        if candidate.phased:
            ae, frozen, joint = (s * share for s in shares)
            n_ae, n_frozen = round(ae / timing["fast-autoencoder"]), round(frozen / timing["fast-joint"])
            steps = n_ae + n_frozen + round(joint / timing["fast-joint"])
            phases = [f"train.autoencoder_fraction={n_ae / steps:.6f}",
                     f"train.freeze_latent_fraction={n_frozen / steps:.6f}"]
        else:
            steps = round(share / timing["paper"])
        summary_file = out / "train_summary.json"
        if not summary_file.is_file():
            cmd = [sys.executable, str(REPO / "cdc" / "train.py"), "--preset", preset, "--shards", shards,
                   "--output-dir", str(out), "--max-steps", str(steps),
                   "--lmbda", f"{stage.lmbda if stage.lmbda is not None else lmbda:g}", "--rho", "0",
                   "--resume", "latest", "--experiment", "cdc-recipes",
                   "--run-name", f"{candidate.name}-lmbda{lmbda:g}-stage{index}"]
            if previous is not None:
                cmd += ["--init-from", str(previous)]
            cmd += [*stage.overrides, *phases, *extra, f"train.num_workers={workers}", "train.sample_every=0",
                    f"train.checkpoint_every={max(100, steps // 4)}", "train.log_every=50"]
            print(f"[recipes] {candidate.name} λ={lmbda:g} stage {index}: {steps} steps", flush=True)
            start = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            elapsed = time.perf_counter() - start
            summary = json.loads(summary_file.read_text())
            summary_file.write_text(json.dumps({**summary, "wall_seconds": elapsed}, indent=2))
        summary = json.loads(summary_file.read_text())
        steps_total += summary["step"]
        seconds += summary.get("wall_seconds", 0.0)
        previous = out
    return {"model": str(previous), "steps": steps_total, "seconds": seconds}


# ------------------------------------------------------------------------------ evaluation
def held_out_images(shards: str, limit: int = 0) -> list[tuple[str, np.ndarray]]:
    files = shard_split_images(shards, "val")
    files = files[:limit] if limit else files
    return [(f.name, np.asarray(load_eval_image(f, "full"))) for f in files]


def _summarise(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if all(k in r for r in rows)]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    mean["mse"] = float(np.mean([r["mse"] for r in rows]))
    return mean


def evaluate_cdc(model: str, images, suite: MetricSuite, settings: list[tuple[int, float]]) -> dict:
    """Real bitstreams of every held-out image at each (steps, gamma); means per setting."""
    coder = Coder(load_codec(model))
    out = {}
    for steps, gamma in settings:
        rows = []
        for _, img in images:
            encoded = coder.encode(from_uint8(img), steps=steps, gamma=gamma, seed=0)
            rec = to_uint8(coder.decode(encoded.data)[0])
            mse = float(np.mean(((img.astype(np.float64) - rec) / 255) ** 2))
            rows.append({"bpp": encoded.bpp, "mse": mse, **suite.pair(img, rec)})
        out[f"steps{steps}-gamma{gamma:g}"] = _summarise(rows)
    return out


def evaluate_anchor(path: Path, images, suite: MetricSuite) -> dict:
    """The anchor through CompressAI's own compress/decompress: bpp from the rANS strings' bytes."""
    from compressai.models import MeanScaleHyperprior

    net = MeanScaleHyperprior(128, 192)
    net.load_state_dict(torch.load(path, weights_only=True))
    net.eval()
    rows = []
    with torch.no_grad():
        for _, img in images:
            x = from_uint8(img)
            h, w = x.shape[-2:]
            enc = net.compress(pad_to_multiple(x, 64))
            nbytes = sum(len(s[0]) for s in enc["strings"])
            x_hat = net.decompress(enc["strings"], enc["shape"])["x_hat"][..., :h, :w]
            rec = to_uint8(x_hat)
            mse = float(np.mean(((img.astype(np.float64) - rec) / 255) ** 2))
            rows.append({"bpp": 8 * nbytes / (h * w), "mse": mse, **suite.pair(img, rec)})
    return {"autoencoder": _summarise(rows)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def claim(folder: Path) -> Iterator[bool]:
    """A cooperative lock on one run's folder: several benchmark processes (``--reverse``) share the
    runs, each trained and evaluated once; a lock left by a dead process is taken over."""
    folder.mkdir(parents=True, exist_ok=True)
    lock, tmp = folder / ".lock", folder / f".lock.{os.getpid()}"
    tmp.write_text(str(os.getpid()))
    try:
        for _ in range(2):
            try:
                os.link(tmp, lock)  # atomic: fails if another process holds the lock
                break
            except FileExistsError:
                try:
                    pid = int(lock.read_text())
                except (OSError, ValueError):
                    pid = 0
                if pid and _alive(pid):
                    yield False
                    return
                lock.unlink(missing_ok=True)
        else:
            yield False
            return
    finally:
        tmp.unlink(missing_ok=True)
    try:
        yield True
    finally:
        lock.unlink(missing_ok=True)


def gather(jobs: list[Callable[[], dict | None]], poll_s: float = 30.0) -> list[dict]:
    """Run every job (None = another process holds it: come back later) until all have results."""
    results: list[dict | None] = [None] * len(jobs)
    while any(r is None for r in results):
        progressed = False
        for i, job in enumerate(jobs):
            if results[i] is None:
                results[i] = job()
                progressed |= results[i] is not None
        if not progressed:
            time.sleep(poll_s)
    return results  # type: ignore[return-value]


def cached_eval(work_dir: Path, fn, *args) -> dict:
    path = work_dir / "heldout.json"
    if path.is_file():
        return json.loads(path.read_text())
    result = fn(*args)
    path.write_text(json.dumps(result, indent=2))
    return result


# ------------------------------------------------------------------------------ comparison
def rd_cost(point: dict, lmbda: float) -> float:
    """``λ·bpp + MSE`` with pixels in [-1, 1] (= 4·MSE on [0, 1]): what every candidate minimises."""
    return lmbda * point["bpp"] + 4 * point["mse"]


def psnr_gap(test: list[dict], anchor: list[dict]) -> list[float | None]:
    """PSNR of each test point minus the anchor's at the same bpp (linear in log-rate between the
    anchor's points; None outside the anchor's rate range)."""
    a = sorted(anchor, key=lambda p: p["bpp"])
    rates, quality = np.log([p["bpp"] for p in a]), [p["psnr-rgb"] for p in a]
    return [float(p["psnr-rgb"] - np.interp(math.log(p["bpp"]), rates, quality)) if rates[0] <= math.log(p["bpp"])
            <= rates[-1] else None for p in test]


def plot_rd(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, points in curves.items():
        points = sorted(points, key=lambda p: p["bpp"])
        ax.plot([p["bpp"] for p in points], [p["psnr-rgb"] for p in points], "o-", label=name)
    ax.set_xlabel("bpp (real bitstreams)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("held-out development images, equal training budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------ main
@dataclass
class Plan:
    preset: str
    shards: str
    work: Path
    budget_s: float
    lmbda: float
    rd_lmbdas: list[float]
    limit: int
    calibration_steps: int
    out_name: str
    candidates: tuple[Candidate, ...] = field(default=CANDIDATES)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--shards", default="runs/devcorpus/shards", help="manifest (built by scripts/offline_corpus.py)")
    p.add_argument("--work", type=Path, default=Path("runs/recipes"))
    p.add_argument("--budget-min", type=float, default=20.0, help="wall-clock minutes of training per run")
    p.add_argument("--lmbda", type=float, default=0.01, help="the candidates' common rate weight")
    p.add_argument("--rd-lmbdas", default="0.004,0.025", help="extra λ values for the winner and the anchor")
    p.add_argument("--limit", type=int, default=0, help="held-out images (0: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny preset, seconds of budget: checks the script")
    p.add_argument("--reverse", action="store_true",
                   help="take the runs in reverse order: start a second process with it to share the work")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.quick:
        plan = Plan("tiny", args.shards, args.work / "quick", 12.0, args.lmbda, [0.03], args.limit or 2, 3,
                    "recipes-quick")
    else:
        plan = Plan(args.preset, args.shards, args.work, args.budget_min * 60, args.lmbda,
                    [float(v) for v in args.rd_lmbdas.split(",") if v], args.limit, 20, "recipes")
    if not Path(plan.shards).exists():
        from shards.devcorpus import build_corpus

        build_corpus(Path(plan.shards).parent)
    plan.work.mkdir(parents=True, exist_ok=True)
    timing_file = plan.work / "timing.json"
    if not timing_file.is_file():
        timing_file.write_text(json.dumps(calibrate(plan.preset, plan.shards, plan.calibration_steps), indent=2))
    timing = json.loads(timing_file.read_text())
    print("[recipes] seconds per step:", timing, flush=True)
    images = held_out_images(plan.shards, plan.limit)
    suite = MetricSuite(metrics=PER_IMAGE_METRICS)
    sampler_steps = load_config(plan.preset).sampler.steps
    settings = [(1, 0.0), (4, 0.0), (sampler_steps, 0.8)]

    def cdc_point(candidate: Candidate, lmbda: float) -> dict | None:
        with claim(plan.work / f"{candidate.name}-lmbda{lmbda:g}") as mine:
            if not mine:
                return None
            trained = run_candidate(candidate, plan.work, plan.preset, plan.shards, lmbda, plan.budget_s, timing)
            evals = cached_eval(Path(trained["model"]), evaluate_cdc, trained["model"], images, suite, settings)
        return {"candidate": candidate.name, "lmbda": lmbda, **trained, "heldout": evals}

    def anchor_point(lmbda: float) -> dict | None:
        out = plan.work / f"{ANCHOR}-lmbda{lmbda:g}"
        with claim(out) as mine:
            if not mine:
                return None
            summary = train_anchor(out, plan.shards, plan.preset, lmbda, round(plan.budget_s / timing[ANCHOR]))
            evals = cached_eval(out, evaluate_anchor, out / "anchor.pt", images, suite)
        return {"candidate": ANCHOR, "lmbda": lmbda, "model": str(out), "steps": summary["steps"],
                "seconds": summary["seconds"], "heldout": evals}

    def ordered(jobs: list) -> list:
        return jobs[::-1] if args.reverse else jobs

    # the fast-start candidates and the anchor first: their comparison is the one that matters most
    first, *others = reversed(plan.candidates)
    jobs = [functools.partial(cdc_point, first, plan.lmbda), functools.partial(anchor_point, plan.lmbda),
            *(functools.partial(cdc_point, c, plan.lmbda) for c in others)]
    rows = gather(ordered(jobs))
    rows = sorted((r for r in rows if r["candidate"] != ANCHOR), key=lambda r: r["candidate"]) + \
        [r for r in rows if r["candidate"] == ANCHOR]
    key = "steps1-gamma0"
    for row in rows:
        point = row["heldout"].get(key) or row["heldout"]["autoencoder"]
        row["rd_cost"] = rd_cost(point, plan.lmbda)
    winner = min((r for r in rows if r["candidate"] != ANCHOR), key=lambda r: r["rd_cost"])
    chosen = next(c for c in plan.candidates if c.name == winner["candidate"])
    rd_jobs = [functools.partial(cdc_point, chosen, lm) for lm in plan.rd_lmbdas] + \
        [functools.partial(anchor_point, lm) for lm in plan.rd_lmbdas]
    rd_rows = sorted(gather(ordered(rd_jobs)), key=lambda r: (r["candidate"] == ANCHOR, r["lmbda"]))

    table = []
    for row in rows + rd_rows:
        for setting, point in row["heldout"].items():
            table.append({"candidate": row["candidate"], "lmbda": row["lmbda"], "decode": setting,
                          "steps": row["steps"], "minutes": row["seconds"] / 60, "bpp": point["bpp"],
                          "psnr": point["psnr-rgb"], "ms-ssim": point.get("ms-ssim-rgb", float("nan")),
                          "stlpips-vgg": point["stlpips-vgg"], "rd_cost": rd_cost(point, row["lmbda"])})
    markdown = print_table(table, [("candidate", "candidate"), ("lmbda", "λ"), ("decode", "decode"),
                                   ("steps", "train steps"), ("minutes", "train min"), ("bpp", "bpp"),
                                   ("psnr", "PSNR dB"), ("ms-ssim", "MS-SSIM"), ("stlpips-vgg", "ST-LPIPS-VGG"),
                                   ("rd_cost", "λ·bpp+MSE")])
    winner_rows = [r for r in rows + rd_rows if r["candidate"] == winner["candidate"]]
    anchor_rows = [r for r in rows + rd_rows if r["candidate"] == ANCHOR]
    anchor_points = [r["heldout"]["autoencoder"] for r in anchor_rows]
    curves = {f"CDC {winner['candidate']} (γ=0, 1 step)": [r["heldout"][key] for r in winner_rows],
              f"CDC {winner['candidate']} (γ=0.8, {sampler_steps} steps)":
                  [r["heldout"][f"steps{sampler_steps}-gamma0.8"] for r in winner_rows],
              "MeanScaleHyperprior (same budget)": anchor_points}
    gaps = psnr_gap(curves[f"CDC {winner['candidate']} (γ=0, 1 step)"], anchor_points)
    by_lmbda = sorted(winner_rows, key=lambda r: r["lmbda"])
    rates = [r["heldout"][key]["bpp"] for r in by_lmbda]
    separated = all(a > b for a, b in itertools.pairwise(rates))
    measured = [g for g in gaps if g is not None]
    goal = {"psnr_gap_db_at_equal_bpp": gaps, "mean_gap_db": float(np.mean(measured)) if measured else None,
            "within_1db": bool(measured) and min(measured) >= -1.0, "lambdas_separate_in_rate": separated,
            "winner_bpp_by_increasing_lambda": rates}
    print(f"[recipes] winner: {winner['candidate']}; goal: {json.dumps(goal)}")
    RESULTS.mkdir(exist_ok=True)
    plot_rd(curves, RESULTS / f"{plan.out_name}-rd.png")
    write_json(plan.out_name, {"preset": plan.preset, "budget_minutes": plan.budget_s / 60, "lmbda": plan.lmbda,
                               "timing_seconds_per_step": timing, "images": [n for n, _ in images],
                               "candidates": {c.name: c.description for c in plan.candidates},
                               "winner": winner["candidate"], "goal": goal, "runs": rows + rd_rows,
                               "table": table, "markdown": markdown})
    return 0


if __name__ == "__main__":
    sys.exit(main())
