"""Train a CDC codec: the warm-up or one (lambda, rho) cell of the grid.

The command line of a training run (the loop is ``cdc.training.trainer``). The same module runs under
plain ``python -m`` (one process) and under ``accelerate launch -m`` (DDP or DeepSpeed, one to many
nodes); ``python cdc/train.py`` re-executes itself as ``python -m cdc.train``::

    # CPU, one process
    python -m cdc.train --preset tiny --shards runs/shards --output-dir runs/tiny --max-steps 200 --lmbda 0.01 --rho 0
    # CPU, 2 gloo processes (accelerate's --cpu launcher would start only one)
    accelerate launch --config_file infra/accelerate/cpu.yaml -m cdc.train --preset small ...
    # one GPU (bf16 autocast for the U-Net; the entropy model stays fp32)
    accelerate launch --config_file infra/accelerate/single-gpu.yaml -m cdc.train --preset paper ...
    # one node x 8 GPUs (DDP)
    accelerate launch --config_file infra/accelerate/multi-gpu.yaml -m cdc.train --preset paper ...
    # N nodes x 8 GPUs: run on every node, R = 0..N-1 (infra/slurm/train.sbatch does this)
    accelerate launch --config_file infra/accelerate/multi-node.yaml --num_machines N --num_processes $((8*N)) \
        --machine_rank R --main_process_ip HEAD --main_process_port 29500 -m cdc.train --preset paper ...
    # DeepSpeed ZeRO-2
    accelerate launch --config_file infra/accelerate/deepspeed-zero2.yaml -m cdc.train --preset paper ...

A run is one ``cdc.training.run_spec.RunSpec``: the flags below build it, or ``--job FILE`` reads it
from JSON (what the grid's launchers pass, with ``--world-size N``: the run refuses to start with
another number of processes, e.g. under accelerate's one-process ``--cpu`` launcher).

Recipe: from scratch, the fast-start recipe of the presets (an MSE autoencoder phase, the decoder
on the frozen latent, then joint, with the U-Net refining the autoencoder's reconstruction; see
``cdc.training.phases.training_phase`` and the README); each grid cell is fine-tuned with ``--init-from``
a trained model (a warm-up, or the shipped ``small-base``). ``--recipe paper`` trains the official
way (it needs a long warm-up at ``--lmbda 1e-6``). ``--resume latest`` continues bit-exactly after a
crash or preemption (SIGTERM saves a checkpoint and exits 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from pathlib import Path

from cdc.allocator import keep_freed_memory
from cdc.argtypes import COUNT, LAMBDA, RHO, TRAIN_STEPS
from cdc.config import RECIPES, ConfigError
from cdc.training.outputs import check_output_dir
from cdc.training.run_spec import RunSpec, SpecError
from cdc.zoo.layout import CheckpointError

OVERRIDE = re.compile(r"^(model|diffusion|sampler|loss|train)\.\w+=")
"""A config override (``train.lr=1e-4``) among the arguments."""
SPEC_FLAGS = ("preset", "recipe", "shards", "output_dir", "max_steps", "lmbda", "rho", "prediction", "init_from",
              "resume", "overwrite", "experiment", "run_name", "tag", "overrides")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags of ``cdc/train.py``: ``--job FILE`` or the flags that make a spec."""
    p = argparse.ArgumentParser(prog="train.py", description=__doc__.splitlines()[0])
    p.add_argument("--job", type=Path,
                   help="a run spec (JSON, see cdc/training/run_spec.py) instead of the flags below")
    p.add_argument("--world-size", type=COUNT, help="processes the launch asked for (launchers pass it); "
                   "the run refuses to start with another number")
    p.add_argument("--preset", help="tiny (default) | small | paper, or a YAML config file")
    p.add_argument("--recipe", choices=tuple(RECIPES),
                   help="fast (default: autoencoder first, residual diffusion) or paper (the official recipe)")
    p.add_argument("--shards", nargs="+", help="manifest.json, its directory, or shard URLs (required without --job)")
    p.add_argument("--output-dir", help="checkpoints and the exported model (required without --job)")
    p.add_argument("--max-steps", type=TRAIN_STEPS, help="optimisation steps (train.max_steps)")
    p.add_argument("--lmbda", type=LAMBDA, help="rate weight lambda (loss.lmbda)")
    p.add_argument("--rho", type=RHO, help="perceptual weight rho in [0, 1] (loss.rho)")
    p.add_argument("--prediction", choices=("sample", "epsilon", "v"), help="diffusion.prediction")
    p.add_argument("--init-from", help="model to start from: checkpoint, shipped name (e.g. small-base), "
                   "models:/NAME@ALIAS or best:bpp<=X")
    p.add_argument("--resume", help="'latest' or a checkpoint directory")
    p.add_argument("--overwrite", action="store_true", help="replace a model already exported in --output-dir")
    p.add_argument("--experiment", help="MLflow experiment (default cdc-train)")
    p.add_argument("--run-name", help="MLflow run name")
    p.add_argument("--tag", action="append", default=[], help="MLflow run tag key=value (repeatable)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.lr=1e-4")
    # overrides may stand anywhere, even after a flag that takes several values (--shards A B train.lr=1e-4)
    argv = sys.argv[1:] if argv is None else list(argv)
    overrides = [a for a in argv if OVERRIDE.match(a)]
    args = p.parse_args([a for a in argv if not OVERRIDE.match(a)])
    args.overrides = [*args.overrides, *overrides]
    given = [f for f in SPEC_FLAGS if getattr(args, f) not in (None, False, [])]
    if args.job and given:
        p.error(f"--job holds the whole run; drop {', '.join('--' + f.replace('_', '-') for f in given)}")
    if not args.job and not (args.shards and args.output_dir):
        p.error("the following arguments are required: --shards, --output-dir (or --job FILE)")
    if any("=" not in t for t in args.tag):
        p.error("--tag takes key=value")
    return args


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    """The run spec of the command line: ``--job`` read from its file, or the flags."""
    if args.job:
        spec = RunSpec.load(args.job)
        return spec if args.world_size is None else dataclasses.replace(spec, world_size=args.world_size)
    flags = {"train.max_steps": args.max_steps, "loss.lmbda": args.lmbda, "loss.rho": args.rho,
             "diffusion.prediction": args.prediction}
    return RunSpec(shards=tuple(args.shards), output_dir=args.output_dir, preset=args.preset or "tiny",
                   recipe=args.recipe or "fast", settings={k: v for k, v in flags.items() if v is not None},
                   overrides=tuple(args.overrides), init_from=args.init_from, resume=args.resume,
                   overwrite=args.overwrite, experiment=args.experiment or "cdc-train", run_name=args.run_name,
                   tags=dict(t.split("=", 1) for t in args.tag), world_size=args.world_size)


