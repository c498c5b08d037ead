"""``cdc eval``, ``cdc plot`` and ``cdc bdrate`` (registered into the ``cdc`` command line).

    cdc eval MODEL... --dataset div2k|kodak|folder [--root DIR] [--download] --protocol cdc768|full \\
             --steps 17[,65] -o OUT
    cdc eval --baseline jpeg,webp,avif,jxl,jp2,heic[,zoo:mbt2018-mean] --dataset kodak -o OUT \\
             [--metrics default|report|all|psnr-rgb,ms-ssim-rgb,stlpips-alex,...] [--no-cache]
    cdc plot OUT/*.json [-o OUT/plots] [--gallery]
    cdc bdrate ANCHOR.json OTHER.json... [--metrics psnr-rgb,stlpips-vgg]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cdc.argtypes import COUNT, GAMMA, SEED
from cdc.cli.common import CLIError, load_coder, say


def _csv_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: steps must be integers >= 1")
    return values


def _metrics(text: str) -> tuple[str, ...]:
    from cdc.evaluation.metrics import parse_metrics

    try:
        return parse_metrics(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate models and baselines; print a short summary per curve."""
    from cdc.evaluation.datasets import DatasetError
    from cdc.evaluation.evaluate import EvalSettings, evaluate_all
    from cdc.evaluation.rd import load

    if not args.models and not args.baseline:
        raise CLIError("nothing to evaluate: give MODEL checkpoints and/or --baseline")
    settings = EvalSettings(dataset=args.dataset, root=args.root, download=args.download, protocol=args.protocol,
                            steps=args.steps, gamma=args.gamma, seed=args.seed, precision=args.precision,
                            device=args.device, limit=args.limit, save_recon=args.save_recon,
                            metrics=args.metrics, cache=not args.no_cache)
    coders = [load_coder(m, args.device) for m in args.models]
    baselines = [b for b in (_baseline(n) for n in filter(None, (args.baseline or "").split(","))) if b]
    try:
        written = evaluate_all(coders, baselines, settings, Path(args.output), warn=lambda m: say("warning", m))
    except DatasetError as exc:
        raise CLIError(str(exc)) from None
    for path in written:
        data = load(path)
        shown = {k: [round(v, 4) for v in vals] for k, vals in data["results"].items()
                 if k in ("bpp", "psnr-rgb", "ms-ssim-rgb", "stlpips-vgg", "fd-stlpips-vgg", "fid")}
        print(f"{path}: {data['name']}: {json.dumps(shown)}")
    return 0


def _baseline(name: str):
    from cdc.evaluation.baselines import build_baseline, zoo_baseline

    try:
        return zoo_baseline(name[4:]) if name.startswith("zoo:") else build_baseline(name)
    except FileNotFoundError as exc:
        say("warning", f"baseline {name} skipped: {exc}")
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    return None


def cmd_plot(args: argparse.Namespace) -> int:
    """RD plots (one PNG per metric) and optionally the gallery."""
    from cdc.evaluation.rd import gallery, plot, results_paths

    out = Path(args.output or Path(args.results[0]).parent / "plots")
    try:
        results = results_paths(args.results)
        for path in plot(results, out):
            print(path)
        if args.gallery:
            print(gallery(results, out / "gallery.png", target_bpp=args.bpp))
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    return 0


def cmd_bdrate(args: argparse.Namespace) -> int:
    """Print a BD-rate table against the anchor curve."""
    from cdc.evaluation.rd import bd_table, results_paths

    try:
        results = [p for p in results_paths(args.results) if Path(p).resolve() != Path(args.anchor).resolve()]
        text, _ = bd_table(args.anchor, results, args.metrics.split(",") if args.metrics else None)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    print(text)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``eval``, ``plot`` and ``bdrate`` on the ``cdc`` parser."""
    p = sub.add_parser("eval", help="evaluate CDC models and/or classical baselines on a dataset")
    p.add_argument("models", nargs="*", help="codec checkpoints (one RD point each)")
    p.add_argument("--baseline", help="comma list: jpeg,webp,avif,jxl,jp2,heic,zoo:<compressai arch>")
    p.add_argument("--dataset", default="kodak", choices=("div2k", "kodak", "folder", "shards"),
                   help="shards: the held-out val split of the shard build given by --root")
    p.add_argument("--root", help="dataset folder (else the cache, see --download)")
    p.add_argument("--download", action="store_true", help="download a missing dataset into the cache")
    p.add_argument("--protocol", default="full", choices=("cdc768", "full"))
    p.add_argument("--steps", type=_csv_ints, default=(None,),
                   help="DDIM steps, e.g. 1,2,4,8,17,33,65,129 (one curve each; default: each model's own decode)")
    p.add_argument("--gamma", type=GAMMA, help="start-noise scale (default: each model's own decode)")
    p.add_argument("--seed", type=SEED, help="start-noise seed (default: model config)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit", type=COUNT, default=0, help="only the first N images")
    p.add_argument("--save-recon", type=COUNT, default=2, help="reconstructions kept per point (for galleries)")
    p.add_argument("--metrics", type=_metrics, default="default",
                   help="comma list of metrics, or default (psnr-rgb,ms-ssim-rgb,stlpips-alex), report (default + "
                        "stlpips-vgg,fd-stlpips-vgg: what the grid records) or all")
    p.add_argument("--no-cache", action="store_true",
                   help="measure classical baselines again instead of reusing $CDC_EVAL_CACHE (~/.cache/cdc/baselines)")
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plot", help="RD plots (one PNG per metric) and a reconstruction gallery")
    p.add_argument("results", nargs="+")
    p.add_argument("-o", "--output", help="folder (default: <results folder>/plots)")
    p.add_argument("--gallery", action="store_true")
    p.add_argument("--bpp", type=float, help="gallery target bpp (default: each curve's median)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("bdrate", help="BD-rate table of curves against an anchor curve")
    p.add_argument("anchor")
    p.add_argument("results", nargs="+")
    p.add_argument("--metrics", help="comma list (default: every quality metric of the anchor)")
    p.set_defaults(func=cmd_bdrate)
