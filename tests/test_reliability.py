"""The second reliability pass, row by row: nothing a user or a stranger's file passes in
may destroy data, hang, blow memory or print a traceback. Rows 2 and 8 (object storage) live in
``test_remote_shards.py``."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, peak_rss_mb, photo, tiny_codec
from PIL import Image
from test_adversarial import crafted, one_line

from shards.build import build
from shards.locks import DirectoryBusyError, exclusive_dir
from shards.process import BuildConfig

TINY_SHARD = REPO / "tests" / "assets" / "tiny-shard"


def _corpus(folder: Path, names=("astronaut", "coffee", "chelsea")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(photo(name, (96, 128))).save(folder / f"{i}.png")
    return folder


def _train(out: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cdc.train", "--shards", str(TINY_SHARD), "--output-dir", str(out),
                           *extra, "train.sample_every=0"], capture_output=True, text=True, timeout=timeout, cwd=REPO)


# ------------------------------------------------------------------ row 1: the builder removes only its own tars
def test_row1_a_build_never_deletes_tars_it_did_not_write(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "backup-000001.tar").write_bytes(b"user data")
    (out / "photos-202401.tar").write_bytes(b"more user data")
    cfg = BuildConfig(max_count=1)
    build([str(_corpus(tmp_path / "a"))], out, cfg)
    assert {p.name for p in out.glob("train-*.tar")} == {f"train-{i:06d}.tar" for i in range(3)}
    # a smaller corpus: the builder's own stale shard goes, the user's tars stay
    build([str(_corpus(tmp_path / "b", ("rocket",)))], out, cfg)
    assert sorted(p.name for p in out.glob("*.tar")) == ["backup-000001.tar", "photos-202401.tar", "train-000000.tar"]
    assert (out / "backup-000001.tar").read_bytes() == b"user data"


# ------------------------------------------------------------------ row 7: an input edited in place is rebuilt
def test_row7_an_input_edited_in_place_is_rebuilt(tmp_path):
    src = _corpus(tmp_path / "src", ("astronaut",))
    out = tmp_path / "out"
    first = build([str(src)], out, BuildConfig())
    Image.fromarray(photo("coffee", (96, 128))).save(src / "0.png")
    second = build([str(src)], out, BuildConfig())
    assert second.fingerprint != first.fingerprint
    from shards.verify import verify

    assert verify(out) == []


# ------------------------------------------------------------------ row 10: one writer per output directory
def test_row10_a_second_build_into_a_busy_directory_fails_with_one_line(tmp_path):
    out = tmp_path / "out"
    with exclusive_dir(out, "shard build"):
        with pytest.raises(DirectoryBusyError, match="another shard build is writing here"):
            build([str(_corpus(tmp_path / "a"))], out, BuildConfig())
        r = subprocess.run([sys.executable, "-m", "shards", "build", str(tmp_path / "a"), "-o", str(out)],
                           capture_output=True, text=True, timeout=120, cwd=REPO)
        assert r.returncode != 0
        one_line(r, "shards: error:", str(out), "another shard build")
    build([str(tmp_path / "a")], out, BuildConfig())  # released: the kernel drops the lock with its holder


def test_row10_the_lock_dies_with_its_process_and_a_refused_start_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from shards.locks import exclusive_dir\n"
                               f"with exclusive_dir({str(out)!r}):\n print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(DirectoryBusyError, match=f"pid {holder.pid}"), exclusive_dir(out):
        pass
    holder.kill()
    holder.wait()
    with exclusive_dir(out):
        pass
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError), exclusive_dir(fresh):
        raise RuntimeError("a check failed")
    assert not fresh.exists()


def test_row10_two_trainings_into_one_directory(tmp_path):
    out = tmp_path / "run"
    with exclusive_dir(out, "training run"):
        r = _train(out, "--max-steps", "2")
    assert r.returncode == 2, r.stderr[-2000:]
    one_line(r, "cdc train: error:", str(out), "another training run is writing here")
    assert not (out / "metrics.jsonl").exists()


# ------------------------------------------------------------------ row 4: resume keeps the export, warns on λ
def test_row4_resume_keeps_the_previous_export_until_the_new_one_and_warns_on_a_new_objective(tmp_path):
    out = tmp_path / "run"
    r = _train(out, "--max-steps", "4", "train.checkpoint_every=2")
    assert r.returncode == 0, r.stderr[-2000:]
    before = (out / "config.json").read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "cdc.train", "--shards", str(TINY_SHARD), "--output-dir", str(out),
                             "--resume", "latest", "--max-steps", "100000", "--lmbda", "5", "train.sample_every=0",
                             "train.fast_path=off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        for _ in range(600):  # until it trains (its metrics grow), then kill -9 mid-run
            if (out / "metrics.jsonl").read_text().count("\n") > 6:
                break
            threading.Event().wait(0.1)
    finally:
        proc.kill()
        proc.wait()
    reader.join(5)
    assert any("warning: resuming" in line and "loss.lmbda=5.0 (was 0.01)" in line for line in lines), lines[-5:]
    assert (out / "config.json").read_bytes() == before  # the finished run's export is still there, usable
    from cdc.zoo.checkpoint import load_codec

    load_codec(out)


def test_row4_a_run_killed_after_its_last_checkpoint_exports_on_resume(tmp_path):
    """Killed between the last step's checkpoint and the export: ``--resume latest`` trains no step and
    exports that checkpoint (it used to fail for want of a batch to log a sample of)."""
    out = tmp_path / "run"
    r = _train(out, "--max-steps", "2", "train.checkpoint_every=2")
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("train_summary.json", "config.json", "model.safetensors"):
        (out / name).unlink()
    r = _train(out, "--max-steps", "2", "--resume", "latest")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "train_summary.json").read_text())["step"] == 2
    from cdc.zoo.checkpoint import load_codec

    load_codec(out)


# ------------------------------------------------------------------ row 3: no clobbering at the rename
def test_row3_no_write_replaces_a_file_that_appeared_during_it(tmp_path):
    from cdc.files import atomic_path

    target = tmp_path / "x.cdc"
    with pytest.raises(FileExistsError) as err, atomic_path(target, overwrite=False) as tmp:
        Path(tmp).write_bytes(b"ours")
        target.write_bytes(b"theirs")  # another process got there first
    assert target.read_bytes() == b"theirs" and err.value.filename == str(target)
    assert [p.name for p in tmp_path.iterdir()] == ["x.cdc"]  # no temporary file left


def test_row3_two_compresses_into_one_name_one_wins_one_fails(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(photo("coffee", (64, 64))).save(a)
    Image.fromarray(photo("astronaut", (64, 64))).save(b)
    procs = [subprocess.Popen([sys.executable, "-m", "cdc", "compress", str(p), "-m", "small-base", "-o",
                               str(tmp_path / "x.cdc")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for p in (a, b)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    assert sorted(code for code, _, _ in results) == [0, 1], results
    loser = next(err for code, _, err in results if code)
    one_line(loser, "cdc: error:", "x.cdc", "exists")


def test_row30_a_stale_temporary_file_is_swept_by_the_next_write(tmp_path):
    from cdc.files import STALE_TMP_S, atomic_write

    stale = tmp_path / ".x.cdc.abc123.tmp"
    stale.write_bytes(b"left by kill -9")
    old = os.path.getmtime(stale) - STALE_TMP_S - 10
    os.utime(stale, (old, old))
    fresh = tmp_path / ".x.cdc.def456.tmp"  # another writer's, in flight: kept
    fresh.write_bytes(b"")
    atomic_write(tmp_path / "x.cdc", b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh.name, "x.cdc"]


def test_row31_a_failed_write_names_the_output_not_the_temporary_file(tmp_path):
    from cdc.files import atomic_write

    (tmp_path / "x.png").mkdir()  # os.replace onto a directory fails, even for root
    with pytest.raises(OSError) as err:
        atomic_write(tmp_path / "x.png", b"data")
    assert err.value.filename == str(tmp_path / "x.png")
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


# ------------------------------------------------------------------ row 5: strings too short for the latent
def test_row5_cut_or_empty_strings_are_refused_and_the_batch_goes_on(tmp_path):
    from cdc.coding.bitstream import Bitstream
    from cdc.zoo.checkpoint import save_codec

    model = save_codec(tiny_codec(), tmp_path / "model")
    good = crafted(model)
    stream = Bitstream.from_bytes(good)
    z, y = stream.strings
    files = {"empty-y.cdc": crafted(model, strings=[z, b""]),
             "cut-y.cdc": crafted(model, strings=[z, y[: len(y) // 3]]),
             "empty.cdc": crafted(model, strings=[b"", b""]),
             "huge-empty.cdc": crafted(model, strings=[b"", b""], height=2048, width=2048, latent_hw=(128, 128)),
             "good.cdc": good}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "cdc", "decompress", *(str(tmp_path / n) for n in files), "-m",
                        str(model), "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("cdc: error:")]
    assert len(errors) == 4 and all("entropy decoding failed" in e for e in errors), r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]


# ------------------------------------------------------------------ rows 13, 20, 26: models that cannot be trusted
def _edit_config(model: Path, **model_changes) -> None:
    info = json.loads((model / "config.json").read_text())
    info["config"]["model"].update(model_changes)
    (model / "config.json").write_text(json.dumps(info))


@pytest.mark.parametrize("changes, fragment", [
    ({"latent_channels": 2_000_000}, "weights do not match the config"),
    ({"unet_dim": 100_000}, "weights do not match the config"),
    ({"attn_heads": 0}, "model.attn_heads must be >= 1"),
])
def test_rows20_26_an_edited_config_is_refused_before_it_allocates(tmp_path, changes, fragment):
    from cdc.zoo.checkpoint import save_codec

    model = save_codec(tiny_codec(), tmp_path / "model")
    _edit_config(model, **changes)
    png = tmp_path / "a.png"
    Image.fromarray(photo("coffee", (64, 64))).save(png)
    r, peak = peak_rss_mb(["compress", png, "-m", model, "-o", tmp_path / "a.cdc"], tmp_path)
    assert r.returncode != 0
    one_line(r, "cdc: error:", fragment)
    assert peak < 1500, peak  # 2,000,000 latent channels used to take over 3 GB before failing


def test_row13_nan_weights_are_refused_at_load_and_training_stops_on_divergence(tmp_path):
    import torch

    from cdc.zoo.checkpoint import CheckpointError, load_codec, save_codec

    codec = tiny_codec()
    with torch.no_grad():
        codec.g_a.stages[0][0].weight.fill_(float("nan"))
    model = save_codec(codec, tmp_path / "model")
    with pytest.raises(CheckpointError, match=r"non-finite weights in g_a\.stages\.0\.0\.weight"):
        load_codec(model)
    out = tmp_path / "run"
    r = _train(out, "--max-steps", "6", "train.checkpoint_every=2", "train.lr=1e30", "train.grad_clip=0")
    assert r.returncode == 2, r.stderr[-2000:]
    one_line(r, "cdc train: error:", "training diverged by step")
    assert not (out / "config.json").exists()
    for ckpt in out.glob("checkpoint-*"):  # whatever was kept is finite
        from safetensors.torch import load_file

        for f in ckpt.rglob("*.safetensors"):
            assert all(torch.isfinite(t).all() for t in load_file(f).values() if t.is_floating_point())


@pytest.mark.parametrize("override, fragment", [
    ("loss.lmbda=inf", "loss.lmbda: must be a finite number"),
    ("train.max_steps=0", "train.max_steps must be in [1, 1000000000]"),
    ("train.max_steps=1e30", "train.max_steps must be in [1, 1000000000]"),
    ("train.max_steps=1e400", "train.max_steps: cannot read"),
    ("train.log_every=0", "train.log_every must be >= 1"),
    ("train.num_workers=-1", "train.num_workers must be >= 0"),
    ("train.seed=99999999999999999999999", "train.seed must be in [0, 2**63)"),
    ("model.enc_mults=[1,2", "model.enc_mults: cannot read"),
])
def test_row24_bad_overrides_are_one_line(tmp_path, override, fragment):
    r = _train(tmp_path / "run", "--max-steps", "2", override, timeout=120)
    assert r.returncode == 2
    one_line(r, "cdc train: error:", fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, fragment", [
    (b'{"shards": ["x"], "output_dir": "o", "settings": {"train.max_steps": 1e30}}', "train.max_steps must be in"),
    (b'{"shards": ["x"], "output_dir": "o", "settings": {"train.max_steps": true}}', "train.max_steps: cannot read"),
    (b'{"shards": ["x"], "output_dir": "o", "settings": {"loss.lmbda": Infinity}}', "must be a finite number"),
    (b"\xff\xfe{}", "not UTF-8 text"),
    (b"[" * 100_000, "nested too deeply"),
])
def test_rows16_29_33_job_files_get_the_cli_rules(tmp_path, content, fragment):
    job = tmp_path / "job.json"
    job.write_bytes(content)
    r = subprocess.run([sys.executable, "-m", "cdc.train", "--job", str(job)], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    one_line(r, "cdc train: error:", fragment)


def test_row33_world_size_zero_is_refused_with_a_job(tmp_path):
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"shards": [str(TINY_SHARD)], "output_dir": str(tmp_path / "o")}))
    r = subprocess.run([sys.executable, "-m", "cdc.train", "--job", str(job), "--world-size", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    one_line(r, "cdc train: error:", "world_size must be >= 1")


# ------------------------------------------------------------------ rows 14, 19, 21: files that are not files
def test_rows14_19_fifos_and_devices_are_refused_without_reading(tmp_path):
    fifo = tmp_path / "f.png"
    os.mkfifo(fifo)
    cdc_fifo = tmp_path / "f.cdc"
    os.mkfifo(cdc_fifo)
    for args, name in ((["compress", str(fifo), "-m", "small-base", "-o", str(tmp_path / "o")], "f.png"),
                       (["info", str(cdc_fifo)], "f.cdc"), (["info", "/dev/zero"], "/dev/zero"),
                       (["decompress", "/dev/zero", "-m", "small-base", "-o", str(tmp_path / "o")], "/dev/zero")):
        r = subprocess.run([sys.executable, "-m", "cdc", *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, (args, r.stderr)
        one_line(r, "cdc: error:", name, "not a regular file")


def test_row21_a_seed_out_of_range_is_refused_by_the_parser_and_the_batch_goes_on(tmp_path):
    from cdc.zoo.checkpoint import save_codec

    model = save_codec(tiny_codec(), tmp_path / "model")
    (tmp_path / "bad.cdc").write_bytes(crafted(model, seed=2**64 + 5))
    (tmp_path / "good.cdc").write_bytes(crafted(model))
    r = subprocess.run([sys.executable, "-m", "cdc", "decompress", str(tmp_path / "bad.cdc"),
                        str(tmp_path / "good.cdc"), "-m", str(model), "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    one_line(r, "cdc: error:", "bad.cdc", "seed", "out of range")
    assert (tmp_path / "out" / "good.png").is_file()


# ------------------------------------------------------------------ rows 17, 18: limits count the coded pixels
@pytest.mark.slow
def test_row17_a_thin_image_is_tiled_by_its_padded_size_and_decodes_in_bounded_memory(tmp_path, monkeypatch):
    from cdc.coding.bitstream import Bitstream
    from cdc.coding.tiling import choose_tile, coded_pixels
    from cdc.zoo.checkpoint import save_codec

    assert coded_pixels(1, 100_000) == 64 * 100_032 and choose_tile("auto", 1, 100_000)  # 6.4 M coded pixels
    model = save_codec(tiny_codec(), tmp_path / "model")
    thin = tmp_path / "thin.png"
    Image.fromarray(np.tile(photo("coffee", (1, 400)), (1, 250, 1))).save(thin)
    r = subprocess.run([sys.executable, "-m", "cdc", "compress", str(thin), "-m", str(model), "-o",
                        str(tmp_path / "thin.cdc")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert Bitstream.from_bytes((tmp_path / "thin.cdc").read_bytes()).tile  # tiled, not one 6.4 MP window
    monkeypatch.setenv("CDC_MALLOC", "system")  # the working set, not the heap glibc is told to keep
    r, peak = peak_rss_mb(["decompress", tmp_path / "thin.cdc", "-m", model, "-o", tmp_path / "out"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert peak < 2000, peak


def test_row18_tiles_are_bounded_at_encode_and_decode(tmp_path):
    from cdc.zoo.checkpoint import save_codec

    model = save_codec(tiny_codec(), tmp_path / "model")
    png = tmp_path / "a.png"
    Image.fromarray(photo("coffee", (64, 64))).save(png)
    r = subprocess.run([sys.executable, "-m", "cdc", "compress", str(png), "-m", str(model), "--tile", "4224", "-o",
                        str(tmp_path / "a.cdc")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "4224" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "big.cdc").write_bytes(crafted(model, tile=4224, margin=0, height=4160, width=4160,
                                               latent_hw=(264, 264), strings=[b"x"] * 2))
    r = subprocess.run([sys.executable, "-m", "cdc", "decompress", str(tmp_path / "big.cdc"), "-m", str(model), "-o",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    one_line(r, "cdc: error:", "big.cdc", "over the tile limit of 4096")


# ------------------------------------------------------------------ row 6: PNG chunk checksums
def test_row6_a_png_with_a_flipped_idat_byte_is_refused_and_quarantined(tmp_path):
    import io as _io

    buf = _io.BytesIO()
    Image.fromarray(photo("coffee", (96, 128))).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[data.index(b"IDAT") + 100] ^= 0x10
    src = tmp_path / "src"
    src.mkdir()
    (src / "bitflip.png").write_bytes(bytes(data))
    Image.fromarray(photo("astronaut", (96, 128))).save(src / "ok.png")
    manifest = build([str(src)], tmp_path / "out", BuildConfig())
    assert [q["reason"] for q in manifest.quarantine] == [
        "truncated or corrupt PNG data (broken PNG file (bad header checksum in b'IDAT'))"]
    r = subprocess.run([sys.executable, "-m", "cdc", "compress", str(src / "bitflip.png"), "-m", "small-base", "-o",
                        str(tmp_path / "x.cdc")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    one_line(r, "cdc: error:", "bitflip.png", "truncated or corrupt PNG data")


# ------------------------------------------------------------------ rows 9, 22, 23: what a shard may hold
def _tiny_copy(tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "shards"
    shutil.copytree(TINY_SHARD, out)
    return out


@pytest.mark.parametrize("change, fragment", [
    ({"bytes": 1}, "the manifest says 1"),
    ({"name": "../other/train-000000.tar"}, "is not a file in the manifest's folder"),
    ({"name": "/etc/train-000000.tar"}, "is not a file in the manifest's folder"),
])
def test_row9_a_manifest_cannot_point_outside_its_folder_or_lie_about_sizes(tmp_path, change, fragment):
    from shards.reader import ShardError, resolve_shards

    shards = _tiny_copy(tmp_path)
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["shards"][0].update(change)
    (shards / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=fragment):
        resolve_shards(str(shards), "train")


def _sample_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    from shards.tarfiles import write_tar

    write_tar(path, members)


@pytest.mark.parametrize("members, fragment", [
    ([("a.json", b"{}")], "no image in the sample"),
    ([("a.png", b"\x89PNG\r\n\x1a\n garbage")], "member a:"),
])
def test_rows22_23_bad_samples_are_one_line_or_skipped(tmp_path, members, fragment):
    from shards.reader import ShardError, ShardStream

    bad = tmp_path / "bad.tar"
    buf = __import__("io").BytesIO()
    Image.fromarray(photo("coffee", (80, 80))).save(buf, format="PNG")
    _sample_tar(bad, members)
    with pytest.raises(ShardError, match=fragment):
        next(iter(ShardStream([str(bad)], 1, 64).lane_batches(0)))
    mixed = tmp_path / "mixed.tar"  # one bad and one good sample: every batch needs the good one
    _sample_tar(mixed, [*members, ("b.png", buf.getvalue())])
    with pytest.warns(UserWarning, match="sample skipped"):
        batches = list(itertools.islice(ShardStream([str(mixed)], 1, 64, skip_bad=True).lane_batches(0), 20))
    assert all(b.shape == (1, 3, 64, 64) for b in batches)


def test_row22_a_member_claiming_8_gib_is_refused_without_allocating(tmp_path):
    from shards.tarfiles import iter_tar

    header = bytearray(512)
    header[:5] = b"a.png"
    header[100:108] = b"0000644\0"
    header[124:136] = b"%011o\0" % (2**33 - 1)  # the largest size of an octal field
    header[148:156] = b" " * 8
    header[148:155] = b"%06o\0" % sum(header)
    with pytest.raises(ValueError, match="claims 8589934591 bytes"):
        list(iter_tar(__import__("io").BytesIO(bytes(header) + b"\0" * 1024)))


def test_row23_the_reader_decodes_what_the_builder_accepted(monkeypatch):
    """The builder applies its own pixel limit (above Pillow's 179 MP bomb guard); the reader used
    Pillow's and died on what the builder had accepted. Here Pillow's guard is made tiny instead of
    the image huge: the reader must not apply it."""
    import io as _io
    import random

    from PIL import Image as PILImage

    from shards.reader import decode_crop

    buf = _io.BytesIO()
    PILImage.fromarray(photo("coffee", (70, 90))).save(buf, format="PNG")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # 2x this raises DecompressionBombError in Pillow
    sample = {"__key__": "k", "__url__": "s.tar", "png": buf.getvalue()}
    assert decode_crop(sample, 64, random.Random(0)).shape == (3, 64, 64)


# ------------------------------------------------------------------ rows 12, 29: the evaluation cache
def test_rows12_29_an_edited_or_broken_cache_entry_is_a_miss_and_is_rewritten(tmp_path):
    from cdc.evaluation.cache import BaselineCache

    cache = BaselineCache(tmp_path, {"psnr-rgb": "v1"})
    cache.put("JPEG|q50", "img", {"bytes": 10, "psnr-rgb": 32.44}, None)
    assert cache.get("JPEG|q50", "img", False)[0]["psnr-rgb"] == 32.44
    path = next(tmp_path.rglob("*.json"))
    path.write_text(path.read_text().replace("32.44", "92.44"))  # one digit changed by hand
    assert cache.get("JPEG|q50", "img", False) is None
    path.write_text("[]")
    assert cache.get("JPEG|q50", "img", False) is None
    cache.put("JPEG|q50", "img", {"bytes": 10, "psnr-rgb": 32.44}, None)
    assert cache.get("JPEG|q50", "img", False)[0]["psnr-rgb"] == 32.44


# ------------------------------------------------------------------ rows 25, 27, 28, 29: one line each
@pytest.mark.parametrize("query, fragment", [
    ("best:bpp<=1.2.3", "'1.2.3' is not a number"),
    ("best:bpp<=0.3,objective=foo", "objective must be perception or distortion"),
    ("best:bpp<=0.3,colour=red", "unknown option 'colour=red'"),
])
def test_row25_bad_registry_queries_are_one_line(query, fragment):
    from cdc.registry.catalog import RegistryError, parse_best

    with pytest.raises(RegistryError, match=fragment):
        parse_best(query)


def test_row31_a_query_in_another_key_order_is_understood():
    from cdc.registry.catalog import parse_best

    assert parse_best("best: bpp <= 0.5, dataset=shards, objective=distortion") == (0.5, "distortion", "shards")
    assert parse_best("best:bpp<=0.5") == (0.5, "perception", None)  # the registry's one dataset


def test_rows27_28_29_cli_failures_are_one_line(tmp_path):
    (tmp_path / "notjson.json").write_text("not json")
    full = subprocess.run(["bash", "-c", f"{sys.executable} -m cdc info {REPO}/tests/golden/*.cdc | head -1"],
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in full.stderr and "BrokenPipe" not in full.stderr, full.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    for args, fragment in ((["init", "--preset", "tiny", "-o", str(blocker / "m")], "cannot write the checkpoint"),
                           (["plot", str(tmp_path / "notjson.json")], "not JSON"),
                           (["decompress", str(tmp_path / "notjson.json"), "-m", "small-base", "--device", "meta",
                             "-o", str(tmp_path / "o")], "--device meta: not supported")):
        r = subprocess.run([sys.executable, "-m", "cdc", *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, (args, r.stderr)
        one_line(r, "cdc: error:", fragment)


# ------------------------------------------------------------------ row 15: a server that stops answering
def test_row15_a_sleeping_http_server_fails_the_input_with_a_reason_in_bounded_time(tmp_path):
    import http.server
    import time

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(30)

        def do_HEAD(self):
            time.sleep(30)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/slow_cat.png"
        start = time.monotonic()
        env = {**os.environ, "CDC_HTTP_TIMEOUT_S": "1"}
        r = subprocess.run([sys.executable, "-m", "shards", "build", url, "-o", str(tmp_path / "out"),
                            "--workers", "1"], capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
        assert time.monotonic() - start < 60
        assert "Traceback" not in r.stderr
        assert "quarantined:" in r.stderr and "timed out after 1 s" in r.stderr, r.stderr
    finally:
        server.shutdown()


# ------------------------------------------------------------------ row 31: messages that say what happened
def test_row31_messages_name_the_real_cause(tmp_path):
    import io as _io

    from cdc.coding.bitstream import Bitstream, BitstreamError
    from shards.images import decode_image
    from shards.sources import SourceError, expand_sources

    data = crafted(save_codec_tiny(tmp_path))
    stream = Bitstream.from_bytes(data)
    bad = bytearray(data)
    bad[len(data) - 4 - len(stream.strings[1]) - 1] = 0x7f  # the last string's length byte, flipped high
    with pytest.raises(BitstreamError, match=r"corrupt string length \(127 bytes in a \d+-byte file\)"):
        Bitstream.from_bytes(bytes(bad))
    img = Image.fromarray(photo("coffee", (64, 64)))
    exif = img.getexif()
    exif[0x0112] = 9  # not an orientation
    buf = _io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    assert decode_image(buf.getvalue()).notes == []
    nan = np.full((64, 64), np.nan, np.float32)
    nan[:32] = 0.5
    buf = _io.BytesIO()
    Image.fromarray(nan, "F").save(buf, format="TIFF")
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")  # no raw numpy RuntimeWarning
        notes = decode_image(buf.getvalue()).notes
    assert "non-finite samples (NaN/inf) set to 0" in notes
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(SourceError, match="not a text list file"):
        expand_sources([str(listing)])


def save_codec_tiny(tmp_path: Path) -> Path:
    from cdc.zoo.checkpoint import save_codec

    return save_codec(tiny_codec(), tmp_path / "model")


# ------------------------------------------------------------------ row 11: the registry's download cache
@pytest.mark.slow
def test_row11_another_stores_version_1_is_never_served_from_this_ones_cache(tmp_path):
    """Two SQLite tracking stores each register a different tiny model as ``cdc-x-rho0`` version 1;
    resolving ``models:/cdc-x-rho0/1`` against each gives that store's model, and a cache entry that
    lost its ``config.json`` is fetched again."""
    code = '''
import json, sys
from pathlib import Path
import mlflow
from cdc.zoo.checkpoint import read_checkpoint_info, save_codec
from cdc.registry.catalog import register, resolve
from conftest import tiny_codec
root, seed = Path(sys.argv[1]), int(sys.argv[2])
model = save_codec(tiny_codec(seed=seed), root / f"model{seed}")
with mlflow.start_run():
    register(model, {"shards": {"bpp": 0.1 + seed}}, "shards", f"key{seed}", 1)
path = resolve("models:/cdc-x-rho0/1", cache=root / "cache")
print(json.dumps([read_checkpoint_info(path)["fingerprint"], read_checkpoint_info(model)["fingerprint"], str(path)]))
'''
    results = []
    for seed in (0, 1):
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/store{seed}.db",
               "PYTHONPATH": str(REPO / "tests")}
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(seed)], capture_output=True, text=True,
                           timeout=600, env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        results.append(json.loads(r.stdout.strip().splitlines()[-1]))
    (served0, made0, path0), (served1, made1, path1) = results
    assert served0 == made0 and served1 == made1 and made0 != made1 and path0 != path1
    Path(path1, "config.json").unlink()  # an incomplete entry
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/store1.db"}
    fetch = ("from pathlib import Path; from cdc.registry.catalog import resolve; "
             f"print(resolve('models:/cdc-x-rho0/1', cache=Path({str(tmp_path)!r}) / 'cache'))")
    again = subprocess.run([sys.executable, "-c", fetch], capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and Path(again.stdout.strip(), "config.json").is_file(), again.stderr[-2000:]
