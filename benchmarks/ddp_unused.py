"""DDP's unused-parameter search: the joint-phase step time with and without it, side by side.

The fast-start recipe's first phases leave parts of the codec without gradients, which DDP only
tolerates with ``find_unused_parameters=True``: an extra traversal of the autograd graph at every
step. The trainer drops the search when the joint phase begins (``cdc.training.distributed.stop_unused_search``);
before, every step of a run from scratch paid for it. This runs two gloo processes on this CPU
and times the same joint-phase steps (same weights, same batches) with both wrappers, alternating
rounds so that a busy machine slows both alike:

    python benchmarks/ddp_unused.py [--presets tiny,small] [--steps 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import photo, print_table, write_json
from torch.nn.parallel import DistributedDataParallel

from cdc.config import load_config
from cdc.models.codec import CDCCodec
from cdc.training.losses import RateDistortionPerceptionLoss


def _worker(rank: int, world: int, port: int, preset: str, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg = load_config(preset, [f"train.crop={args.crop}"])
    torch.manual_seed(0)
    codec = CDCCodec(cfg)
    loss_fn = RateDistortionPerceptionLoss(cfg.loss, codec.diffusion)
    image = photo(args.crop * 4, args.crop * 2, name=("china", "flower")[rank]) * 2 - 1
    crops = [image[..., y:y + args.crop, x:x + args.crop] for y in (0, args.crop) for x in range(0, 4 * args.crop,
                                                                                                  args.crop)]
    batch = torch.cat(crops[: args.batch])
    optimizer = torch.optim.Adam(codec.parameters(), lr=1e-5)
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for search in (True, False):
            # a fresh wrapper per round, as the trainer makes one when the joint phase begins
            model = DistributedDataParallel(codec, find_unused_parameters=search)
            for i in range(args.steps + 1):  # the first step builds the buckets: not timed
                if i == 1:
                    dist.barrier()
                    start = time.perf_counter()
                out_ = model(batch, phase="joint")
                (loss_fn(out_, num_pixels=args.crop * args.crop)["loss"] + out_["aux_loss"]).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            dist.barrier()
            times[search].append((time.perf_counter() - start) / args.steps)
            model._remove_autograd_hooks()
    if rank == 0:
        torch.save(times, out)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small", help="comma-separated presets (tiny, small, paper)")
    parser.add_argument("--crop", type=int, default=128, help="training crop (pixels)")
    parser.add_argument("--batch", type=int, default=4, choices=range(1, 9), metavar="1-8",
                        help="images per process and step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per setting")
    args = parser.parse_args()
    presets = args.presets.split(",")
    if args.steps < 1 or args.rounds < 1 or not set(presets) <= {"tiny", "small", "paper"}:
        parser.error("--steps and --rounds must be >= 1; --presets from tiny, small, paper")
    rows = []
    for preset in presets:
        with tempfile.TemporaryDirectory() as tmp:
            out = f"{tmp}/times.pt"
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            mp.spawn(_worker, args=(2, port, preset, args, out), nprocs=2, join=True)
            times = torch.load(out)
        plain, search = statistics.median(times[False]), statistics.median(times[True])
        rows.append({"preset": preset, "search_s": search, "plain_s": plain, "cost_pct": 100 * (search / plain - 1),
                     "rounds": "; ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(times[True], times[False], strict=True))})
    print(f"DDP over gloo, 2 processes x 1 thread, batch {args.batch} x {args.crop}², joint phase, "
          f"median of {args.rounds} rounds x {args.steps} steps")
    table = print_table(rows, [("preset", "preset"), ("search_s", "s / step, find_unused_parameters=True"),
                               ("plain_s", "s / step, False"), ("cost_pct", "cost of the search %"),
                               ("rounds", "per round (True/False)")])
    write_json("ddp-unused", {"settings": vars(args), "rows": rows, "table": table})


if __name__ == "__main__":
    main()
