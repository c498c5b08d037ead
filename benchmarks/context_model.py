"""Checkerboard context (``model.entropy_model=checkerboard``) on the shipped family: bits saved at
equal PSNR through real bitstreams, and entropy decode time, beside the members' own hyperprior.

Every shipped ρ = 0 member keeps its transforms and decoder; only the entropy model changes, in
three variants coded and decoded side by side in one process:

* ``hyperprior`` — the member as shipped;
* ``hyperprior refit`` — its hyperprior fitted again with the context's budget (Adam steps, learning
  rate, the same crops): the control, so that a gain is the context's and not the extra fitting;
* ``checkerboard`` — ``CheckerboardHyperprior`` started from the member's hyperprior (it codes exactly
  as the member does before the fit) and fitted with that budget.

Fits are rate-only on the frozen latents of 256² training crops (``entropy.py``'s ``fit``). Per
variant, the members' mean (bpp, PSNR) points form one curve, decoded with the members' default
decode (1 step, γ = 0); BD-rate is against the shipped curve. Photos: the held-out (``val``) split
of a shard build (``--shards``) and the held-out packages (``shards.heldout``: scikit-learn's and
pyiqa's photos, packages none of the training photos comes from).

    python benchmarks/context_model.py --shards runs/photos/shards [--steps 3000] [--batches 128] [--limit 0]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch
from common import photo_sets, print_table, write_json
from entropy import CROP, fit, training_latents

from cdc.argtypes import number
from cdc.coding.coder import Coder
from cdc.config import with_updates
from cdc.evaluation.metrics import psnr
from cdc.evaluation.rd import bd_rate
from cdc.images import from_uint8, to_uint8
from cdc.models.codec import CDCCodec
from cdc.training.trainer import init_weights
from cdc.zoo.checkpoint import load_codec
from cdc.zoo.pretrained import available, family

VARIANTS = ("hyperprior", "hyperprior refit", "checkerboard")
REFERENCE_PIXELS = 768 * 512


def with_checkerboard(name: str, codec: CDCCodec) -> CDCCodec:
    """A copy of shipped ``name`` (loaded as ``codec``) whose entropy model is a checkerboard context
    started from its hyperprior (what ``cdc/train.py --init-from NAME model.entropy_model=checkerboard`` does)."""
    out = CDCCodec(with_updates(codec.config, model={"entropy_model": "checkerboard"}))
    init_weights(out, name)
    return out.eval()


def variants(name: str, codec: CDCCodec, latents: list[torch.Tensor], steps: int, lr: float) -> dict[str, CDCCodec]:
    """The three entropy models of member ``name`` (module docstring), fitted where they are to be."""
    refit, context = copy.deepcopy(codec), with_checkerboard(name, codec)
    for model in (refit, context):
        torch.manual_seed(0)
        start = time.perf_counter()
        fit(model.entropy, latents, 1.0, steps, CROP * CROP, lr)
        print(f"  fitted {model.entropy.name} in {time.perf_counter() - start:.0f} s", flush=True)
    return dict(zip(VARIANTS, (codec, refit, context), strict=True))


@torch.no_grad()
def measure(codec: CDCCodec, photos: list[np.ndarray]) -> dict:
    """Mean real bpp and PSNR at the default decode (1 step, γ 0), and the entropy decode seconds per
    768x512 photo (the rANS strings to ŷ: the part the context model changes)."""
    coder = Coder(codec)
    bpp, quality, entropy_s = [], [], []
    for img in photos:
        pixels = img.shape[0] * img.shape[1]
        x = from_uint8(img)
        data = coder.encode(x, steps=1, gamma=0.0).data
        bpp.append(8 * len(data) / pixels)
        quality.append(psnr(img, to_uint8(coder.decode(data)[0])))
        stream = coder.parse(data)
        start = time.perf_counter()
        codec.entropy.decompress(stream.strings, stream.latent_hw)
        entropy_s.append((time.perf_counter() - start) * REFERENCE_PIXELS / pixels)
    return {"bpp": float(np.mean(bpp)), "psnr": float(np.mean(quality)), "entropy_decode_s": float(np.mean(entropy_s))}


def summarise(rows: list[dict]) -> list[dict]:
    """Per variant: BD-rate (PSNR) over the members against the shipped curve and against the refit
    control (the context's own gain), and the mean entropy decode seconds."""
    def curve(variant: str) -> dict:
        points = sorted((r["bpp"], r["psnr"]) for r in rows if r["variant"] == variant)
        return {"results": {"bpp": [p[0] for p in points], "psnr-rgb": [p[1] for p in points]}}

    def versus(base: str, variant: str) -> float | str:
        return "" if variant == base else bd_rate(curve(base), curve(variant))

    return [{"variant": v, "bd_rate": versus(VARIANTS[0], v) or 0.0, "bd_rate_vs_refit": versus(VARIANTS[1], v),
             "entropy_decode_s": float(np.mean([r["entropy_decode_s"] for r in rows if r["variant"] == v]))}
            for v in VARIANTS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", required=True, help="a shard build: its train split feeds the fits, its val "
                        "split is held out (e.g. runs/photos/shards, the family's training corpus)")
    parser.add_argument("--steps", type=number(int, 1, 10**6, "an integer"), default=3000, help="Adam steps per fit")
    parser.add_argument("--lr", type=number(float, 1e-7, 1.0, "a number"), default=1e-4, help="peak learning rate")
    parser.add_argument("--batches", type=number(int, 1, 10**4, "an integer"), default=128,
                        help="training latent batches (4 x 256^2 crops each)")
    parser.add_argument("--limit", type=number(int, 0, 10**6, "an integer"), default=0, help="held-out photos (0: all)")
    parser.add_argument("--members", help="comma-separated shipped members (default: every ρ = 0 member)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    distortion = sorted((n for n, (_, rho) in family().items() if rho == 0), key=lambda n: family()[n][0])
    members = args.members.split(",") if args.members else distortion
    if set(members) - set(distortion):
        parser.error(f"--members: no distortion member {', '.join(sorted(set(members) - set(distortion)))} "
                     f"(members: {', '.join(distortion)})")
    if not (Path(args.shards) / "manifest.json").is_file():
        parser.error(f"--shards: {args.shards}: no shard manifest (build one: python -m shards.photocorpus)")
    sets = photo_sets(args.shards, args.limit)
    rows = []
    for name in members:
        print(name, flush=True)
        codec = load_codec(available()[name]).eval()
        torch.manual_seed(0)
        latents = training_latents(codec, args.shards, args.batches)
        for variant, model in variants(name, codec, latents, args.steps, args.lr).items():
            for label, photos in sets.items():
                rows.append({"set": label, "member": name, "variant": variant, **measure(model, photos)})
                print(rows[-1], flush=True)
    summary = [{"photos": f"{label} ({len(photos)})", **s}
               for label, photos in sets.items() for s in summarise([r for r in rows if r["set"] == label])]
    print(f"\n{len(members)} members ({', '.join(members)}), {args.steps} fit steps at lr {args.lr}")
    points = print_table(rows, [("set", "photos"), ("member", "member"), ("variant", "entropy model"),
                                ("bpp", "bpp"), ("psnr", "PSNR dB")])
    table = print_table(summary, [("photos", "photos"), ("variant", "entropy model"),
                                  ("bd_rate", "BD-rate % (PSNR)"), ("bd_rate_vs_refit", "vs refit %"),
                                  ("entropy_decode_s", "entropy decode s / 768x512")])
    write_json("context-model", {"args": vars(args), "members": members, "rows": rows, "points": points,
                                 "summary": summary, "table": table,
                                 "goal": "ship only if the checkerboard saves >= 4 % (BD-rate <= -4 %)"})


if __name__ == "__main__":
    main()
