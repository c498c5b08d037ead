"""The adversarial pass of the reliability issue, row by row: every bad input ends in one line on
stderr and a non-zero exit (never a traceback, a hang or a lost file). Rows 1, 2, 15 and 20 live in
``test_cli.py`` / ``test_train.py`` / ``test_shards.py``."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, peak_rss_mb, photo, run_cli
from PIL import Image

from cdc.cli import main
from cdc.coding.bitstream import Bitstream
from cdc.coding.coder import Coder
from cdc.zoo.checkpoint import load_codec

TINY_SHARD = REPO / "tests" / "assets" / "tiny-shard"


def one_line(proc_or_err, prefix: str, *fragments: str) -> str:
    """The single error line of a failed command (no traceback), containing ``fragments``."""
    err = proc_or_err if isinstance(proc_or_err, str) else proc_or_err.stderr
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = tmp_path_factory.mktemp("adv") / "model"
    assert main(["init", "--preset", "tiny", "-o", str(out)]) == 0
    return out


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(photo("coffee", (96, 128))).save(path)
    return path


def crafted(model: Path, **changes) -> bytes:
    """A CRC-valid ``.cdc`` file of ``model`` whose header fields are replaced by ``changes``."""
    coder = Coder(load_codec(model))
    x = np.asarray(Image.fromarray(photo("coffee", (64, 64))))
    import torch

    data = coder.encode(torch.from_numpy(x.copy()).permute(2, 0, 1)[None].float() / 255).data
    stream = Bitstream.from_bytes(data)
    fields = {**stream.__dict__, **changes}
    return Bitstream(**fields).to_bytes()


# ---------------------------------------------------------------- rows 3, 4: missing and corrupt shards
def test_row3_all_shards_missing_fails_at_once_and_names_them(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text((TINY_SHARD / "manifest.json").read_text())  # shard files not copied
    r = subprocess.run([sys.executable, str(REPO / "cdc" / "train.py"), "--shards", str(shards), "--output-dir",
                        str(tmp_path / "out"), "--max-steps", "2"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 2  # it used to spin forever
    one_line(r, "cdc train: error:", "1 of 1 train shards missing", "train-000000.tar")
    assert not (tmp_path / "out").exists()


def test_row4_a_missing_or_corrupt_shard_fails_unless_skipping_is_asked_for(tmp_path):
    from shards.reader import ShardError, ShardStream, resolve_shards

    good = TINY_SHARD / "train-000000.tar"
    corrupt = tmp_path / "corrupt.tar"
    corrupt.write_bytes(good.read_bytes()[:700] + b"\x00garbage" * 64)
    missing = str(tmp_path / "gone.tar")
    with pytest.raises(ShardError, match=r"1 of 2 train shards missing \(first: .*gone\.tar\)"):
        resolve_shards([str(good), missing])
    with pytest.warns(UserWarning, match="missing shard skipped"):
        assert resolve_shards([str(good), missing], skip_missing=True) == [str(good)]
    with pytest.raises(ShardError, match=r"corrupt\.tar.*skip_bad_shards"):
        next(iter(ShardStream([str(corrupt)], batch_size=2, crop=64)))
    with pytest.warns(UserWarning, match=r"corrupt\.tar.*skipping"):
        batch = next(iter(ShardStream([str(good), str(corrupt)], batch_size=2, crop=64, skip_bad=True)))
    assert batch.shape == (2, 3, 64, 64)
    with pytest.warns(UserWarning), pytest.raises(ShardError, match="every one of the 1 shards is unreadable"):
        next(iter(ShardStream([str(corrupt)], batch_size=2, crop=64, skip_bad=True)))  # never spins


def test_row3_a_stalled_loader_ends_the_run(tmp_path):
    from cdc.training.state import DataWatchdog

    code = ("import time; from cdc.training.state import DataWatchdog; DataWatchdog(0.5, 'shards/x'); time.sleep(300)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=200, cwd=REPO)
    assert r.returncode == 3  # long before its 300 s sleep ends
    one_line(r, "cdc train: error:", "shards/x", "no training batch for 0.5 s")
    DataWatchdog(0, "disabled").stop()  # 0 disables it


# ---------------------------------------------------------------- rows 5, 6: FIFOs and devices
def test_rows5_6_fifo_and_device_inputs_are_quarantined_not_read(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(photo("coffee", (96, 128))).save(src / "good.png")
    os.mkfifo(src / "pipe.png")
    (src / "zero.png").symlink_to("/dev/zero")
    r = subprocess.run([sys.executable, "-m", "shards", "build", str(src), "-o", str(tmp_path / "out"),
                        "--workers", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1])["written"] == 1
    assert "pipe.png: cannot read: not a regular file (a FIFO)" in r.stderr
    assert "zero.png: cannot read: not a regular file (a character device)" in r.stderr


# ---------------------------------------------------------------- row 16: a killed build leaves nothing running
def _children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


@pytest.mark.slow
def test_row16_killing_a_parallel_build_kills_its_workers_and_a_rerun_cleans_staging(tmp_path):
    import signal

    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        Image.fromarray(np.roll(photo("coffee", (192, 256)), i, axis=1)).save(src / f"p{i:02d}.png")
    args = [str(src), "--chunk-size", "1", "--workers", "2", "-o", str(tmp_path / "out")]
    proc = subprocess.Popen([sys.executable, "-m", "shards", "build", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(_children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) >= 2, "the pool never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2)
    assert not {w for w in workers if Path(f"/proc/{w}").exists()
                and "Z" not in Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[0]}
    # a finished build whose staging survived (a kill after the manifest) loses it on the next run
    assert subprocess.run([sys.executable, "-m", "shards", "build", *args], capture_output=True).returncode == 0
    (tmp_path / "out" / ".staging").mkdir()
    (tmp_path / "out" / ".staging" / "left.json").write_text("{}")
    assert subprocess.run([sys.executable, "-m", "shards", "build", *args], capture_output=True).returncode == 0
    assert not (tmp_path / "out" / ".staging").exists()


# ---------------------------------------------------------------- rows 7, 8, 9: bounded memory and time
def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims ``width`` x ``height`` and whose pixel data is a few bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))


def test_row7_an_image_over_the_limit_is_refused_from_its_header(tmp_path, model):
    big = tmp_path / "big.png"
    _png_header_only(big, 20000, 20000)
    r = run_cli("compress", big, "-m", model, "-o", tmp_path / "big.cdc")
    assert r.returncode == 1 and not (tmp_path / "big.cdc").exists()
    one_line(r, "cdc: error:", "big.png", "20000x20000", "over the limit of 268435456")
    _png_header_only(big, 12000, 12000)  # under the limit: decoded (it is truncated), never allocated whole
    r = run_cli("compress", big, "-m", model, "-o", tmp_path / "big.cdc", "--max-pixels", "16777216")
    assert r.returncode == 1 and not (tmp_path / "big.cdc").exists()
    one_line(r, "cdc: error:", "big.png", "12000x12000", "over the limit of 16777216")


@pytest.mark.slow
def test_row7_a_12000_square_photo_is_coded_tile_by_tile_in_bounded_memory(tmp_path, model):
    """It used to take 4.25 GB and die in the allocator; tiled, encoding stays near the image's own
    size and decoding near one tile's activations (benchmarks/tiling.py measures the scaling)."""
    big = tmp_path / "big.png"
    pattern = np.zeros((12000, 12000, 3), np.uint8)
    pattern[::7, ::5] = 200
    Image.fromarray(pattern).save(big)
    Image.fromarray(pattern[:4000, :6000]).save(tmp_path / "crop.png")
    del pattern
    r = run_cli("compress", big, "-m", model, "-o", tmp_path / "big.cdc", "--steps", "1")
    assert r.returncode == 0, r.stderr
    assert "12000x12000, 768-px tiles" in r.stdout and "Traceback" not in r.stderr
    header = json.loads(run_cli("info", tmp_path / "big.cdc").stdout)
    assert header["format_version"] == 2 and header["tile"] == 768 and header["tile_margin"] == 64
    r = run_cli("compress", big, "-m", model, "-o", tmp_path / "whole.cdc", "--tile", "off")
    assert r.returncode == 1 and not (tmp_path / "whole.cdc").exists()
    one_line(r, "cdc: error:", "big.png", "over the whole-image limit", "--tile auto")
    # decoding: a 6000 x 4000 crop keeps the test to a minute (12000² decodes the same way, 2 min on 2 cores)
    r, _ = peak_rss_mb(["compress", tmp_path / "crop.png", "-m", model, "-o", tmp_path / "crop.cdc", "--steps", "1"],
                        tmp_path)
    assert r.returncode == 0, r.stderr
    r, decode_mb = peak_rss_mb(["decompress", tmp_path / "crop.cdc", "-m", model, "-o", tmp_path / "crop.out.png"],
                                tmp_path)
    assert r.returncode == 0 and "6000x4000, 48 tiles" in r.stdout, r.stderr
    assert Image.open(tmp_path / "crop.out.png").size == (6000, 4000)
    assert decode_mb < 2500, decode_mb  # whole-image decoding of 24 MP would need ~16 GB


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"height": 16384, "width": 16384, "latent_hw": (1024, 1024)}, "16384x16384 pixels coded as one tile, over"),
    ({"height": 20000, "width": 20000, "latent_hw": (1252, 1252), "tile": 768, "margin": 64},
     "20000x20000 pixels, over the limit of 268435456"),
    ({"steps": 999}, "999 DDIM steps, over the limit of 256"),
])
def test_rows8_9_a_file_cannot_set_the_decoders_memory_or_time(tmp_path, model, changes, fragment):
    path = tmp_path / "evil.cdc"
    path.write_bytes(crafted(model, **changes))
    r = run_cli("decompress", path, "-m", model, "-o", tmp_path / "out.png", timeout=180)  # decoding: hours
    assert r.returncode == 1 and not (tmp_path / "out.png").exists()
    one_line(r, "cdc: error:", "evil.cdc", fragment)


