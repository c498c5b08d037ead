"""Codec benchmark: real bytes vs estimated bits, encode time, decode time per DDIM step,
FLOPs per step and the achieved fraction of this machine's measured matrix-multiply peak,
fp32 vs bf16 (speed and reconstruction difference). One run, one process, 768x512 photo.

Models: ``--model PRESET=CHECKPOINT`` uses a trained checkpoint; otherwise an untrained codec of
the preset whose *entropy model only* is fitted (rate-only, on the photo's frozen latents) so
that the real-vs-estimated comparison is made with a model that matches its latents. Untrained
decoders make noise: the bf16-vs-fp32 quality columns then only measure numeric agreement.

    python benchmarks/codec.py [--presets tiny,small,paper] [--model small=runs/x/model]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import matmul_peak, photo, print_table, psnr, timed, write_json
from torch.utils.flop_counter import FlopCounterMode

from cdc.coding.coder import Coder
from cdc.config import load_config
from cdc.models.codec import CDCCodec
from cdc.models.perceptual import build_perceptual
from cdc.training.losses import bits_per_pixel
from cdc.zoo.checkpoint import load_codec


def fit_entropy_model(codec: CDCCodec, x: torch.Tensor, steps: int) -> None:
    """Rate-only fit of h_a, h_s and the priors on g_a's frozen latents (plus the quantile loss)."""
    with torch.no_grad():
        y = codec.g_a(x * 2 - 1)
    entropy = codec.entropy.train()
    opt = torch.optim.Adam(entropy.parameters(), lr=2e-3)
    for _ in range(steps):
        _, likelihoods = entropy(y)
        loss = bits_per_pixel(likelihoods, x.shape[-2] * x.shape[-1]).mean() + codec.aux_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    codec.eval().update(force=True)


def _device(codec: CDCCodec) -> torch.device:
    return next(codec.parameters()).device


