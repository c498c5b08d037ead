"""Decoding paths side by side: eager fp32 (today), bf16, ``torch.compile`` (CUDA graphs on a GPU) and
batched decoding of many files, through the real bitstream, in one process.

Per path: milliseconds per DDIM step at 768x512 (the slope of the diffusion decoder's time between two
step counts, on the file's entropy-decoded latent: the context decoder, paid once per image, cancels,
and the CPU's entropy decoding, timed on its own, cannot add its noise), the whole decode, and the PSNR
change against fp32 eager decoding of the same file (a trained model: quality, not noise).
Batched rows decode ``--files`` crops of one photo set one by one and ``--batch`` at a time.

    python benchmarks/decode.py                                  # CPU, the shipped small-base model
    python benchmarks/decode.py --device cuda --preset paper     # on a GPU: the paper preset's step time
"""

from __future__ import annotations

import argparse
import time

import torch
from common import count_ops, photo, print_table, psnr, sync, write_json

from cdc.checkpoint import load_codec
from cdc.codec import CDCCodec
from cdc.coder import Coder
from cdc.config import load_config
from cdc.resolve import resolve_model

PATHS = (("eager fp32 (today)", "fp32", False), ("eager bf16", "bf16", False),
         ("compiled fp32", "fp32", True), ("compiled bf16", "bf16", True))


def best_time(fn, device: str, repeat: int) -> float:
    """Best of ``repeat`` runs of ``fn()``, seconds (the device synchronised)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def path_rows(coder: Coder, x: torch.Tensor, device: str, steps: tuple[int, int], repeat: int) -> list[dict]:
    data = coder.encode(x).data
    reference, header = coder.decode(data)  # eager fp32 at the file's own steps
    codec = coder.codec
    y_hat = codec.entropy.decompress(header.strings, header.latent_hw)
    entropy_s = best_time(lambda: codec.entropy.decompress(header.strings, header.latent_hw), device, repeat)
    rows = []
    for label, precision, compiled in PATHS:
        codec.compile_decoder(compiled)
        start = time.perf_counter()
        recon, _ = coder.decode(data, precision=precision)  # compiles, when asked (first call)
        first_s = time.perf_counter() - start
        lo, hi = (best_time(lambda s=s, p=precision: codec.reconstruct(y_hat, s, header.gamma, header.seed, p), device,
                            repeat) for s in steps)
        rows.append({"path": label, "ms_per_step": 1e3 * (hi - lo) / (steps[1] - steps[0]),
                     "decode_s": best_time(lambda p=precision: coder.decode(data, precision=p), device, repeat),
                     "entropy_decode_s": entropy_s, "first_decode_s": first_s, "psnr_db": psnr(recon, x),
                     "delta_psnr_db": psnr(recon, x) - psnr(reference, x),
                     "psnr_vs_fp32_eager": psnr(recon, reference)})
    codec.compile_decoder(False)
    base = rows[0]["ms_per_step"]
    for row in rows:
        row["speedup"] = base / row["ms_per_step"]
    return rows


def batch_rows(coder: Coder, files: int, batch: int, device: str) -> list[dict]:
    """``files`` 768x512 crops decoded one by one and ``batch`` at a time (fp32, eager)."""
    big = photo(768 * 2, 512 * 2)
    crops = [big[..., (k // 2) * 128: (k // 2) * 128 + 512, (k % 4) * 192: (k % 4) * 192 + 768] for k in range(files)]
    datas = [coder.encode(c.to(device), seed=k).data for k, c in enumerate(crops)]
    rows = []
    for size in (1, batch):
        list(coder.decode_many(datas[:size], batch_size=size))  # warm-up (allocator, kernels)
        sync(device)
        start = time.perf_counter()
        images = {i: image for i, image, _ in coder.decode_many(datas, batch_size=size)}
        sync(device)
        seconds = time.perf_counter() - start
        rows.append({"batch": size, "files": files, "images_per_s": files / seconds, "seconds": seconds,
                     "images": images})
    single, batched = rows[0].pop("images"), rows[1].pop("images")
    rows[1]["max_uint8_diff_vs_single"] = max(int(abs(single[i].astype(int) - batched[i].astype(int)).max())
                                              for i in single)
    rows[1]["speedup"] = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--model", default="small-base", help="checkpoint or shipped name (ignored with --preset)")
    parser.add_argument("--preset", help="time an untrained codec of this preset instead (e.g. paper on a GPU)")
    parser.add_argument("--steps", default="2,6", help="the two step counts whose difference gives ms/step")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--name", help="results/NAME.json (default: decode-DEVICE)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device on this machine: the GPU rows are skipped (--device cpu runs here)")
        return
    if args.preset:
        torch.manual_seed(0)
        codec, what = CDCCodec(load_config(args.preset)).to(args.device), f"untrained {args.preset} preset"
    else:
        codec, what = load_codec(resolve_model(args.model), args.device), f"trained {args.model}"
    coder = Coder(codec)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    x = photo(768, 512).to(args.device)
    steps = tuple(int(s) for s in args.steps.split(","))
    print(f"{what} on {device_name} ({torch.get_num_threads()} threads), 768x512")
    with torch.no_grad():
        y = torch.zeros(1, codec.config.model.latent_channels, 32, 48, device=args.device)
        pyramid = codec.context(y)
        ops = count_ops(lambda: codec.unet(x * 2 - 1, torch.zeros(1, device=args.device), pyramid))
    print(f"one eager DDIM step dispatches {ops} operators (kernel launches); compiled with CUDA graphs: one replay")
    rows = path_rows(coder, x, args.device, steps, args.repeat)
    table = print_table(rows, [("path", "path"), ("ms_per_step", "ms/step"), ("speedup", "x today"),
                               ("decode_s", "decode s"), ("entropy_decode_s", "of which entropy decoding s"),
                               ("first_decode_s", "first decode s (compiles)"),
                               ("delta_psnr_db", "ΔPSNR vs fp32 dB"), ("psnr_vs_fp32_eager", "PSNR vs fp32 eager")])
    batches = batch_rows(coder, args.files, args.batch, args.device)
    batch_table = print_table(batches, [("batch", "batch"), ("files", "files"), ("images_per_s", "images/s"),
                                        ("speedup", "x one by one"), ("max_uint8_diff_vs_single", "max |Δ| uint8")])
    write_json(args.name or f"decode-{args.device}", {"model": what, "device": device_name, "unet_ops_per_step": ops,
                                         "rows": rows, "table": table,
                                         "batches": batches, "batch_table": batch_table,
                                         "goal": "<= 4 ms/step, paper preset, 768x512, H100; <= 0.05 dB"})


if __name__ == "__main__":
    main()
