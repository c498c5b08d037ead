"""``python -m shards build|verify|stats``: the shard builder without Prefect."""

from __future__ import annotations

import argparse
import json
import os
import sys

from shards.build import build, process_pool_map
from shards.locks import DirectoryBusyError
from shards.manifest import Manifest, is_remote
from shards.process import POLICIES, BuildConfig
from shards.sources import SourceError
from shards.verify import verify


def _size(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    clean = text.strip().lower().rstrip("b")
    try:
        value = int(float(clean[:-1]) * units[clean[-1]]) if clean and clean[-1] in units else int(clean)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 512M") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be positive")
    return value


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} is below {low}")
        return value
    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1)")
    return value


POSITIVE = _int_at_least(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shards", description="Image corpora to WebDataset shards.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build or resume shards from directories, globs, list files or URLs")
    b.add_argument("sources", nargs="+")
    b.add_argument("-o", "--output", required=True,
                   help="output directory (shards + manifest.json), or an fsspec URL such as s3://bucket/prefix")
    b.add_argument("--work-dir", help="with a URL output: where the local build runs "
                   "(default ~/.cache/cdc/shard-builds/<hash of the URL>; a rerun resumes there)")
    b.add_argument("--max-count", type=POSITIVE, default=1000, help="samples per shard")
    b.add_argument("--max-bytes", type=_size, default=512 * 2**20, help="bytes per shard, e.g. 512M")
    b.add_argument("--split-val", type=_fraction, default=0.0, help="fraction of images for the val split")
    b.add_argument("--min-side", type=POSITIVE, default=64, help="quarantine images with a shorter side")
    b.add_argument("--max-pixels", type=POSITIVE, default=16384 * 16384, help="decompression-bomb guard")
    b.add_argument("--policy", choices=POLICIES, default="keep", help="how sample images are stored")
    b.add_argument("--resize-shorter", type=POSITIVE, help="resize so the shorter side has this many pixels")
    b.add_argument("--max-shorter", type=POSITIVE, help="downscale images whose shorter side is larger (no upscaling)")
    b.add_argument("--patch-size", type=POSITIVE, help="cut non-overlapping square patches")
    b.add_argument("--chunk-size", type=POSITIVE, default=256, help="inputs per processing task")
    b.add_argument("--workers", type=POSITIVE, default=os.cpu_count() or 1, help="processes")
    b.add_argument("--keep-staging", action="store_true", help="keep .staging/ after a successful build")
    v = sub.add_parser("verify", help="re-hash every shard and decode every sample")
    v.add_argument("manifest")
    s = sub.add_parser("stats", help="print a manifest's totals")
    s.add_argument("manifest")
    args = parser.parse_args(argv)

    try:
        if args.command == "build":
            if not is_remote(args.output) and os.path.exists(args.output) and not os.path.isdir(args.output):
                raise ValueError(f"{args.output}: exists and is not a directory (-o names the output directory)")
            cfg = BuildConfig(max_count=args.max_count, max_bytes=args.max_bytes, split_val=args.split_val,
                              min_side=args.min_side, max_pixels=args.max_pixels, policy=args.policy,
                              resize_shorter=args.resize_shorter, max_shorter=args.max_shorter,
                              patch_size=args.patch_size,
                              chunk_size=args.chunk_size)
            manifest = build(args.sources, args.output, cfg, mapper=process_pool_map(args.workers), progress=True,
                             keep_staging=args.keep_staging, work_dir=args.work_dir)
            print(json.dumps(manifest.totals()))
            for q in manifest.quarantine:
                print(f"quarantined: {q['source']}: {q['reason']}", file=sys.stderr)
            return 0
        if args.command == "verify":
            from tqdm import tqdm

            manifest = Manifest.load(args.manifest)
            with tqdm(total=len(manifest.shards), desc="verify", unit="shard") as bar:
                problems = verify(args.manifest, progress=bar.update)
            for p in problems:
                print(f"shards: error: {p}", file=sys.stderr)
            print(f"{len(manifest.shards)} shards, {manifest.samples()} samples: "
                  f"{'OK' if not problems else f'{len(problems)} problem(s)'}")
            return 1 if problems else 0
        manifest = Manifest.load(args.manifest)
        print(json.dumps({"fingerprint": manifest.fingerprint, **manifest.totals()}, indent=2))
        return 0
    except (SourceError, ValueError, DirectoryBusyError) as exc:
        print(f"shards: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"shards: error: {exc.filename or args.command}: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