def test_row9_the_user_may_choose_the_steps(tmp_path, model):
    path = tmp_path / "slow.cdc"
    path.write_bytes(crafted(model, steps=999))
    assert run_cli("decompress", path, "-m", model, "-o", tmp_path / "a.png", "--steps", "2").returncode == 0


# ---------------------------------------------------------------- rows 10, 11, 14, 15: numbers at parse time
@pytest.mark.parametrize("args", [
    ["--seed", "18446744073709551616"], ["--seed", "-1"], ["--gamma", "-1"], ["--gamma", "100"],
    ["--gamma", "nan"], ["--gamma", "inf"], ["--steps", "0"], ["--max-pixels", "0"],
])
def test_rows10_11_invalid_numbers_are_refused_at_parse_time(tmp_path, png, model, args):
    r = run_cli("compress", png, "-m", model, "-o", tmp_path / "x.cdc", *args)
    assert r.returncode == 2 and not (tmp_path / "x.cdc").exists()
    one_line(r, "cdc compress: error: argument", args[0])


@pytest.mark.parametrize("args", [["--max-steps", "0"], ["--lmbda", "-1"], ["--rho", "1.5"], ["--rho", "nan"]])
def test_row14_training_numbers_are_refused_at_parse_time(tmp_path, args):
    r = subprocess.run([sys.executable, str(REPO / "cdc" / "train.py"), "--shards", str(TINY_SHARD),
                        "--output-dir", str(tmp_path / "out"), *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and not (tmp_path / "out").exists()
    one_line(r, "train.py: error: argument", args[0])


def test_row14_broken_manifests_and_outputs_are_one_line(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    manifest = json.loads((TINY_SHARD / "manifest.json").read_text())
    del manifest["totals"]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    r = subprocess.run([sys.executable, str(REPO / "cdc" / "train.py"), "--shards", str(bad), "--output-dir",
                        str(tmp_path / "out"), "--max-steps", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    one_line(r, "cdc train: error:", "incomplete manifest (no 'totals')")
    no_shards = json.loads((TINY_SHARD / "manifest.json").read_text())
    del no_shards["shards"]
    (bad / "manifest.json").write_text(json.dumps(no_shards))
    for command in ("verify", "stats"):
        r = subprocess.run([sys.executable, "-m", "shards", command, str(bad / "manifest.json")], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 1
        one_line(r, "shards: error:", "incomplete manifest (no 'shards')")
    (tmp_path / "file").write_text("x")
    r = subprocess.run([sys.executable, "-m", "shards", "build", str(TINY_SHARD), "-o", str(tmp_path / "file")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and (tmp_path / "file").read_text() == "x"
    one_line(r, "shards: error:", "is not a directory")
    r = subprocess.run([sys.executable, "-m", "shards", "build", str(TINY_SHARD), "-o", str(tmp_path / "o"),
                        "--resize-shorter", "-5"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    one_line(r, "python -m shards build: error: argument --resize-shorter")


# ---------------------------------------------------------------- rows 12, 13: outputs and checkpoints
def test_row12_a_bad_output_path_fails_that_file_only(tmp_path, png, model, capsys):
    other = tmp_path / "other.png"
    Image.fromarray(photo("chelsea", (96, 128))).save(other)
    out = tmp_path / "out"
    (out / "photo.cdc").mkdir(parents=True)  # the output name is taken by a directory
    assert main(["compress", str(png), str(other), "-m", str(model), "-o", str(out), "--overwrite"]) == 1
    one_line(capsys.readouterr().err, "cdc: error:", "photo.cdc")
    assert (out / "other.cdc").is_file()  # the rest of the batch went on
    (tmp_path / "plainfile").write_text("mine")
    assert main(["compress", str(png), str(other), "-m", str(model), "-o", str(tmp_path / "plainfile")]) == 1
    one_line(capsys.readouterr().err, "cdc: error:", "plainfile: exists and is not a directory")
    assert (tmp_path / "plainfile").read_text() == "mine"


@pytest.mark.parametrize("damage", ["config", "weights"])
def test_row13_damaged_checkpoints_are_one_line(tmp_path, png, damage):
    assert main(["init", "--preset", "tiny", "-o", str(tmp_path / "m")]) == 0
    if damage == "config":
        (tmp_path / "m" / "config.json").write_text('{"config": {"model": ')
    else:
        weights = tmp_path / "m" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    r = run_cli("compress", png, "-m", tmp_path / "m", "-o", tmp_path / "x.cdc")
    assert r.returncode == 1
    one_line(r, "cdc: error:", "broken checkpoint config" if damage == "config" else "unreadable weights")


# ---------------------------------------------------------------- rows 17, 18: servers down
@pytest.mark.parametrize(("uri", "fragment"), [
    ("http://127.0.0.1:9", "unreachable"), ("foo://bar", "unsupported scheme 'foo'"),
])
def test_rows17_18_tracking_problems_fail_in_seconds(tmp_path, png, uri, fragment):
    env = {"MLFLOW_TRACKING_URI": uri}
    for args in (["models", "list"], ["compress", png, "-m", "models:/cdc-x-rho0@q1", "-o", tmp_path / "x.cdc"],
                 ["compress", png, "-m", "best:bpp<=0.5", "-o", tmp_path / "x.cdc"]):
        r = run_cli(*args, env=env, timeout=180)  # MLflow's own retries took 250 s
        assert r.returncode == 1, r.stderr
        line = one_line(r, "cdc: error:", fragment)
        assert "make serve" in line or "unsupported" in line


def test_row17_a_registry_that_is_down_is_reported_before_pytorch_loads(tmp_path, png):
    code = "import sys; from cdc.cli import main; rc = main(sys.argv[1:]); print(rc, 'torch' in sys.modules)"
    for args in (["models", "list"], ["compress", png, "-m", "models:/cdc-x-rho0@q1", "-o", tmp_path / "x.cdc"]):
        r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                           timeout=180, env={**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
        assert r.stdout.split()[-2:] == ["1", "False"], r.stdout + r.stderr  # exit 1, no torch imported
        one_line(r, "cdc: error:", "unreachable")


def test_row17_training_goes_on_when_the_tracking_server_is_down(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "cdc" / "train.py"), "--shards", str(TINY_SHARD), "--output-dir",
                        str(tmp_path / "out"), "--max-steps", "2", "train.crop=64", "train.batch_size=2",
                        "train.num_workers=0", "train.log_every=1", "train.sample_every=0"],
                       capture_output=True, text=True, timeout=300, env={**os.environ,
                                                                         "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "MLflow tracking off" in r.stderr and "make serve" in r.stderr
    assert len((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "out" / "model.safetensors").is_file()


# ---------------------------------------------------------------- row 19: conversions are announced
def test_row19_16_bit_and_multi_frame_inputs_warn(tmp_path, model):
    import imagecodecs

    deep = tmp_path / "deep.png"
    deep.write_bytes(imagecodecs.png_encode(photo("coffee", (64, 64)).astype(np.uint16) * 257))
    frames = [Image.fromarray(photo(name, (64, 64))) for name in ("coffee", "chelsea")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    r = run_cli("compress", deep, tmp_path / "anim.gif", "-m", model, "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "deep.png: 16-bit RGB samples reduced to 8 bits" in r.stderr
    assert "anim.gif: 2 frames: only the first is used" in r.stderr
    info = json.loads(run_cli("info", tmp_path / "out" / "deep.cdc").stdout)
    assert info["entropy_model"] == "hyperprior"