def step_flops(codec: CDCCodec, shape: tuple[int, ...]) -> int:
    """Counted FLOPs of one U-Net evaluation (one DDIM step) at ``shape``."""
    b, _, h, w = shape
    dev = _device(codec)
    with torch.no_grad():
        pyramid = codec.context(torch.zeros(b, codec.config.model.latent_channels, h // 16, w // 16, device=dev))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        codec.unet(torch.zeros(shape, device=dev), torch.zeros(b, device=dev), pyramid)
    return counter.get_total_flops()


def step_time(codec: CDCCodec, shape: tuple[int, ...], precision: str, repeat: int) -> float:
    """Median seconds of one denoising step as the decoder runs it (dtype, channels-last)."""
    from cdc.models.codec import PRECISIONS

    dtype = PRECISIONS[precision]
    b, _, h, w = shape
    dev = _device(codec)
    _, unet = codec._unet_for(dtype)  # one U-Net evaluation (the context's share included)
    with torch.no_grad():
        y = torch.zeros(b, codec.config.model.latent_channels, h // 16, w // 16, device=dev)
        pyramid = [c.to(dtype).contiguous(memory_format=torch.channels_last) for c in codec.context(y)]
        x = torch.randn(shape, device=dev).to(dtype).contiguous(memory_format=torch.channels_last)
        tau = torch.full((b,), 0.5, device=dev)

        def run() -> None:
            unet(x, tau, pyramid)
            if dev.type == "cuda":
                torch.cuda.synchronize()

        return timed(run, repeat=repeat)


def conv_rates(device: str, size: tuple[int, int] = (256, 384), widths: tuple[int, ...] = (16, 32, 64, 128, 256)
               ) -> list[dict]:
    """GFLOP/s of one 3x3 convolution C -> C (channels-last, batch 1, ``size``) in fp32 and bf16: the
    kernel rates that bound the U-Net's bf16 speed-up (its convolutions are 16-256 channels wide)."""
    rows = []
    for c in widths:
        conv = torch.nn.Conv2d(c, c, 3, padding=1).to(device).eval()
        x = torch.randn(1, c, *size, device=device).contiguous(memory_format=torch.channels_last)
        flops = 2 * 9 * c * c * size[0] * size[1]
        row = {"channels": c}
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            layer = conv.to(dtype=dtype, memory_format=torch.channels_last)
            inp = x.to(dtype)
            with torch.no_grad():
                row[f"{name}_gflops"] = flops / timed(lambda layer=layer, inp=inp: layer(inp), repeat=5) / 1e9
        row["bf16_speedup"] = row["bf16_gflops"] / row["fp32_gflops"]
        rows.append(row)
    return rows


def run(preset: str, checkpoint: str | None, x: torch.Tensor, peaks: dict, stlpips, device: str) -> dict:
    if checkpoint:
        codec, trained = load_codec(checkpoint, device), True
    else:
        torch.manual_seed(0)
        codec, trained = CDCCodec(load_config(preset)).to(device).eval(), False
        fit_entropy_model(codec, x, steps={"tiny": 300, "small": 300, "paper": 150}[preset])
    coder = Coder(codec)
    start = time.perf_counter()
    enc = coder.encode(x)
    encode_s = time.perf_counter() - start
    payload = sum(len(s) for s in coder.parse(enc.data).strings)
    est_bytes = enc.bpp_estimated * x.shape[-1] * x.shape[-2] / 8
    shape = (1, 3, x.shape[-2], x.shape[-1])
    flops = step_flops(codec, shape)
    repeat = 2 if preset == "paper" and device == "cpu" else 5
    t32 = step_time(codec, shape, "fp32", repeat)
    t16 = step_time(codec, shape, "bf16", repeat)
    rec32, header = coder.decode(enc.data)
    rec16, _ = coder.decode(enc.data, precision="bf16")
    with torch.no_grad():
        lp32 = stlpips(rec32 * 2 - 1, x * 2 - 1).item() if stlpips else float("nan")
        lp16 = stlpips(rec16 * 2 - 1, x * 2 - 1).item() if stlpips else float("nan")
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "preset": preset,
        "trained": trained,
        "params_M": sum(p.numel() for p in codec.parameters()) / 1e6,
        "file_bytes": len(enc.data),
        "payload_bytes": payload,
        "container_bytes": len(enc.data) - payload,
        "estimated_bytes": est_bytes,
        "payload_overhead_pct": 100 * (payload / est_bytes - 1),
        "bpp": enc.bpp,
        "bpp_estimated": enc.bpp_estimated,
        "encode_s": encode_s,
        "gflop_per_step": flops / 1e9,
        "step_fp32_s": t32,
        "step_bf16_s": t16,
        "bf16_speedup": t32 / t16,
        "fp32_pct_of_peak": 100 * flops / t32 / peaks["fp32"],
        "bf16_pct_of_peak": 100 * flops / t16 / peaks["bf16"],
        "fp32_vs_floor": t32 / (flops / peaks["fp32"]),
        "decode_steps": header.steps,
        "psnr_fp32": psnr(rec32, x),
        "psnr_bf16": psnr(rec16, x),
        "delta_psnr_db": psnr(rec32, x) - psnr(rec16, x),
        "psnr_bf16_vs_fp32": psnr(rec16, rec32),
        "stlpips_fp32": lp32,
        "stlpips_bf16": lp16,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small,paper")
    parser.add_argument("--model", action="append", default=[], help="PRESET=CHECKPOINT (trained model)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--output", default="codec", help="results/<name>.json")
    args = parser.parse_args()
    checkpoints = dict(m.split("=", 1) for m in args.model)
    n = 8192 if args.device == "cuda" else 2048
    peaks = {"fp32": matmul_peak(torch.float32, n, args.device), "bf16": matmul_peak(torch.bfloat16, n, args.device)}
    print(f"measured matmul peak on {args.device}: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s ({torch.get_num_threads()} threads)")
    x = photo(768, 512).to(args.device)
    try:
        stlpips = build_perceptual("stlpips-alex").to(args.device)
    except ImportError:
        stlpips = None
        print("stlpips-pytorch is not installed here: the ST-LPIPS columns are NaN")
    rows = [run(p, checkpoints.get(p), x, peaks, stlpips, args.device) for p in args.presets.split(",")]
    table = print_table(rows, [
        ("device", "device"), ("preset", "preset"), ("trained", "trained"), ("params_M", "params (M)"),
        ("file_bytes", "file B"),
        ("estimated_bytes", "estimated B"), ("payload_overhead_pct", "payload overhead %"),
        ("container_bytes", "container B"), ("encode_s", "encode s"), ("gflop_per_step", "GFLOP/step"),
        ("step_fp32_s", "step fp32 s"), ("fp32_pct_of_peak", "fp32 % peak"), ("fp32_vs_floor", "fp32 / floor"),
        ("step_bf16_s", "step bf16 s"), ("bf16_speedup", "bf16 speed-up"), ("delta_psnr_db", "ΔPSNR dB"),
        ("psnr_bf16_vs_fp32", "PSNR bf16 vs fp32"), ("stlpips_fp32", "ST-LPIPS fp32"),
        ("stlpips_bf16", "ST-LPIPS bf16"),
    ])
    kernels = conv_rates(args.device)
    kernel_table = print_table(kernels, [("channels", "3x3 conv C->C at 384x256"), ("fp32_gflops", "fp32 GFLOP/s"),
                                         ("bf16_gflops", "bf16 GFLOP/s"), ("bf16_speedup", "bf16 speed-up")])
    write_json(args.output, {"peaks_flops": peaks, "image": "sklearn china.jpg resized to 768x512", "rows": rows,
                             "table": table, "kernels": kernels, "kernel_table": kernel_table})


if __name__ == "__main__":
    main()
