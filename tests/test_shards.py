"""Shard building, resume, verification and reading, on real tar files."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from badimages import make_corpus
from conftest import photo
from PIL import Image

from shards.build import build
from shards.manifest import Manifest
from shards.process import BuildConfig
from shards.reader import (
    ShardError,
    ShardStream,
    iterate_images,
    resolve_shards,
    shards_for_rank,
    train_loader,
    unit_range,
)
from shards.sources import SourceError, expand_sources
from shards.verify import verify

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]


def photo_corpus(root: Path, copies: int = 1) -> Path:
    """Real photos (scikit-image wheel) in nested folders, as JPEG and PNG, cut in a few crops each."""
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(PHOTOS):
        img = Image.fromarray(photo(name))
        for c in range(copies):
            box = (c * 7, c * 5, img.width - c * 3, img.height - c * 11)
            sub = root / f"set{i % 3}"
            sub.mkdir(exist_ok=True)
            img.crop(box).save(sub / f"{name}-{c}.{'png' if i % 2 else 'jpg'}", quality=92)
    return root


@pytest.fixture(scope="module")
def bad_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    paths = make_corpus(root / "corpus")
    listing = root / "extra.txt"
    listing.write_text(f"# a list file\n{root / 'does-not-exist.png'}\n{paths['clean.png']}\n")
    out = root / "out"
    manifest = build([str(root / "corpus"), str(listing)], out, BuildConfig(max_count=3, split_val=0.3,
                     max_pixels=10_000 * 10_000))
    return paths, out, manifest


def test_every_input_is_accounted_for(bad_build):
    paths, out, manifest = bad_build
    totals = manifest.totals()
    assert totals["scanned"] == len(paths) + 1  # the listed clean.png is the same location: counted once
    assert totals["written"] + totals["quarantined"] + totals["duplicates"] == totals["scanned"]
    reasons = {Path(q["source"]).name: q["reason"] for q in manifest.quarantine}
    assert "truncated or corrupt" in reasons["truncated.jpg"]
    assert "empty file" in reasons["empty.png"]
    assert "not a recognised image" in reasons["text.png"]
    assert "smaller than the minimum side" in reasons["tiny8x8.png"]
    assert "over the limit" in reasons["bomb.png"]
    assert "cannot read" in reasons["does-not-exist.png"]
    assert [Path(d["source"]).name for d in manifest.duplicates] == ["duplicate.jpg"]
    written = {json.loads(meta)["source"] for _, _, meta in _samples(out)}
    assert {Path(s).name for s in written} == {
        "clean.jpg", "clean.png", "cmyk.jpg", "gray16.png", "rgba.png", "palette.png", "gray.png", "rotated.jpg"}
    assert Manifest.load(out / "manifest.json").totals() == totals


def _samples(out: Path):
    for split in ("train", "val"):
        try:
            for key, data, meta in iterate_images(out, split):
                yield key, data, json.dumps(meta)
        except ShardError:
            pass


def test_clean_inputs_are_kept_byte_for_byte_others_become_png(bad_build):
    paths, out, _ = bad_build
    by_source = {Path(json.loads(m)["source"]).name: data for _, data, m in _samples(out)}
    assert by_source["clean.jpg"] == paths["clean.jpg"].read_bytes()
    assert by_source["clean.png"] == paths["clean.png"].read_bytes()
    assert by_source["cmyk.jpg"][:4] == b"\x89PNG"
    assert Image.open(__import__("io").BytesIO(by_source["rotated.jpg"])).size == (96, 128)


def test_shards_are_bounded_and_named(bad_build):
    _, out, manifest = bad_build
    assert all(s.count <= 3 for s in manifest.shards)
    names = sorted(p.name for p in out.glob("*.tar"))
    assert names == sorted(s.name for s in manifest.shards)
    assert names[0] == "train-000000.tar"
    assert not (out / ".staging").exists()


def test_missing_source_directory_is_rejected(tmp_path):
    with pytest.raises(SourceError, match="no such file or directory"):
        expand_sources([str(tmp_path / "nope")])
    with pytest.raises(SourceError, match="no such list file"):
        expand_sources([str(tmp_path / "nope.txt")])


def test_sources_glob_and_fsspec_url(tmp_path):
    import fsspec

    photo_corpus(tmp_path / "c")
    assert len(expand_sources([str(tmp_path / "c" / "**" / "*.png")])) == 3
    mem = fsspec.filesystem("memory")
    for p in sorted((tmp_path / "c").rglob("*.jpg")):
        mem.pipe(f"/remote/{p.name}", p.read_bytes())
    found = expand_sources(["memory://remote/"])
    assert len(found) == 4 and all(f.startswith("memory://") for f in found)
    manifest = build(["memory://remote/"], tmp_path / "out", BuildConfig())
    assert manifest.written == 4


def test_verify_catches_a_flipped_byte(tmp_path):
    out = tmp_path / "out"
    build([str(photo_corpus(tmp_path / "c"))], out, BuildConfig(max_count=2))
    assert verify(out / "manifest.json") == []
    shard = out / "train-000001.tar"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    problems = verify(out / "manifest.json")
    assert problems and all(p.startswith("train-000001.tar") for p in problems)
    # the CLI reports it with a non-zero exit
    r = subprocess.run([sys.executable, "-m", "shards", "verify", str(out / "manifest.json")], capture_output=True,
                       text=True)
    assert r.returncode == 1 and "train-000001.tar" in r.stderr


def test_rerun_is_a_no_op_and_repairs_damage(tmp_path):
    corpus = photo_corpus(tmp_path / "c")
    out = tmp_path / "out"
    cfg = BuildConfig(max_count=2, split_val=0.2)
    first = build([str(corpus)], out, cfg)
    snapshot = {p.name: p.read_bytes() for p in out.iterdir()}
    build([str(corpus)], out, cfg)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot
    # simulate a crash during the write phase: a partial shard, a missing one, no manifest
    (out / "train-000000.tar").write_bytes(snapshot["train-000000.tar"][:1000])
    (out / "train-000001.tar").unlink()
    (out / "manifest.json").unlink()
    second = build([str(corpus)], out, cfg)
    assert second.to_dict() == first.to_dict()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == snapshot


def test_resume_after_kill_9_is_byte_identical(tmp_path):
    corpus = photo_corpus(tmp_path / "c", copies=6)  # 42 images
    args = [str(corpus), "--max-count", "5", "--chunk-size", "2", "--workers", "1", "--split-val", "0.2"]
    reference = tmp_path / "ref"
    subprocess.run([sys.executable, "-m", "shards", "build", *args, "-o", str(reference)], check=True,
                   capture_output=True)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "shards", "build", *args, "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list((out / ".staging").glob("chunk-*.json"))) < 4 and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the build finished before it could be killed"
    subprocess.run([sys.executable, "-m", "shards", "build", *args, "-o", str(out)], check=True, capture_output=True)
    ref = {p.name: p.read_bytes() for p in reference.iterdir()}
    assert {p.name: p.read_bytes() for p in out.iterdir()} == ref
    assert len(ref) > 5


def test_ranks_get_disjoint_shards_covering_everything():
    urls = [f"s-{i}.tar" for i in range(7)]
    parts = [shards_for_rank(urls, r, 2) for r in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == urls
    assert shards_for_rank(urls[:1], 1, 2) == urls[:1]


@pytest.fixture(scope="module")
def photo_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    out = root / "out"
    build([str(photo_corpus(root / "c", copies=2))], out, BuildConfig(max_count=3))
    return out


def test_reader_yields_shaped_tensors_in_unit_range(photo_shards):
    loader = train_loader(photo_shards, batch_size=4, crop=64, num_workers=2, shuffle_buffer=8)
    for _, batch in zip(range(3), loader, strict=False):
        assert batch.shape == (4, 3, 64, 64) and batch.dtype == torch.uint8
        unit = unit_range(batch)
        assert unit.dtype == torch.float32 and unit.min() >= 0 and unit.max() <= 1 and unit.std() > 0.01


def test_reader_resumes_exactly_and_ranks_differ(photo_shards):
    def take(start, n, rank=0):
        loader = train_loader(photo_shards, 2, 32, rank=rank, world_size=2, seed=5, num_workers=2,
                              epoch_batches=3, start_batch=start, shuffle_buffer=4)
        return [b for _, b in zip(range(n), loader, strict=False)]

    full, resumed = take(0, 9), take(4, 5)
    assert all(torch.equal(a, b) for a, b in zip(full[4:], resumed, strict=True))
    other = take(0, 3, rank=1)
    assert not torch.equal(full[0], other[0])


def test_reader_errors(tmp_path, photo_shards):
    with pytest.raises(ShardError, match="no such shard manifest"):
        resolve_shards(tmp_path / "missing" / "manifest.json")
    with pytest.raises(ShardError, match="no val shards"):
        resolve_shards(photo_shards, "val")
    with pytest.raises(ShardError, match="iterated by"):
        next(iter(torch.utils.data.DataLoader(ShardStream(resolve_shards(photo_shards), 2, 32, num_workers=2),
                                              batch_size=None)))
    shutil.copytree(photo_shards, tmp_path / "copy")
    assert len(resolve_shards(str(tmp_path / "copy" / "train-{000000..000001}.tar"))) == 2


@pytest.mark.parametrize("field", ["resize_shorter", "max_shorter", "patch_size"])
def test_non_positive_sizes_are_refused(field):
    with pytest.raises(ValueError, match=f"{field} must be >= 1"):
        BuildConfig(**{field: -5})


def test_resize_and_max_shorter_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        BuildConfig(resize_shorter=256, max_shorter=512)