def _refuse(exc: Exception) -> int:
    """Print ``exc`` as the one error line a user can act on; returns the exit code 2."""
    # a DataLoader worker's error arrives wrapped with its traceback: keep its last line
    line = str(exc).strip().splitlines()[-1] if str(exc).strip() else exc.__class__.__name__
    print(f"cdc train: error: {line.removeprefix('shards.reader.ShardError: ')}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Parse, train, print the exported model; 2 with one error line for anything the user can fix.
    A preempted run (SIGTERM/SIGINT) ends the process itself with 0 once its checkpoint is saved."""
    args = parse_args(argv)
    try:  # the mistakes a user makes most, refused before PyTorch loads (seconds on a small machine)
        spec = spec_from_args(args)
        spec.config()
        check_output_dir(Path(spec.output_dir), spec.resume, spec.overwrite)
    except (SpecError, ConfigError, CheckpointError) as exc:
        return _refuse(exc)
    from cdc.training.distributed import prepare_environment  # torch: only after the file-mode re-exec below

    prepare_environment()  # before accelerate, deepspeed and compressai are imported
    keep_freed_memory()
    from cdc.training.trainer import TRAINING_ERRORS, train

    try:
        summary = train(spec)
    except (SpecError, *TRAINING_ERRORS) as exc:
        return _refuse(exc)
    if summary.get("preempted"):
        # The checkpoint and the tracker's last words are written: leave before torch's C++ static
        # destructors, which take seconds that a scheduler's grace period (SIGTERM, then SIGKILL) may not give.
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(0)
    if summary.get("model"):
        print(f"model: {summary['model']} (fingerprint {summary['fingerprint'][:12]})")
    return 0


if __name__ == "__main__":
    if not __package__:  # run as a file: cdc/ is sys.path[0] and would shadow top-level modules
        os.execv(sys.executable, [sys.executable, "-m", "cdc.train", *sys.argv[1:]])
    sys.exit(main())
