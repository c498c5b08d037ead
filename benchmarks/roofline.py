"""How much MFU can the paper training step reach on an H100? Ceilings from a roofline of its operators.

One joint-phase training step of the ``paper`` preset (forward and backward, rho 0) runs here on the
CPU under a dispatch mode. The mode records every ATen operator with its counted FLOPs and the bytes
it must move at least once: its inputs and outputs, in bf16 as under autocast. Views move nothing
and are skipped. Each operator is then priced on an H100: the longer of its FLOPs at the bf16 peak
and its bytes at the HBM bandwidth. The optimizer step is left out, which only raises the ceilings.
The ceilings, from optimistic to realistic:

* ideal kernels: every convolution and matrix multiply at its roofline, everything else free;
* convolutions at their measured rate: the rate the H100 profile measured for this step's
  convolution and GEMM kernels (``results/train-profile-cuda.json``: eager bf16, batch 4),
  everything else free;
* ideal kernels plus the rest once over memory: the other operators (norms, elementwise work,
  casts) each read their inputs and write their outputs once at full bandwidth. ``torch.compile``
  fuses many of them, so it does better than this row, but only on that memory traffic.

    python benchmarks/roofline.py [--preset paper] [--batch 4] [--crop 256]
"""

from __future__ import annotations

import argparse
import json

import torch
from common import RESULTS, print_table, write_json
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry
from train import H100_BF16_DENSE, training_codec

H100_HBM = 3.35e12  # bytes/s, SXM5 datasheet
BF16_BYTES = 2
MEASURED_MFU_PCT = 15.1  # results/train-paths-cuda.json: the fast path at batch 32
PROFILED_GFLOP_PER_IMAGE = 439.9  # the step the H100 profile ran (before the attention's re-association)


class _Ledger(TorchDispatchMode):
    """Per operator: counted FLOPs and bytes in and out (bf16), views excluded."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, float, float]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view or func._overloadpacket is torch.ops.aten._unsafe_view:  # no data moves
            return out
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        packet = func._overloadpacket
        flops = flop_registry[packet](*args, **kwargs, out_val=out) if packet in flop_registry else 0
        moved = sum(t.numel() for t in inputs + outputs) * BF16_BYTES
        self.ops.append((str(packet), float(flops), float(moved)))
        return out


def step_ledger(preset: str, batch: int, crop: int) -> list[tuple[str, float, float]]:
    """(operator, FLOPs, bytes) of one training step at ``batch`` x ``crop``^2, forward and backward."""
    _, codec, loss_fn = training_codec(preset)
    x = torch.rand(batch, 3, crop, crop)
    with _Ledger() as ledger:
        out = codec(x)
        (loss_fn(out, crop * crop)["loss"] + out["aux_loss"]).backward()
    return ledger.ops


def measured_conv_rate() -> tuple[float, str] | None:
    """FLOP/s of the convolution and GEMM kernels in the H100 profile (its step's counted FLOPs over
    their time), or ``None`` without the profile."""
    path = RESULTS / "train-profile-cuda.json"
    if not path.exists():
        return None
    profile = json.loads(path.read_text())
    conv_ms = next(c["ms_per_step"] for c in profile["classes"] if c["kernels"].startswith("convolution"))
    rate = PROFILED_GFLOP_PER_IMAGE * 1e9 * profile["batch"] / (conv_ms / 1e3)
    return rate, f"{profile['note'].split(' (')[0]}, batch {profile['batch']}: {conv_ms:.1f} ms of conv/GEMM kernels"


def ceilings(ops: list[tuple[str, float, float]], batch: int) -> tuple[list[dict], dict]:
    flops = sum(f for _, f, _ in ops)
    compute = [(f, b) for _, f, b in ops if f > 0]
    rest_bytes = sum(b for _, f, b in ops if f == 0)
    ideal = sum(max(f / H100_BF16_DENSE, b / H100_HBM) for f, b in compute)
    memory_bound = sum(1 for f, b in compute if b / H100_HBM > f / H100_BF16_DENSE)
    rows = [("ideal kernels, the rest free", ideal)]
    measured = measured_conv_rate()
    if measured:
        rows.append((f"convolutions at their measured {measured[0] / 1e12:.0f} TFLOP/s, the rest free",
                     sum(f for f, _ in compute) / measured[0]))
    rows.append(("ideal kernels, the rest once over memory", ideal + rest_bytes / H100_HBM))
    table = [{"bound": name, "ms_per_image": 1e3 * seconds / batch,
              "mfu_ceiling_pct": 100 * flops / H100_BF16_DENSE / seconds} for name, seconds in rows]
    table.append({"bound": "measured: the fast path, batch 32 (results/train-paths-cuda.json)",
                  "mfu_ceiling_pct": MEASURED_MFU_PCT})
    summary = {"gflop_per_image": flops / batch / 1e9, "compute_ops": len(compute),
               "compute_ops_memory_bound": memory_bound, "other_ops": len(ops) - len(compute),
               "other_gb_per_image": rest_bytes / batch / 1e9, "measured_conv_rate": measured}
    return table, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=256)
    args = parser.parse_args()
    ops = step_ledger(args.preset, args.batch, args.crop)
    table, summary = ceilings(ops, args.batch)
    print(f"{args.preset} preset, one training step at batch {args.batch} x {args.crop}^2: "
          f"{summary['gflop_per_image']:.1f} GFLOP per image in {summary['compute_ops']} convolutions and matrix "
          f"multiplies ({summary['compute_ops_memory_bound']} of them memory-bound on an H100); "
          f"{summary['other_ops']} other operators move {summary['other_gb_per_image']:.2f} GB per image")
    text = print_table(table, [("bound", "bound"), ("ms_per_image", "H100 ms / image"),
                               ("mfu_ceiling_pct", "MFU ceiling %")])
    write_json(f"roofline-{args.preset}", {"preset": args.preset, "batch": args.batch, "crop": args.crop,
                                           "peak_flops": H100_BF16_DENSE, "hbm_bytes_per_s": H100_HBM,
                                           **summary, "rows": table, "table": text})


if __name__ == "__main__":
    main()
