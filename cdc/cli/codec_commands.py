"""``cdc init``, ``compress``, ``decompress``, ``info`` and ``models`` (registered into the ``cdc`` parser)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cdc.argtypes import BATCH, BPP, GAMMA, PIXELS, QUALITY, SEED, STEPS, TILE
from cdc.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    CLIError,
    for_each,
    load_coder,
    output_paths,
    refuse_existing,
    resolve,
    say,
)
from cdc.limits import MAX_DECODE_STEPS, MAX_EFFORT, MAX_PIXELS


def cmd_init(args: argparse.Namespace) -> int:
    """Write a codec checkpoint: an untrained preset, or a copy of a trained model (``--from``)."""
    import torch

    from cdc.config import ConfigError, config_from_dict, load_config
    from cdc.models.codec import CDCCodec
    from cdc.zoo.checkpoint import CheckpointError, load_codec, read_checkpoint_info, save_codec

    try:
        if args.source:
            source = resolve(args.source)
            base = load_codec(source)
            config = config_from_dict(base.config.to_dict(), args.overrides)
            if config.model != base.config.model:
                raise CLIError(f"{args.source}: overrides may not change the architecture (model.*)")
            codec = CDCCodec(config)
            codec.load_state_dict(base.state_dict())
            metadata = {**read_checkpoint_info(source).get("metadata", {}), "init_from": args.source}
        else:
            config = load_config(args.preset, args.overrides)
            torch.manual_seed(args.seed)
            codec = CDCCodec(config)
            metadata = {"trained": False, "init_seed": args.seed}
    except (ConfigError, CheckpointError) as exc:
        raise CLIError(str(exc)) from None
    out = Path(args.output)
    existed = out.exists()
    try:
        path = save_codec(codec, out, metadata=metadata)
    except OSError as exc:  # read-only or full file system: say so, leave nothing behind
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise CLIError(f"{exc.filename or out}: cannot write the checkpoint ({exc.strerror or exc})") from None
    n_params = sum(p.numel() for p in codec.parameters())
    what = f"copy of {args.source}" if args.source else "untrained"
    print(f"{path}: {what} '{config.preset}' codec, {n_params / 1e6:.2f} M parameters")
    return EXIT_OK


def cmd_compress(args: argparse.Namespace) -> int:
    """Compress images to ``.cdc`` files (one line of output per file)."""
    outputs = output_paths(args.images, args.output, ".cdc")
    coder = load_coder(args.model)  # a wrong output or model reference is refused before PyTorch loads
    from tqdm import tqdm

    from cdc.coding.coder import DecodeError
    from cdc.coding.tiling import TilingError, choose_tile
    from cdc.files import atomic_write
    from cdc.images import InputError, load_image
    from cdc.limits import DEFAULT_LIMITS


    def work(i: int, image: str) -> None:
        refuse_existing(outputs[i], args.overwrite)
        try:
            x, notes = load_image(image, max_pixels=args.max_pixels, uint8=True)
            for note in notes:
                say("warning", f"{image}: {note}")
            h, w = x.shape[-2:]
            tile_px = choose_tile(args.tile, h, w)
            encoded = coder.encode(x, steps=args.steps, gamma=args.gamma, seed=args.seed, tile=tile_px,
                                   margin=args.tile_margin, limits=DEFAULT_LIMITS.with_(max_pixels=args.max_pixels),
                                   effort=args.effort, quality=args.quality, bpp=args.bpp)
        except (InputError, DecodeError, TilingError) as exc:
            raise CLIError(str(exc) if isinstance(exc, InputError) else f"{image}: {exc}") from None
        atomic_write(outputs[i], encoded.data, overwrite=args.overwrite)
        tiled = f", {tile_px}-px tiles" if tile_px else ""
        level = "" if encoded.level is None else f", rate level {encoded.level:g}"
        tqdm.write(f"{outputs[i]}: {w}x{h}{tiled}{level}, {len(encoded.data)} bytes, {encoded.bpp:.4f} bpp "
              f"(estimated {encoded.bpp_estimated:.4f})")

    return for_each(args.images, work, "compress")


def cmd_decompress(args: argparse.Namespace) -> int:
    """Decode ``.cdc`` files to 8-bit PNGs; files of equal latent size share U-Net batches (``--batch``)."""
    outputs = output_paths(args.files, args.output, ".png")
    coder = load_coder(args.model, args.device, compile=args.compile)  # refused before PyTorch loads, as above
    from tqdm import tqdm

    from cdc.coding.coder import DecodeError
    from cdc.files import atomic_write
    from cdc.images import encode_png
    from cdc.limits import DEFAULT_LIMITS
    from shards.sources import read_local_file

    limits = DEFAULT_LIMITS.with_(max_pixels=args.max_pixels, max_steps=args.max_steps)
    failed, datas, index = 0, [], []
    for i, file in enumerate(args.files):  # refuse what cannot be written or read before any decoding
        try:
            refuse_existing(outputs[i], args.overwrite)
            datas.append(read_local_file(file))
            index.append(i)
        except CLIError as exc:
            say("error", str(exc))
            failed += 1
        except OSError as exc:
            say("error", f"{file}: cannot read ({exc.strerror or exc})")
            failed += 1
    step_bar = None
    if len(args.files) == 1 and datas:  # one file: a bar over its denoising steps (every tile's)
        try:
            stream = coder.parse(datas[0], args.steps, limits)
            grid = coder.grid(stream)
            total = (stream.steps if args.steps is None else args.steps) * (len(grid) if grid else 1)
            step_bar = tqdm(total=total, desc=Path(args.files[0]).name, unit="step", file=sys.stderr, leave=False)
        except DecodeError:
            pass  # decode_many reports it
    file_bar = tqdm(total=len(datas), desc="decompress", unit="file", disable=True if len(datas) < 2 else None,
                    file=sys.stderr)
    cuda = next(coder.codec.parameters()).device.type == "cuda"
    results = coder.decode_many(datas, args.steps, args.precision, args.batch or (8 if cuda else 1),
                                progress=step_bar.update if step_bar else None, limits=limits)
    for k, image, stream in results:
        i = index[k]
        file_bar.update(1)
        if isinstance(image, DecodeError):
            say("error", f"{args.files[i]}: {image}")
            failed += 1
            continue
        try:
            atomic_write(outputs[i], encode_png(image), overwrite=args.overwrite)
        except OSError as exc:
            say("error", f"{exc.filename or outputs[i]}: {exc.strerror or exc}")
            failed += 1
            continue
        grid = coder.grid(stream)
        tiled = f", {len(grid)} tiles" if grid else ""
        steps = stream.steps if args.steps is None else args.steps
        tqdm.write(f"{outputs[i]}: {stream.width}x{stream.height}{tiled}, {steps} steps, {args.precision}")
    for bar in (step_bar, file_bar):
        if bar is not None:
            bar.close()
    return EXIT_FAILED if failed else EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    """Print bitstream headers as JSON (needs no model)."""
    from cdc.coding.bitstream import Bitstream, BitstreamError
    from shards.sources import read_local_file

    failed = 0
    for file in args.files:
        try:
            data = read_local_file(file)
            stream = Bitstream.from_bytes(data)
        except (OSError, BitstreamError) as exc:
            say("error", f"{file}: {getattr(exc, 'strerror', None) or exc}")
            failed += 1
            continue
        info = {"file": file, "bytes": len(data), "bpp": 8 * len(data) / (stream.height * stream.width)}
        info.update(stream.header_dict())
        print(json.dumps(info, indent=2))
    return EXIT_FAILED if failed else EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    """Print the shipped models (with their default decode) and the registered ones with their metrics."""
    from cdc.registry.catalog import RegistryError, evaluated_datasets, list_versions, table
    from cdc.zoo.pretrained import shipped_table

    print(shipped_table())
    print()
    try:
        versions = list_versions()
    except RegistryError as exc:
        raise CLIError(str(exc)) from None
    if not versions:
        print("no registered cdc-* models (train a grid: prefect deployment run train-grid/local)")
        return EXIT_OK
    datasets = evaluated_datasets(versions)
    if args.dataset is not None and args.dataset not in datasets:
        raise CLIError(f"no registered model evaluated on {args.dataset} (datasets with evaluations: "
                       f"{', '.join(datasets) or 'none'})")
    dataset = args.dataset or (datasets[0] if datasets else "")
    print(table(versions, dataset))
    if args.dataset is None and len(datasets) > 1:
        print(f"\nmetrics on {dataset}; also evaluated on {', '.join(datasets[1:])} (--dataset NAME)")
    return EXIT_OK


def _coding_parser(sub: argparse._SubParsersAction, name: str, about: str, inputs: str,
                   one_output: str) -> argparse.ArgumentParser:
    """A compress or decompress parser: its inputs, the model and the output."""
    p = sub.add_parser(name, help=about)
    p.add_argument(inputs, nargs="+")
    p.add_argument("-m", "--model", required=True, help="checkpoint, models:/NAME@ALIAS, or best:bpp<=X,...")
    p.add_argument("-o", "--output", required=True, help=f"output directory (or {one_output})")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return p


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the codec subcommands on the ``cdc`` parser."""
    p = sub.add_parser("init", help="write an untrained codec checkpoint, or copy a trained one (--from)")
    p.add_argument("--preset", default="tiny", help="tiny | small | paper | path to a YAML config")
    p.add_argument("--from", dest="source", help="start from a trained model (path, shipped name e.g. small-base, "
                   "models:/...) instead of random weights; overrides may change decode settings, not model.*")
    p.add_argument("-o", "--output", required=True, help="checkpoint directory or .safetensors file")
    p.add_argument("--seed", type=SEED, default=0, help="weight-initialisation seed")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.unet_dim=32")
    p.set_defaults(func=cmd_init)

    p = _coding_parser(sub, "compress", "compress images to .cdc files", "images", ".cdc file for one image")
    p.add_argument("--steps", type=STEPS, help="DDIM steps recorded for decoding (default: the model's default decode, "
                   "cdc models list)")
    p.add_argument("--gamma", type=GAMMA, help="start-noise scale recorded for decoding, in [0, 65.535]; "
                   "0 = deterministic (default: the model's default decode)")
    p.add_argument("--seed", type=SEED, help="start-noise seed recorded for decoding, in [0, 2**63)")
    p.add_argument("--effort", type=int, choices=range(MAX_EFFORT + 1), default=0,
                   help="encoder effort: refine the latent for each image (fewer bits at equal quality, slower "
                        "encoding; same format and decode); 0 = off (default)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--quality", type=QUALITY, help="a variable-rate model's quality, 0 (its lowest rate) to 100 "
                      "(its highest); default 75 (the model's default quality, linear in its rate level)")
    rate.add_argument("--bpp", type=BPP, help="a variable-rate model's target rate: the highest quality whose file "
                      "has at most this many bits per pixel (a few encodes per image)")
    p.add_argument("--max-pixels", type=PIXELS, default=MAX_PIXELS,
                   help=f"refuse larger images (default {MAX_PIXELS})")
    p.add_argument("--tile", type=TILE, default="auto",
                   help="code tile by tile, memory bounded by the tile: auto (768-px tiles above 2.4 MP), off "
                        "(whole image, up to 4096x4096), or a tile side in pixels (multiple of 64)")
    p.add_argument("--tile-margin", type=int, choices=(0, 16, 32, 48, 64),
                   help="tile overlap on each side in pixels: encoder context and decoder blend band "
                        "(default 64, or half of a smaller tile)")
    p.set_defaults(func=cmd_compress)

    p = _coding_parser(sub, "decompress", "decode .cdc files to PNG", "files", ".png file for one input")
    p.add_argument("--steps", type=STEPS, help="override the DDIM steps stored in the file")
    p.add_argument("--max-steps", type=STEPS, default=MAX_DECODE_STEPS,
                   help="refuse files that ask for more DDIM steps (a file sets the decoder's cost; "
                        f"default {MAX_DECODE_STEPS}; --steps overrides the file)")
    p.add_argument("--max-pixels", type=PIXELS, default=MAX_PIXELS,
                   help=f"refuse files whose header claims more pixels (default {MAX_PIXELS}; "
                        "untiled files: at most 4096x4096)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="U-Net precision")
    p.add_argument("--batch", type=BATCH,
                   help="decode up to N files of equal latent size and decode settings together (default: 8 on "
                        "a GPU, 1 on a CPU, where larger batches ran slower: benchmarks/decode.py)")
    p.add_argument("--device", default="cpu",
                   help="cpu (default), cuda, cuda:N or auto (cuda when available); GPU decoding is tested only "
                        "where CUDA is present (tests/test_codec.py), not yet on a GPU")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the U-Net (CUDA graphs on a GPU): faster steps after a one-off compile "
                        "of tens of seconds per image size; pays off for many steps or files")
    p.set_defaults(func=cmd_decompress)

    p = sub.add_parser("info", help="print a .cdc header as JSON (no model needed)")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("models", help="the shipped models and the MLflow model registry")
    p.add_argument("action", choices=("list",))
    p.add_argument("--dataset", help="which evaluation's metrics to show (default: the one the models were "
                   "evaluated on; the first, named, when several)")
    p.set_defaults(func=cmd_models)
