"""Train, evaluate and ship the model family: CDC codecs at several rates (and one perceptual model),
CompressAI-zoo style, each loadable by name (``cdc compress -m small-q2``).

    python scripts/train_family.py                   # every member not yet shipped (resumable)
    python scripts/train_family.py --only small-q4   # one member
    python scripts/train_family.py --evaluate-only   # re-measure the shipped members
    python scripts/train_family.py --refit-shipped   # refit the shipped members' entropy models only

Each member is a ``cdc/train.py`` run on the photo corpus (``python -m shards.photocorpus``):

1. ``small-q4`` (the highest rate) fine-tunes ``small-base`` on the photos (the unshipped stage
   ``small-q4-main``), then anneals at a fifth of the learning rate;
2. each lower rate fine-tunes the member above it at a larger λ (how CompressAI's users derive
   rates): most steps refit the latent as an autoencoder (``train.finetune_phases``: a joint CPU step
   costs ~10 autoencoder steps), then the U-Net adapts on the frozen latent, then everything jointly;
3. the perceptual member (ρ > 0) fine-tunes the lowest-rate member jointly with ST-LPIPS;
4. every shipped member's entropy model is then refitted alone at larger crops (``REFIT_STEPS``);
5. a one-step student distils a perceptual member's 9-step decode (``python -m cdc.training.distill``, in
   rounds on new crops): the teacher's bitstreams, decoded in one step.

Every run is resumable (checkpoints under ``--work``, outside git). A finished member is evaluated on
the held-out photos through real bitstreams, next to JPEG and WebP at the same bpp on the same
photos, exported to ``cdc/zoo/weights/<name>.safetensors`` with its model card, and its row written
to ``benchmarks/results/family.json`` (the README's table and ``tests/test_family.py`` read it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "family.json"
CROPS = REPO / "tests" / "assets" / "heldout"
"""256² crops of two held-out photos (opencv-doc's building.jpg, matplotlib's grace_hopper.jpg): the
quality regression test (``tests/test_family.py``) decodes them with every member and compares."""
SHARDS = "runs/photos/shards"
MAX_MB = 10.0


@dataclass(frozen=True)
class Member:
    """One shipped model: its objective, where it starts and how long it trains."""

    name: str
    lmbda: float
    rho: float
    init_from: str
    steps: int
    autoencoder_fraction: float
    freeze_latent_fraction: float
    batch_size: int = 8
    lr_decay_every: int = 0  # 0: a quarter of the steps
    finetune_lr: float | None = None  # None: the preset's ``train.finetune_lr``
    history: str = ""  # how the shipped weights came about where that differs from one plain run
    shipped: bool = True  # False: a stage that another member starts from, not exported
    refit_steps: int = 0  # then refit the entropy model alone for this many steps (``refit``); 0: none
    rate_lambdas: tuple[float, ...] = ()  # a variable-rate model's levels (``model.rate_lambdas``); (): fixed rate
    distil_rounds: tuple[tuple[int, float, int], ...] = ()
    """A one-step student of ``init_from`` (its teacher): (optimizer steps, learning rate, seed of the crops) of each
    round of ``python -m cdc.training.distill``, each round from the last; (): a trained member."""
    student_gamma: float = 0.8  # a student's start-noise scale: its one-step decode's γ (the teacher's 9-step γ)

    @property
    def decodes(self) -> tuple[tuple[int, float], ...]:
        """(DDIM steps, γ) its card reports, the default decode first."""
        return ((1, self.student_gamma),) if self.distil_rounds else DECODES[self.rho]

    def model_overrides(self) -> list[str]:
        """The architecture's overrides of the preset, in every stage of the member."""
        return [f"model.rate_lambdas=[{','.join(f'{v:g}' for v in self.rate_lambdas)}]"] if self.rate_lambdas else []

    def overrides(self) -> list[str]:
        lr = [] if self.finetune_lr is None else [f"train.finetune_lr={self.finetune_lr:g}"]
        return [*lr, f"train.autoencoder_fraction={self.autoencoder_fraction}",
                f"train.freeze_latent_fraction={self.freeze_latent_fraction}",
                f"train.finetune_phases={str(self.autoencoder_fraction + self.freeze_latent_fraction > 0).lower()}",
                f"train.batch_size={self.batch_size}",
                f"train.lr_decay_every={self.lr_decay_every or max(1000, self.steps // 4)}",
                "train.checkpoint_every=500", "train.log_every=100", "train.sample_every=0"]


