"""Decoding paths side by side: eager fp32 (today), bf16, ``torch.compile`` (CUDA graphs on a GPU) and
batched decoding of many files, through the real bitstream, in one process.

"Before" rows run the step as it was before the context pyramid's share moved out of the DDIM loop
(``ConditionalUNet.condition``) and the linear attention was re-associated: the U-Net whole at every
step, and the attention as written (query projection, ``q @ context``, output convolution). "Memory
kept" rows run after ``cdc.allocator.keep_freed_memory()``, as the ``cdc`` command does, and so do the
batched rows on a CPU.

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
import contextlib
import resource
import time

import torch
from common import count_ops, photo, print_table, psnr, sync, write_json

from cdc.allocator import keep_freed_memory
from cdc.coding.coder import Coder
from cdc.config import load_config
from cdc.models.codec import CDCCodec
from cdc.models.layers import LinearAttention
from cdc.models.unet import ConditionalUNet
from cdc.registry.resolve import resolve_model
from cdc.zoo.checkpoint import load_codec

# (label, precision, compiled, the step as before, freed memory kept): the last rows run after
# cdc.allocator.keep_freed_memory(), as the cdc command does (process-wide: they come last; CPU only)
PATHS = (("eager fp32, before (today)", "fp32", False, True, False), ("eager fp32", "fp32", False, False, False),
         ("eager bf16", "bf16", False, False, False), ("compiled fp32", "fp32", True, False, False),
         ("compiled bf16, before", "bf16", True, True, False), ("compiled bf16", "bf16", True, False, False),
         ("eager fp32, memory kept", "fp32", False, False, True),
         ("eager bf16, memory kept", "bf16", False, False, True),
         ("compiled bf16, memory kept", "bf16", True, False, True))


def _attention_as_written(self: LinearAttention, x: torch.Tensor) -> torch.Tensor:
    """The linear attention before its re-association (channels-last memory, as the decoder runs it)."""
    b, c, h, w = x.shape
    q, k, v = self.to_qkv(x).permute(0, 2, 3, 1).reshape(b, h * w, 3 * c).split(c, dim=-1)
    k = torch.softmax(k.transpose(1, 2).contiguous(), dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.bmm(q * self.scale, torch.bmm(k, v))
    return self.to_out(out.reshape(b, h, w, c).permute(0, 3, 1, 2))


@contextlib.contextmanager
def step_before(codec: CDCCodec, before: bool):
    """Decode with the step as it was before (see the module docstring) while ``before``."""
    saved = ConditionalUNet.condition, ConditionalUNet.forward, LinearAttention.forward
    if before:
        ConditionalUNet.condition = lambda self, pyramid: pyramid
        ConditionalUNet.forward = lambda self, x, tau, pyramid, conditioned=False: saved[1](self, x, tau, pyramid)
        LinearAttention.forward = _attention_as_written
    try:
        yield
    finally:
        ConditionalUNet.condition, ConditionalUNet.forward, LinearAttention.forward = saved
        if before:
            codec._decode_unets.clear()  # compiled with the patched step
            torch._dynamo.reset()


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
    for label, precision, compiled, before, kept in PATHS:
        if kept and (device != "cpu" or not keep_freed_memory()):
            continue  # GPU tensors come from CUDA's caching allocator; no glibc: nothing to keep
        codec.compile_decoder(compiled)
        with step_before(codec, before):
            start = time.perf_counter()
            recon, _ = coder.decode(data, precision=precision)  # compiles, when asked (first call)
            first_s = time.perf_counter() - start
            lo, hi = (best_time(lambda s=s, p=precision: codec.reconstruct(y_hat, s, header.gamma, header.seed, p),
                                device, repeat) for s in steps)
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            codec.reconstruct(y_hat, steps[1], header.gamma, header.seed, precision)
            faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps[1]
            rows.append({"path": label, "ms_per_step": 1e3 * (hi - lo) / (steps[1] - steps[0]),
                         "page_faults_per_step": round(faults),
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
                               ("page_faults_per_step", "page faults/step"),
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
