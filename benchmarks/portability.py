"""Do files decode the same on another machine? Float32 against float64 entropy parameters.

Each photo is entropy-coded once, the way this machine runs (oneDNN convolutions, all threads).
Each file is then decoded the way other machines run: PyTorch's own convolution kernels instead of
oneDNN's (as on a build without oneDNN), one thread instead of all, and both. Those change how
the hyper-synthesis's sums are rounded, and nothing else. For both precisions of the entropy
parameters, per decoding setting:

* scale indexes that differ from the encoder's. The hyper-synthesis runs on the encoder's ẑ,
  decoded bit-exactly from its own string;
* files whose ŷ is not bit-exact (means that differ in their last bits), files whose rANS decoder
  derailed (a wrong symbol: garbage from the first wrong index on), and the largest error.

It also times entropy encoding and decoding in both precisions. Float64 convolutions skip oneDNN,
so float64 costs more; the latents are small, so the cost stays small.

    python benchmarks/portability.py [--model small-base] [--timing-preset paper]
"""

from __future__ import annotations

import argparse
import contextlib

import numpy as np
import torch
from common import photo, print_table, timed, write_json

from cdc.coding.coder import Coder
from cdc.config import load_config
from cdc.models.codec import CDCCodec
from cdc.models.layers import pad_to_multiple
from cdc.registry.resolve import resolve_model
from cdc.zoo.checkpoint import load_codec

SETTINGS = {  # name -> (oneDNN enabled, threads or None for all)
    "this machine": (True, None),
    "oneDNN off": (False, None),
    "1 thread": (True, 1),
    "oneDNN off, 1 thread": (False, 1),
}
PRECISIONS = {"float32 (before)": False, "float64 (now)": True}


def photos() -> list[tuple[str, torch.Tensor]]:
    """Real photos, (1, 3, H, W) in [0, 1]: scikit-learn's two at 768x512 and three of scikit-image's."""
    from skimage import data

    def tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255

    out = [(name, photo(768, 512, name)) for name in ("china", "flower")]
    return out + [(name, tensor(getattr(data, name)())) for name in ("astronaut", "coffee", "chelsea")]


@contextlib.contextmanager
def setting(name: str):
    """Run the block as another machine would: oneDNN on or off, all threads or one."""
    onednn, threads = SETTINGS[name]
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        with torch.backends.mkldnn.flags(enabled=onednn):
            yield
    finally:
        torch.set_num_threads(before)


def scale_indexes(coder_model, z_hat: torch.Tensor) -> torch.Tensor:
    """The mean-scale hyperprior's scale indexes of y given ẑ (on the coder's own copy)."""
    _, scale = coder_model._params(z_hat.to(coder_model.dtype))
    return coder_model.gaussian_conditional.build_indexes(scale)


@torch.no_grad()
def portability_rows(codec: CDCCodec, images: list[tuple[str, torch.Tensor]]) -> list[dict]:
    entropy = codec.entropy
    rows = []
    for label, portable in PRECISIONS.items():
        model = entropy.coder(portable)
        files = []
        for _, x in images:
            y = codec.g_a(pad_to_multiple(x * 2 - 1, codec.downsampling_factor))
            strings, y_hat = entropy.compress(y, portable)
            z_hat = model._z_decompress(strings, tuple(y.shape[-2:]))
            files.append((y.shape[-2:], strings, y_hat, z_hat, scale_indexes(model, z_hat)))
        for name in SETTINGS:
            wrong_indexes = inexact = derailed = 0
            max_error = 0.0
            for hw, strings, y_hat, z_hat, indexes in files:
                with setting(name):
                    decoded = entropy.decompress(strings, tuple(hw), portable)
                    wrong_indexes += int((scale_indexes(model, z_hat) != indexes).sum())
                error = float((decoded - y_hat).abs().max())
                inexact += error > 0
                derailed += error >= 0.5  # a wrong symbol: the rANS decoder has derailed
                max_error = max(max_error, error)
            rows.append({"entropy parameters": label, "decoded with": name, "files": len(files),
                         "scale indexes differing": wrong_indexes, "latents": sum(f[2].numel() for f in files),
                         "files not bit-exact": inexact, "files derailed": derailed, "max |Δŷ|": max_error})
    return rows


def coding_ms(entropy, y: torch.Tensor, portable: bool, repeat: int) -> tuple[float, float]:
    """Median milliseconds to entropy-encode and to entropy-decode ``y``."""
    hw = tuple(y.shape[-2:])
    strings, _ = entropy.compress(y, portable)
    return (1e3 * timed(lambda: entropy.compress(y, portable), repeat),
            1e3 * timed(lambda: entropy.decompress(strings, hw, portable), repeat))


@torch.no_grad()
def timing_rows(codecs: dict[str, CDCCodec], x: torch.Tensor, repeat: int) -> list[dict]:
    rows = []
    for name, codec in codecs.items():
        y = codec.g_a(pad_to_multiple(x * 2 - 1, codec.downsampling_factor))
        (e32, d32), (e64, d64) = (coding_ms(codec.entropy, y, p, repeat) for p in PRECISIONS.values())
        rows.append({"model": name, "encode ms float32": e32, "encode ms float64": e64,
                     "decode ms float32": d32, "decode ms float64": d64, "decode float64 / float32": d64 / d32})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small-base", help="checkpoint or shipped name (trained, hyperprior)")
    parser.add_argument("--timing-preset", default="paper", help="also time an untrained codec of this preset")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    codec = load_codec(resolve_model(args.model), "cpu")
    Coder(codec)  # builds the coder's tables as every user of a model does
    images = photos()
    print(f"{args.model}: {len(images)} photos coded with oneDNN and {torch.get_num_threads()} threads, "
          "decoded as other machines would")
    rows = portability_rows(codec, images)
    table = print_table(rows, [(k, k) for k in rows[0]])
    torch.manual_seed(0)
    paper = CDCCodec(load_config(args.timing_preset)).eval()
    Coder(paper)
    timings = timing_rows({args.model: codec, f"{args.timing_preset} (untrained)": paper}, photo(768, 512),
                          args.repeat)
    timing_table = print_table(timings, [(k, k) for k in timings[0]])
    write_json("portability", {"model": args.model, "photos": [n for n, _ in images], "rows": rows,
                               "table": table, "timing_768x512": timings, "timing_table": timing_table,
                               "goal": "every file bit-exact under every decoding setting"})


if __name__ == "__main__":
    main()