REFIT_STEPS = 3000
REFIT_OVERRIDES = ("train.entropy_fraction=1", "train.crop=256", "train.batch_size=4", "train.lr_decay_every=1000",
                   "train.checkpoint_every=1000", "train.log_every=100", "train.sample_every=0")
"""The entropy refit of every shipped member (``train.entropy_fraction``): the members train at 128²
crops, where the hyper-latent z is 2 × 2 and all border; 3,000 rate-only steps at 256² crops, the
transforms frozen, save 8-18 % of their bits at unchanged PSNR (``benchmarks/context_model.py``)."""

FAMILY = (
    Member("small-q4-main", 0.005, 0.0, "small-base", 30000, 0.97, 0.01, lr_decay_every=5000, shipped=False,
           history="trained to 12,000 steps (the phases laid out for 12,000), then resumed to 18,000 and to "
                   "30,000"),
    Member("small-q4", 0.005, 0.0, "small-q4-main", 3000, 0.95, 0.02, lr_decay_every=1000, finetune_lr=1e-5,
           history="small-q4-main (30,000 steps from small-base, Adam 1e-4 decayed to 2.6e-5, 95 min) annealed "
                   "at 1e-5", refit_steps=REFIT_STEPS),
    Member("small-q3", 0.01, 0.0, "small-q4-main", 1500, 0.93, 0.02,
           history="started from small-q4-main's 12,000-step weights (fingerprint b143f300efb7…), before it was "
                   "resumed", refit_steps=REFIT_STEPS),
    Member("small-q2", 0.02, 0.0, "small-q3", 1500, 0.93, 0.02, refit_steps=REFIT_STEPS),
    Member("small-q1", 0.045, 0.0, "small-q2", 1500, 0.93, 0.02, refit_steps=REFIT_STEPS),
    Member("small-q0", 0.09, 0.0, "small-q1", 1500, 0.93, 0.02, refit_steps=REFIT_STEPS),
    Member("small-q1-perceptual", 0.045, 0.9, "small-q1", 200, 0.0, 0.0, batch_size=4, refit_steps=REFIT_STEPS),
    Member("small-q0-perceptual", 0.09, 0.9, "small-q0", 200, 0.0, 0.0, batch_size=4, refit_steps=REFIT_STEPS),
    # the perceptual members' 9-step decode in one step: 1,024 crops per round, batch 8 (the distillation's defaults)
    Member("small-q1-perceptual-1step", 0.045, 0.9, "small-q1-perceptual", 3300, 0.0, 0.0,
           distil_rounds=((1500, 1e-4, 0), (1000, 5e-5, 1), (800, 5e-5, 2))),
    Member("small-q0-perceptual-1step", 0.09, 0.9, "small-q0-perceptual", 1200, 0.0, 0.0,
           distil_rounds=((1200, 1e-4, 0),)),
    # one model for every rate: gain units over the ρ = 0 members' λ (``cdc.models.gain``), from the middle member
    Member("small-vr", 0.02, 0.0, "small-q2", 10000, 0.9, 0.04, lr_decay_every=2500, refit_steps=REFIT_STEPS,
           rate_lambdas=(0.09, 0.045, 0.02, 0.01, 0.005)),
)
DECODES = {0.0: ((1, 0.0),), 0.9: ((1, 0.0), (9, 0.8))}
"""(DDIM steps, γ) reported per ρ: the deterministic one-step decode for the distortion models; the
perceptual model also at the preset's default (9 steps, γ = 0.8: texture from the diffusion prior)."""


