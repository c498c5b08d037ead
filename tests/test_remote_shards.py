"""Shards on object storage against a real S3-compatible server (moto's server mode on 127.0.0.1):
build to ``s3://`` (manifest last, resume by what is there), verify remotely, train from ``s3://``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, free_port, photo
from PIL import Image

from shards.manifest import is_remote, manifest_path


def test_remote_locations_and_manifest_paths(tmp_path):
    assert is_remote("s3://b/p") and is_remote("https://h/x.tar") and not is_remote("file:///x") and not is_remote("a")
    assert manifest_path("s3://b/corpus/") == "s3://b/corpus/manifest.json"
    assert manifest_path("s3://b/corpus/train-{000000..000003}.tar") == "s3://b/corpus/train-{000000..000003}.tar"
    (tmp_path / "manifest.json").write_text("{}")
    assert manifest_path(tmp_path) == str(tmp_path / "manifest.json")


@pytest.fixture
def s3(tmp_path):
    """A moto S3 server on loopback and the environment that points boto/s3fs at it."""
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.2)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": endpoint, "CDC_HOME": str(tmp_path / "cdc-home")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("corpus")
    try:
        yield {**os.environ}
    finally:
        server.kill()
        server.wait()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.slow
def test_build_to_s3_resume_verify_and_train_from_it(tmp_path, s3):
    import s3fs

    src = tmp_path / "src"
    src.mkdir()
    for i, name in enumerate(["astronaut", "coffee", "chelsea", "rocket"]):
        Image.fromarray(photo(name, (160, 200))).save(src / f"{i}.png")
    url = "s3://corpus/dev"
    build = [sys.executable, "-m", "shards", "build", str(src), "-o", url, "--max-count", "1", "--workers", "1",
             "--work-dir", str(tmp_path / "work")]
    r = subprocess.run(build, env=s3, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    fs = s3fs.S3FileSystem()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("corpus/dev"))
    assert names == ["manifest.json", *[f"train-{i:06d}.tar" for i in range(4)]]
    manifest = json.loads(fs.cat("corpus/dev/manifest.json"))
    assert [s["name"] for s in manifest["shards"]] == names[1:]

    # a lost shard and a lost work directory: the rerun rebuilds locally and re-uploads only what is missing
    fs.rm("corpus/dev/train-000002.tar")
    before = {n: fs.info(f"corpus/dev/{n}")["LastModified"] for n in names[1:] if n != "train-000002.tar"}
    r = subprocess.run([*build[:-1], str(tmp_path / "work2")], env=s3, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    fs.invalidate_cache()
    assert fs.exists("corpus/dev/train-000002.tar")
    assert {n: fs.info(f"corpus/dev/{n}")["LastModified"] for n in before} == before  # untouched
    r = subprocess.run([*build[:-1], str(tmp_path / "work3")], env=s3, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and not (tmp_path / "work3").exists()  # the remote manifest matches: nothing to do

    r = subprocess.run([sys.executable, "-m", "shards", "verify", url], env=s3, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "4 shards, 4 samples: OK" in r.stdout, r.stdout + r.stderr
    fs.pipe("corpus/dev/train-000001.tar", b"not a tar")
    r = subprocess.run([sys.executable, "-m", "shards", "verify", url], env=s3, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and "train-000001.tar: size" in r.stderr

    fs.pipe("corpus/dev/train-000001.tar", (tmp_path / "work2" / "train-000001.tar").read_bytes())
    r = subprocess.run([sys.executable, "-m", "cdc.train", "--shards", url, "--output-dir", str(tmp_path / "run"),
                        "--max-steps", "2", "train.sample_every=0", "train.crop=64", "train.num_workers=1"],
                       env=s3, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["step"] == 2
    assert json.loads((tmp_path / "run" / "run_spec.json").read_text())["shards"] == [url]


def test_transient_errors_are_retried_a_missing_object_is_not(monkeypatch):
    import shards.remote as remote

    monkeypatch.setattr(remote.time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return "ok"

    assert remote.with_retries(flaky) == "ok" and len(calls) == 3
    calls.clear()

    def missing():
        calls.append(1)
        raise FileNotFoundError("s3://b/x.tar")

    with pytest.raises(FileNotFoundError):
        remote.with_retries(missing)
    assert len(calls) == 1
    with pytest.raises(ConnectionResetError):
        remote.with_retries(lambda: (_ for _ in ()).throw(ConnectionResetError("down")))


@pytest.mark.slow
def test_issue27_rows2_8_publish_removes_only_its_own_shards_and_never_keeps_other_bytes(tmp_path, s3):
    """Row 2: a foreign ``backup-000001.tar`` under the prefix survives; row 8: a build of other images of
    the same shard sizes replaces the shards (equal sizes are common: tars pad to 10 KiB)."""
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.pipe("corpus/ds/backup-000001.tar", b"someone's backup")
    url = "s3://corpus/ds"

    def build(names: tuple[str, ...], work: str) -> dict:
        src = tmp_path / work / "src"
        src.mkdir(parents=True)
        for i, name in enumerate(names):
            Image.fromarray(photo(name, (64, 64))).save(src / f"{i}.png")
        r = subprocess.run([sys.executable, "-m", "shards", "build", str(src), "-o", url, "--max-count", "1",
                            "--workers", "1", "--work-dir", str(tmp_path / work / "work")],
                           env=s3, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        fs.invalidate_cache()
        return json.loads(fs.cat("corpus/ds/manifest.json"))

    build(("astronaut", "coffee"), "a")
    second = build(("chelsea",), "b")
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls("corpus/ds"))
    assert names == ["backup-000001.tar", "manifest.json", "train-000000.tar"]
    assert fs.cat("corpus/ds/backup-000001.tar") == b"someone's backup"
    import hashlib

    assert hashlib.sha256(fs.cat("corpus/ds/train-000000.tar")).hexdigest() == second["shards"][0]["sha256"]
    r = subprocess.run([sys.executable, "-m", "shards", "verify", url], env=s3, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
