"""Shard benchmark: reader throughput vs a folder DataLoader vs pure decode, and build throughput;
locally and from a loopback HTTP server that adds a fixed latency to every request (remote storage,
where per-file reads pay a round trip each).

One run, the same images for everything: ~256 px JPEG crops of the real photos shipped in
scikit-image's and scikit-learn's wheels. All loaders use the same decode + random-crop function
and the same number of worker processes.

    python benchmarks/shard_io.py [--images 600] [--workers 2] [--crop 128] [--batch 16] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import random
import tempfile
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch
from common import print_table, write_json
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from shards.build import build, process_pool_map
from shards.process import BuildConfig
from shards.reader import decode_crop, train_loader

SOURCES = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]


def make_images(root: Path, n: int, side: int = 256) -> list[Path]:
    from skimage import data
    from sklearn.datasets import load_sample_image

    photos = [getattr(data, name)() for name in SOURCES] + [load_sample_image(f) for f in ("china.jpg", "flower.jpg")]
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = photos[i % len(photos)]
        top, left = rng.randint(0, img.shape[0] - side), rng.randint(0, img.shape[1] - side)
        path = root / f"{i:05d}.jpg"
        Image.fromarray(img[top : top + side, left : left + side]).save(path, quality=90)
        paths.append(path)
    return paths


class FolderDataset(Dataset):
    """The baseline: one file per sample, read and decoded in ``__getitem__``."""

    def __init__(self, paths: list[Path], crop: int) -> None:
        self.paths, self.crop = paths, crop

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return decode_crop({"jpg": self.paths[i].read_bytes()}, self.crop, random.Random(i))


class URLDataset(FolderDataset):
    """The baseline on remote storage: one HTTP GET per sample."""

    def __init__(self, urls: list[str], crop: int) -> None:
        self.paths, self.urls, self.crop = urls, urls, crop

    def __getitem__(self, i: int) -> torch.Tensor:
        with urllib.request.urlopen(self.urls[i]) as response:
            return decode_crop({"jpg": response.read()}, self.crop, random.Random(i))


class SlowHandler(SimpleHTTPRequestHandler):
    """Serves a directory; every request first waits ``latency`` seconds (an object store's round trip)."""

    latency = 0.0

    def do_GET(self) -> None:
        time.sleep(self.latency)
        super().do_GET()

    def do_HEAD(self) -> None:
        time.sleep(self.latency)
        super().do_HEAD()

    def log_message(self, *args) -> None:
        pass


def serve(root: str, port: int, latency: float) -> None:
    """Run the slow server (in its own process, so it does not share the consumer's GIL)."""
    handler = type("Handler", (SlowHandler,), {"latency": latency})
    ThreadingHTTPServer(("127.0.0.1", port), functools.partial(handler, directory=root)).serve_forever()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def remote_rates(root: Path, paths: list[Path], args: argparse.Namespace, n: int) -> tuple[float, float, float]:
    """Images/s of the per-file loader and the shard reader over HTTP with ``--latency-ms``, and of
    the shard reader without latency; each server runs in its own process."""
    rates = []
    for latency in (args.latency_ms, 0.0):
        port = _free_port()
        server = multiprocessing.get_context("spawn").Process(target=serve, args=(str(root), port, latency / 1000),
                                                              daemon=True)
        server.start()
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/shards/manifest.json").close()
                break
            except OSError:
                time.sleep(0.1)
        if latency:
            urls = [f"{base}/images/{p.name}" for p in paths]
            folder = DataLoader(URLDataset(urls, args.crop), batch_size=args.batch, num_workers=args.workers,
                                persistent_workers=True, prefetch_factor=4,
                                sampler=torch.utils.data.RandomSampler(urls, replacement=True, num_samples=10**9))
            rates.append(rate(folder, args.images // 2, args.batch))  # slow: fewer images suffice
        reader = train_loader(f"{base}/shards/manifest.json", args.batch, args.crop, num_workers=args.workers,
                              shuffle_buffer=200)
        rates.append(rate(reader, n, args.batch))
        server.terminate()
    return rates[0], rates[1], rates[2]


def _decode_file(path: Path) -> int:
    return np.asarray(Image.open(path).convert("RGB")).shape[0]


def rate(loader, n_images: int, batch: int) -> float:
    """Images per second over ``n_images`` after one warm-up batch."""
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    seen = 0
    while seen < n_images:
        seen += next(it).shape[0]
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=20.0, help="per-request latency of the remote case")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_images(tmp / "images", args.images)
        # build throughput, one core
        start = time.perf_counter()
        build([str(tmp / "images")], tmp / "shards1", BuildConfig(max_count=200), mapper=process_pool_map(1))
        build_1 = args.images / (time.perf_counter() - start)
        start = time.perf_counter()
        build([str(tmp / "images")], tmp / "shards", BuildConfig(max_count=200), mapper=process_pool_map(args.workers))
        build_n = args.images / (time.perf_counter() - start)
        # pure decode, 1 process and `workers` processes
        start = time.perf_counter()
        for p in paths:
            _decode_file(p)
        decode_1 = len(paths) / (time.perf_counter() - start)
        with ProcessPoolExecutor(args.workers) as pool:
            list(pool.map(_decode_file, paths[:32]))
            start = time.perf_counter()
            list(pool.map(_decode_file, paths, chunksize=16))
            decode_n = len(paths) / (time.perf_counter() - start)
        n = 2 * args.images
        folder = DataLoader(FolderDataset(paths, args.crop), batch_size=args.batch,
                            num_workers=args.workers, persistent_workers=True, prefetch_factor=4,
                            sampler=torch.utils.data.RandomSampler(paths, replacement=True, num_samples=10**9))
        folder_rate = rate(folder, n, args.batch)
        reader = train_loader(tmp / "shards", args.batch, args.crop, num_workers=args.workers, shuffle_buffer=200)
        reader_rate = rate(reader, n, args.batch)
        # remote: the same files behind a loopback HTTP server with a fixed latency per request, and
        # (the ceiling on this machine: HTTP's CPU cost without the wait) with none
        remote_folder_rate, remote_reader_rate, http_reader_rate = remote_rates(tmp, paths, args, n)
    remote = f"HTTP, {args.latency_ms:g} ms per request"
    rows = [
        {"what": "pure decode, 1 process", "images_s": decode_1},
        {"what": f"pure decode, {args.workers} processes", "images_s": decode_n},
        {"what": f"folder DataLoader, {args.workers} workers", "images_s": folder_rate,
         "vs_decode": folder_rate / decode_n},
        {"what": f"shard reader, {args.workers} workers", "images_s": reader_rate, "vs_decode": reader_rate / decode_n,
         "vs_folder": reader_rate / folder_rate},
        {"what": f"{remote}: per-file DataLoader, {args.workers} workers", "images_s": remote_folder_rate,
         "vs_decode": remote_folder_rate / decode_n},
        {"what": f"{remote}: shard reader, {args.workers} workers", "images_s": remote_reader_rate,
         "vs_decode": remote_reader_rate / decode_n, "vs_folder": remote_reader_rate / remote_folder_rate},
        {"what": f"HTTP, 0 ms per request: shard reader, {args.workers} workers", "images_s": http_reader_rate,
         "vs_decode": http_reader_rate / decode_n},
        {"what": "build, 1 process (per core)", "images_s": build_1},
        {"what": f"build, {args.workers} processes", "images_s": build_n},
    ]
    table = print_table(rows, [("what", "measurement"), ("images_s", "images/s"), ("vs_decode", "vs pure decode"),
                               ("vs_folder", "vs folder loader")])
    write_json("shards", {"args": vars(args), "cpus": os.cpu_count(), "rows": rows, "table": table,
                          "goals": {"reader_vs_folder": 3.0, "reader_vs_decode": 0.8, "build_per_core": 100}})


if __name__ == "__main__":
    main()