def run_stage(name: str, out: Path, init: str | Path, member: Member, steps: int, overrides: list[str]) -> None:
    """Run (or resume, or skip when finished) one ``cdc/train.py`` run of ``member``'s objective into ``out``."""
    if (out / "train_summary.json").is_file():
        return
    cmd = [sys.executable, str(REPO / "cdc" / "train.py"), "--preset", "small", "--shards", SHARDS,
           "--output-dir", str(out), "--init-from", str(init), "--lmbda", f"{member.lmbda:g}",
           "--rho", f"{member.rho:g}", "--max-steps", str(steps), "--resume", "latest",
           "--experiment", "cdc-family", "--run-name", name, *member.model_overrides(), *overrides]
    print(f"[family] {name}: {' '.join(cmd[2:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    ledger = out / "wall_seconds.json"
    spent = json.loads(ledger.read_text()) if ledger.is_file() else []
    ledger.write_text(json.dumps([*spent, time.perf_counter() - start]))


def distil_dirs(member: Member, work: Path) -> list[Path]:
    """Where a student's distillation rounds run; the last is the student."""
    rounds = len(member.distil_rounds)
    return [work / (member.name if i == rounds else f"{member.name}-round{i}") for i in range(1, rounds + 1)]


def distil(member: Member, work: Path) -> None:
    """Run (or skip when finished) each distillation round of a student ``member`` (a round is not resumable).
    The teacher is the shipped ``init_from`` (shipped before its student), whose files the student reads."""
    previous = None
    for out, (steps, lr, seed) in zip(distil_dirs(member, work), member.distil_rounds, strict=True):
        if not (out / "distill.json").is_file():
            cmd = [sys.executable, "-m", "cdc.training.distill", "--teacher", member.init_from, "--shards", SHARDS,
                   "--output", str(out), "--student-gamma", f"{member.student_gamma:g}", "--steps", str(steps),
                   "--lr", f"{lr:g}", "--seed", str(seed), *(["--init", str(previous)] if previous else [])]
            print(f"[family] {out.name}: {' '.join(cmd[1:])}", flush=True)
            subprocess.run(cmd, check=True)
        previous = out


def train(member: Member, work: Path, refit_shipped: bool = False) -> None:
    """Train ``member`` into ``work/NAME``, then its entropy refit into ``work/NAME-refit``.

    ``refit_shipped``: when that training run is not in ``work``, the refit starts from the shipped
    weights of ``member`` (the run's export) instead of training it again (and a stage that is not
    shipped does not run)."""
    if member.distil_rounds:
        return distil(member, work)
    out = work / member.name
    from_shipped = refit_shipped and not out.is_dir()
    if not from_shipped:
        init = work / member.init_from if (work / member.init_from / "config.json").is_file() else member.init_from
        run_stage(member.name, out, init, member, member.steps, member.overrides())
    if member.refit_steps:
        init = member.name if from_shipped else out
        run_stage(f"{member.name}-refit", refit_dir(member, work), init, member, member.refit_steps,
                  list(REFIT_OVERRIDES))


def refit_dir(member: Member, work: Path) -> Path:
    """Where ``member``'s entropy refit runs."""
    return work / f"{member.name}-refit"


def shipped_run(member: Member, work: Path) -> Path:
    """The run whose export ships as ``member``: its entropy refit, if it has one."""
    return refit_dir(member, work) if member.refit_steps else work / member.name


def held_out() -> list[tuple[str, np.ndarray]]:
    """The photo corpus's held-out split (whole photos, 512 px shorter side), as uint8 arrays."""
    from cdc.evaluation.datasets import load_eval_image, shard_split_images

    return [(f.name, np.asarray(load_eval_image(f, "full"))) for f in shard_split_images(SHARDS, "val")]


QUALITIES = (0, 1, 2, 5, 10, 15, 20, 30, 40, 50, 60, 75)
"""Pillow quality settings of the classical curves (0 and 1: their lowest rates, for the lowest members)."""


def classical_curves(images, known: dict[str, list[dict]] | None = None) -> dict[str, list[dict]]:
    """Mean bpp, PSNR and ST-LPIPS-Alex of JPEG and WebP (Pillow) over the held-out photos, per
    quality; the qualities already in ``known`` are kept, not measured again."""
    from cdc.evaluation.baselines import build_baseline
    from cdc.evaluation.metrics import MetricSuite

    suite = MetricSuite(metrics=("psnr-rgb", "stlpips-alex"))
    curves = {}
    for name in ("jpeg", "webp"):
        codec = build_baseline(name)
        points = list((known or {}).get(name, []))
        for quality in sorted(set(QUALITIES) - {p["quality"] for p in points}):
            rows = []
            for _, img in images:
                data = codec.encode(img, quality)
                rows.append({"bpp": 8 * len(data) / (img.shape[0] * img.shape[1]),
                             **suite.pair(img, codec.decode(data))})
            points.append({"quality": quality, **{k: float(np.mean([r[k] for r in rows])) for k in rows[0]}})
        curves[name] = sorted(points, key=lambda p: p["bpp"])
    return curves


def at_rate(curve: list[dict], bpp: float, metric: str) -> float | None:
    """``metric`` of a classical codec at ``bpp`` (linear in log-rate; None outside its range)."""
    rates = np.log([p["bpp"] for p in curve])
    if not rates[0] <= np.log(bpp) <= rates[-1]:
        return None
    return float(np.interp(np.log(bpp), rates, [p[metric] for p in curve]))


def evaluate(model: Path, images, decodes, curves) -> list[dict]:
    """Real bitstreams of every held-out photo at each (steps, γ), and a variable-rate model's at each of
    its trained rate levels: means, and the classical codecs at the same bpp."""
    from cdc.coding.coder import Coder
    from cdc.evaluation.metrics import MetricSuite
    from cdc.images import from_uint8, to_uint8
    from cdc.zoo.checkpoint import load_codec

    coder = Coder(load_codec(model))
    suite = MetricSuite(metrics=("psnr-rgb", "ms-ssim-rgb", "stlpips-alex"))
    rows = []
    levels = [{"level": float(level)} for level in range(coder.codec.rate_levels)] or [{}]
    for (steps, gamma), rate in ((d, r) for d in decodes for r in levels):
        per_image = []
        for _, img in images:
            encoded = coder.encode(from_uint8(img), steps=steps, gamma=gamma, seed=0, **rate)
            rec = to_uint8(coder.decode(encoded.data)[0])
            per_image.append({"bpp": encoded.bpp, **suite.pair(img, rec)})
        row = {"steps": steps, "gamma": gamma, **rate,
               **{k: float(np.mean([r[k] for r in per_image])) for k in per_image[0]}}
        rows.append(with_classical(row, curves))
    return rows


def decode_label(row: dict) -> str:
    """A result row's decode, and its rate level for a variable-rate model."""
    level = f", level {row['level']:g}" if "level" in row else ""
    return f"{row['steps']} step{'s' if row['steps'] > 1 else ''}, γ = {row['gamma']:g}{level}"


def with_classical(row: dict, curves: dict[str, list[dict]]) -> dict:
    """``row`` (a member's mean bpp and metrics) with each classical codec's PSNR and ST-LPIPS-Alex at its bpp."""
    for codec, curve in curves.items():
        row[f"{codec}_psnr"] = at_rate(curve, row["bpp"], "psnr-rgb")
        row[f"{codec}_stlpips_alex"] = at_rate(curve, row["bpp"], "stlpips-alex")
    return row


def regression_reference(model: Path) -> dict[str, dict[str, float]]:
    """Bytes and PSNR of each committed crop through shipped ``model`` at its default decode (start-noise seed
    0), for the regression test."""
    from cdc.coding.coder import Coder
    from cdc.evaluation.metrics import psnr
    from cdc.images import from_uint8, to_uint8
    from cdc.zoo.checkpoint import load_codec

    coder = Coder(load_codec(model))
    out = {}
    for crop in sorted(CROPS.glob("*.png")):
        from PIL import Image

        img = np.asarray(Image.open(crop).convert("RGB"))
        encoded = coder.encode(from_uint8(img), seed=0)
        out[crop.name] = {"bytes": len(encoded.data), "psnr": psnr(img, to_uint8(coder.decode(encoded.data)[0]))}
    return out


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``; "–" where a codec cannot reach the rate (None)."""
    return "–" if value is None else format(value, spec)


def objective(member: Member) -> str:
    """The card's words for a member's objective."""
    if not member.rate_lambdas:
        return f"λ = {member.lmbda:g}, ρ = {member.rho:g}"
    lambdas = ", ".join(f"{v:g}" for v in member.rate_lambdas)
    return (f"one variable-rate model (gain units, `cdc.models.gain`), rate levels 0-{len(member.rate_lambdas) - 1} "
            f"trained at λ = {lambdas}, ρ = {member.rho:g}; `cdc compress --quality Q` (0-100, default 75: level "
            f"Q / 100 × {len(member.rate_lambdas) - 1}) or `--bpp B` chooses the rate")


def card(member: Member, info: dict, rows: list[dict], minutes: float, provenance: dict,
         refit_minutes: float = 0.0) -> str:
    """The markdown model card (``minutes``: training wall clock; ``refit_minutes``: its entropy refit's)."""
    from cdc.config import load_config
    from cdc.zoo.pretrained import decode_line

    meta, preset = info["metadata"], load_config("small").train  # the exported config is the last stage's
    sources = ", ".join(f"{s['photos']} from {s['source'].split('=')[0]}" for s in provenance["summary"])
    role = (f"the one-step student of `{member.init_from}`: its encoder, entropy model and bitstreams, its decoder "
            f"distilled so that one DDIM step (γ = {member.student_gamma:g}) gives what the teacher's 9-step decode "
            "gives" if member.distil_rounds else "member of the shipped family")
    lines = [
        f"# {member.name}", "",
        f"A `small` CDC codec ({info['parameters'] / 1e6:.2f} M parameters), {role} (`scripts/train_family.py`): "
        f"{objective(member)}.", "",
        f"* **fingerprint**: `{info['fingerprint']}`",
        f"* **load**: `cdc compress photo.png -m {member.name} -o out/`, "
        f"`cdc/train.py --init-from {member.name} ...`",
        decode_line(member.name),
        f"* **data**: the photo corpus (`python -m shards.photocorpus`, "
        f"{sum(s['photos'] for s in provenance['summary'])} natural photos listed in `shards/photos.tsv`: "
        f"{sources}); train split only, as 256-px patches at shorter sides 512, 768 and 1024 px (never "
        "upscaled); 15 % of the photos held out by content hash. `mate-backgrounds` and "
        f"`plasma-workspace-wallpapers` are reserved for independent evaluation and unused. Shards fingerprint "
        f"`{meta.get('shards_fingerprint')}`.",
        distil_recipe(member, minutes) if member.distil_rounds else
        f"* **recipe**: fine-tuned from `{member.init_from}` for {member.steps} steps, "
        f"batch {member.batch_size} × {preset.crop}² crops, Adam {member.finetune_lr or preset.finetune_lr:g}"
        + (f": {member.autoencoder_fraction:.0%} of the steps refit the latent as an MSE autoencoder, "
           f"{member.freeze_latent_fraction:.0%} train the U-Net on the frozen latent, the rest jointly"
           if member.autoencoder_fraction else ": joint training (diffusion + ST-LPIPS-Alex)")
        + (f"; then the entropy model alone refitted for {member.refit_steps} steps at 4 × 256² crops (rate "
           f"only, the transforms frozen: `train.entropy_fraction=1`, {refit_minutes:.0f} min)"
           if member.refit_steps else "")
        + f"; EMA weights exported. Training wall clock: {minutes + refit_minutes:.0f} min on 2 CPU cores."
        + (f" History: {member.history}." if member.history else ""),
        f"* **reproduce**: `python scripts/train_family.py --only {member.name}` (after its `init_from`)",
        "", "## Held-out photos (real bitstreams, mean over the 36 held-out photos)", "",
        "| decode | bpp | PSNR (dB) | JPEG PSNR at this bpp | MS-SSIM | ST-LPIPS-Alex | JPEG ST-LPIPS "
        "| WebP ST-LPIPS |",
        "|---|---|---|---|---|---|---|---|",
    ]

    for r in rows:
        lines.append(f"| {decode_label(r)} | {r['bpp']:.4f} | {r['psnr-rgb']:.2f} | "
                     f"{fmt(r['jpeg_psnr'], '.2f')} | {r['ms-ssim-rgb']:.4f} | {r['stlpips-alex']:.4f} | "
                     f"{fmt(r['jpeg_stlpips_alex'], '.4f')} | {fmt(r['webp_stlpips_alex'], '.4f')} |")
    lines += ["", "Limitations: a CPU-sized model (a few M parameters) trained for minutes to hours on 2 CPU "
              "cores; JPEG's numbers above are on the same photos at the same bpp (– where JPEG cannot reach "
              "this rate).", ""]
    return "\n".join(lines)


PERCEPTUAL_NAMES = {"stlpips-alex": "ST-LPIPS-Alex", "stlpips-vgg": "ST-LPIPS-VGG", "lpips-alex": "LPIPS-Alex",
                    "lpips-vgg": "LPIPS-VGG"}


def distil_recipe(member: Member, minutes: float) -> str:
    """The card's recipe line of a student."""
    from cdc.training.distill import DistillConfig

    cfg = DistillConfig(student_gamma=member.student_gamma)
    rounds = "; ".join(f"{steps} steps at Adam {lr:g} on {cfg.crops:,} crops of {cfg.crop}² (seed {seed})"
                       for steps, lr, seed in member.distil_rounds)
    n = len(member.distil_rounds)
    how = "one round" if n == 1 else f"{n} rounds, each from the last"
    return (f"* **recipe**: `python -m cdc.training.distill --teacher {member.init_from} --student-gamma "
            f"{member.student_gamma:g}` in {how}: {rounds}; the "
            f"targets are the teacher's {cfg.teacher_steps}-step, γ = {cfg.teacher_gamma:g} decodes of the crops, the "
            f"loss MSE + {cfg.perceptual_weight:g} × {PERCEPTUAL_NAMES[cfg.perceptual]} to them, "
            f"batch {cfg.batch}; only the decoder trains. Distillation wall clock: {minutes:.0f} min on 2 CPU cores.")


def training_minutes(model: Path) -> float:
    """Wall-clock minutes of a run: its invocations' ledger, else a distillation's record, else the sum of its
    logged windows (``metrics.jsonl``: images over images/s; a run started by hand has no ledger)."""
    ledger, distilled = model / "wall_seconds.json", model / "distill.json"
    if ledger.is_file():
        return sum(json.loads(ledger.read_text())) / 60
    if distilled.is_file():  # the teacher's decodes of the crops, then the student's steps
        record = json.loads(distilled.read_text())
        return (record["target_seconds"] + record["curve"][-1]["seconds"]) / 60
    rows = [json.loads(line) for line in (model / "metrics.jsonl").read_text().splitlines()]
    batch = json.loads((model / "train_config.json").read_text())["train"]["batch_size"]
    seconds, last = 0.0, 0
    for row in rows:
        if row["step"] > last:  # a resumed run logs its steps again from its checkpoint
            seconds += (row["step"] - last) * batch / row["images_per_s"]
            last = row["step"]
    return seconds / 60


def lineage(member: Member) -> list[Member]:
    """``member`` and the unshipped stages it starts from (their training time is part of its own)."""
    by_name = {m.name: m for m in FAMILY}
    stages = [member]
    while (parent := by_name.get(stages[-1].init_from)) is not None and not parent.shipped:
        stages.append(parent)
    return stages


def ship(member: Member, work: Path, images, curves, results: dict) -> dict:
    """Evaluate a trained member, export it with its card, and record its row."""
    from cdc.zoo.checkpoint import load_codec, read_checkpoint_info, save_codec

    model = shipped_run(member, work)
    rows = evaluate(model, images, member.decodes, curves)
    recorded = results["members"].get(member.name, {})
    if member.distil_rounds:
        minutes = sum(training_minutes(out) for out in distil_dirs(member, work))
    elif (work / member.name).is_dir():
        minutes = sum(training_minutes(work / stage.name) for stage in lineage(member))
    else:  # refitted from the shipped weights: their training run is recorded, not in ``work``
        minutes = recorded["train_minutes"]
    refit_minutes = training_minutes(model) if member.refit_steps else 0.0
    target = REPO / "cdc" / "zoo" / "weights" / f"{member.name}.safetensors"
    inherited = {}
    if member.distil_rounds:  # a student's objective and data are its teacher's
        teacher = read_checkpoint_info(target.with_name(f"{member.init_from}.safetensors"))["metadata"]
        inherited = {k: teacher.get(k) for k in ("lmbda", "rho", "shards_fingerprint")}
    # neither a variable-rate model nor a student (its teacher's encoder) is one of the fixed-rate members that
    # the grid and the λ lookup pick from
    metadata = {**read_checkpoint_info(model)["metadata"], **inherited, "name": member.name,
                "family": not (member.rate_lambdas or member.distil_rounds), "heldout": rows}
    save_codec(load_codec(model), target, metadata=metadata)
    record_decode(member.name, *member.decodes[0])
    info = read_checkpoint_info(target)
    provenance = json.loads((Path(SHARDS).parent / "provenance.json").read_text())
    target.with_suffix(".md").write_text(card(member, info, rows, minutes, provenance, refit_minutes))
    size_mb = target.stat().st_size / 2**20
    entry = {"name": member.name, "lmbda": member.lmbda, "rho": member.rho, "init_from": member.init_from,
             "steps": member.steps, "train_minutes": minutes, "refit_steps": member.refit_steps,
             "refit_minutes": refit_minutes, "size_mb": size_mb, "rate_lambdas": list(member.rate_lambdas),
             "fingerprint": info["fingerprint"], "heldout": rows, "regression": regression_reference(target),
             **({"distilled_from": member.init_from} if member.distil_rounds else {})}
    results["members"][member.name] = entry
    print(f"[family] {member.name}: {target} ({size_mb:.1f} MB) " + "; ".join(
        f"{r['steps']} steps γ={r['gamma']:g}: {r['bpp']:.4f} bpp {r['psnr-rgb']:.2f} dB (JPEG "
        f"{r['jpeg_psnr'] if r['jpeg_psnr'] is None else round(r['jpeg_psnr'], 2)}) ST-LPIPS {r['stlpips-alex']:.4f}"
        for r in rows), flush=True)
    if size_mb > MAX_MB:
        raise SystemExit(f"{target}: {size_mb:.1f} MB, over the {MAX_MB} MB limit of a shipped model")
    return entry


def record_decode(name: str, steps: int, gamma: float) -> None:
    """Write a shipped model's default decode into ``decodes.json`` (its CPU time, when the decode is unchanged,
    stays: ``benchmarks/shipped_decode.py`` measures it)."""
    from cdc.zoo.pretrained import DECODES as SHIPPED

    decodes = json.loads(SHIPPED.read_text())
    entry = decodes.get(name, {})
    if (entry.get("steps"), entry.get("gamma")) != (steps, gamma):
        decodes[name] = {"steps": steps, "gamma": gamma}
        SHIPPED.write_text(json.dumps(decodes, indent=2, ensure_ascii=False) + "\n")


def family_table(results: dict) -> str:
    """The README's and the docs' family table (markdown), rendered from ``results``: one row per
    member and decode, with JPEG and WebP on the same photos at the same bpp."""

    lines = ["| model | λ | ρ | decode | bpp | PSNR (dB) | JPEG at this bpp | Δ vs JPEG | WebP at this bpp "
             "| ST-LPIPS-Alex | JPEG | WebP | size | train min |", "|" + "---|" * 14]
    for m in sorted(results["members"].values(),
                    key=lambda m: (m["rho"], bool(m.get("rate_lambdas")), -m["heldout"][0]["bpp"])):
        for r in m["heldout"]:
            delta = None if r["jpeg_psnr"] is None else r["psnr-rgb"] - r["jpeg_psnr"]
            lines.append(
                f"| `{m['name']}` | {lmbda(m, r)} | {m['rho']:g} | {decode_label(r)} | {r['bpp']:.3f} | "
                f"{r['psnr-rgb']:.2f} | {fmt(r['jpeg_psnr'], '.2f')} | "
                f"{fmt(delta, '+.2f')} | {fmt(r.get('webp_psnr'), '.2f')} | {r['stlpips-alex']:.3f} | "
                f"{fmt(r['jpeg_stlpips_alex'], '.3f')} | {fmt(r['webp_stlpips_alex'], '.3f')} | "
                f"{m['size_mb']:.1f} MB | {m['train_minutes'] + m.get('refit_minutes', 0.0):.0f} |")
    return "\n".join(lines)


def lmbda(member: dict, row: dict) -> str:
    """The λ of a table row: the member's, or a variable-rate model's at the row's level."""
    return f"{member['rate_lambdas'][int(row['level'])]:g}" if "level" in row else f"{member['lmbda']:g}"


def save_results(results: dict) -> None:
    """Write ``benchmarks/results/family.json`` with its rendered ``table``."""
    results["table"] = family_table(results)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


def plot_family(results: dict, out: Path) -> Path:
    """PSNR and ST-LPIPS-Alex against bpp: the members (one-step decode; the perceptual one also at its
    default decode), JPEG and WebP on the same held-out photos."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = ((axes[0], "psnr-rgb", "PSNR (dB)"), (axes[1], "stlpips-alex", "ST-LPIPS-Alex (lower is better)"))
    for ax, metric, label in panels:
        for name, curve in results["classical"].items():
            ax.plot([p["bpp"] for p in curve], [p[metric] for p in curve], "s--", label=name.upper(), alpha=0.7)
        distortion = sorted((m["heldout"][0] for m in results["members"].values()
                             if m["rho"] == 0 and not m.get("rate_lambdas")), key=lambda r: r["bpp"])
        ax.plot([r["bpp"] for r in distortion], [r[metric] for r in distortion], "o-", label="CDC ρ = 0 (1 step)")
        for m in (m for m in results["members"].values() if m.get("rate_lambdas")):
            ax.plot([r["bpp"] for r in m["heldout"]], [r[metric] for r in m["heldout"]], "v:",
                    label=f"{m['name']}, one model (1 step)")
        for m in results["members"].values():
            if m["rho"] > 0:
                for r in m["heldout"]:
                    ax.plot(r["bpp"], r[metric], "*", markersize=11,
                            label=f"{m['name']} ({r['steps']} step{'s' if r['steps'] > 1 else ''}, γ = {r['gamma']:g})")
        ax.set_xlim(0, 0.8)
        ax.set_xlabel("bpp (real bitstreams)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"The shipped family on {results['held_out_photos']} held-out photos")
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "rd.png", dpi=110)
    plt.close(fig)
    return out / "rd.png"


def gallery(results: dict, images, out: Path, target: float = 0.15, crop: int = 256) -> Path:
    """original | JPEG | WebP | CDC ρ = 0 | CDC ρ > 0, each at its setting nearest ``target`` bpp on one
    held-out photo (a centre crop; the codecs code the whole photo)."""
    from PIL import Image, ImageDraw

    from cdc.coding.coder import Coder
    from cdc.evaluation.baselines import build_baseline
    from cdc.images import from_uint8, to_uint8
    from cdc.zoo.checkpoint import load_codec
    from cdc.zoo.pretrained import available

    name, img = images[0]
    pixels = img.shape[0] * img.shape[1]
    panels = [("original", img)]
    for codec_name in ("jpeg", "webp"):
        codec = build_baseline(codec_name)
        coded = [codec.encode(img, q) for q in range(1, 96)]
        data = min(coded, key=lambda d: abs(8 * len(d) / pixels - target))
        panels.append((f"{codec_name.upper()} {8 * len(data) / pixels:.3f} bpp", codec.decode(data)))
    for rho, steps, gamma in ((0.0, 1, 0.0), (0.9, 9, 0.8)):
        members = [m for m in results["members"].values()
                   if m["rho"] == rho and not m.get("rate_lambdas") and not m.get("distilled_from")]
        if not members:
            continue
        member = min(members, key=lambda m: abs(m["heldout"][0]["bpp"] - target))
        coder = Coder(load_codec(available()[member["name"]]))
        encoded = coder.encode(from_uint8(img), steps=steps, gamma=gamma, seed=0)
        panels.append((f"{member['name']} {encoded.bpp:.3f} bpp", to_uint8(coder.decode(encoded.data)[0])))
    h, w = img.shape[:2]
    top, left = (h - crop) // 2, (w - crop) // 2
    sheet = Image.new("RGB", (crop * len(panels), crop + 24), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (caption, pixels_) in enumerate(panels):
        sheet.paste(Image.fromarray(pixels_[top:top + crop, left:left + crop]), (i * crop, 24))
        draw.text((i * crop + 4, 4), caption, fill="black")
    out.mkdir(parents=True, exist_ok=True)
    sheet.save(out / "gallery.png")
    print(f"[family] gallery of {name}: {out / 'gallery.png'}")
    return out / "gallery.png"


def main(argv: list[str] | None = None) -> int:
    from cdc.zoo.checkpoint import read_checkpoint_info

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("runs") / "family", help="checkpoints (outside git)")
    names = [m.name for m in FAMILY]
    p.add_argument("--only", nargs="+", metavar="NAME", help=f"members to train and ship (default: all, in order): "
                   f"{', '.join(names)}")
    p.add_argument("--evaluate-only", action="store_true", help="re-measure and re-export trained members")
    p.add_argument("--report", action="store_true", help="only the RD plot and the gallery (docs/family/)")
    p.add_argument("--refit-shipped", action="store_true", help="a member whose training run is not in --work: "
                   "refit the entropy model of its shipped weights instead of training it again")
    args = p.parse_args(argv)
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        p.error(f"--only: no member {', '.join(unknown)} (members: {', '.join(names)})")
    if args.report:  # from the recorded results (classical curves completed): cards, table, plot, gallery
        results = json.loads(RESULTS.read_text())
        results["classical"] = classical_curves(held_out(), results["classical"])
        for entry in results["members"].values():
            entry["heldout"] = [with_classical(row, results["classical"]) for row in entry["heldout"]]
        provenance = json.loads((Path(SHARDS).parent / "provenance.json").read_text())
        for member in (m for m in FAMILY if m.name in results["members"]):
            entry = results["members"][member.name]
            target = REPO / "cdc" / "zoo" / "weights" / f"{member.name}.safetensors"
            target.with_suffix(".md").write_text(card(member, read_checkpoint_info(target), entry["heldout"],
                                                      entry["train_minutes"], provenance,
                                                      entry.get("refit_minutes", 0.0)))
        save_results(results)
        print(plot_family(results, REPO / "docs" / "family"))
        gallery(results, held_out(), REPO / "docs" / "family")
        return 0
    if not (Path(SHARDS) / "manifest.json").is_file():  # also a build interrupted before its manifest: resumed
        from shards.photocorpus import build_corpus

        build_corpus(Path(SHARDS).parent)
    members = [m for m in FAMILY if not args.only or m.name in args.only]
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"members": {}}
    images = held_out()
    curves = None
    for member in members:
        if not args.evaluate_only:
            train(member, args.work, refit_shipped=args.refit_shipped)
        if not (shipped_run(member, args.work) / "config.json").is_file():
            print(f"[family] {member.name}: not trained yet", file=sys.stderr)
            continue
        if not member.shipped:
            continue
        curves = curves or classical_curves(images, results.get("classical"))
        results["classical"] = curves
        results["held_out_photos"] = len(images)
        ship(member, args.work, images, curves, results)
        save_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
