"""The project's image, built with podman from a locally made Debian base and run (no registry needed).

``infra/podman/make-base.sh`` debootstraps the base (kept as ``localhost/cdc-base:bookworm`` once made:
it only depends on Debian's archive); the image itself is built from this checkout each time (podman's
layer cache keeps the 7 GB dependency layer while the lock is unchanged, so the image stays tagged
``localhost/cdc:test``). Inside it: ``cdc --help``, a tiny ``python -m cdc.train`` run, a tiny
``train-grid`` flow (Prefect's ephemeral API, MLflow's local SQLite store) on a mounted folder, and
the compose file's services that run the image. Needs root, podman, runc and debootstrap (``.ci/run`` installs them
where it can); skipped, with the reason, where they are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request

import pytest
from conftest import REPO, free_port, photo
from PIL import Image

BASE = "localhost/cdc-base:bookworm"
IMAGE = "localhost/cdc:test"
MISSING = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"no container engine: {', '.join(MISSING)} not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the local base image is made with debootstrap, as root"),
]
ENV = {**os.environ, "CONTAINERS_CONF": str(REPO / "infra" / "podman" / "containers.conf")}


def podman(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", "--runtime", "runc", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def image():
    """The image built from this checkout (``infra/podman/build-image.sh``: it waits for a build already
    under way, such as the one CI starts before the suite, and then reuses its layers)."""
    built = subprocess.run([str(REPO / "infra" / "podman" / "build-image.sh"), IMAGE], env=ENV, capture_output=True,
                           text=True, timeout=3600)
    if built.returncode == 3:
        pytest.skip(built.stderr.strip())
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return IMAGE  # kept: the next build reuses its dependency layer


def run_in(image: str, data, *command: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """``command`` in the image with ``data`` mounted at /data (the image's CDC_HOME is /data/.cdc)."""
    return podman("run", "--rm", "--network", "host", "-v", f"{data}:/data", "-w", "/app", image, *command,
                  timeout=timeout)


@pytest.fixture
def data(tmp_path):
    """A folder for /data with four photos in ``corpus/``."""
    os.chmod(tmp_path, 0o777)  # the image runs as uid 10001
    (tmp_path / "corpus").mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        Image.fromarray(photo(name)).save(tmp_path / "corpus" / f"{name}.png")
    return tmp_path


def test_image_runs_the_cli(image, data):
    result = run_in(image, data, "cdc", "--help")
    assert result.returncode == 0, result.stderr
    assert "compress" in result.stdout and "decompress" in result.stdout


def test_image_trains_a_tiny_model(image, data):
    sharded = run_in(image, data, "python", "-m", "shards", "build", "/data/corpus", "--output", "/data/shards",
                     "--split-val", "0.25", "--patch-size", "256")
    assert sharded.returncode == 0, sharded.stdout + sharded.stderr
    trained = run_in(image, data, "python", "-m", "cdc.train", "--preset", "tiny", "--shards",
                     "/data/shards/manifest.json", "--output-dir", "/data/run", "--max-steps", "3",
                     "train.num_workers=0", "train.log_every=1")
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert json.loads((data / "run" / "train_summary.json").read_text())["step"] == 3
    assert (data / "run" / "model.safetensors").is_file()


def test_image_runs_a_tiny_grid_flow(image, data):
    code = ("import json; from pipelines.train_grid import train_grid;"
            "s = train_grid(grid={'lmbdas': [0.01], 'rhos': [0.0]},"
            " data={'corpus': ['/data/corpus'], 'patch_size': 256, 'split_val': 0.25},"
            " training={'preset': 'tiny', 'cell_train_steps': 5, 'warmup_train_steps': 5},"
            " evaluation={'limit': 1, 'baselines': ['jpeg'], 'metrics': 'psnr-rgb'},"
            " execution={'output_dir': '/data/grid'});"
            "print('SUMMARY', json.dumps({'failures': s['failures'], 'cells': len(s['cells'])}))")
    flow = run_in(image, data, "python", "-c", code, timeout=1500)
    assert flow.returncode == 0, flow.stdout[-3000:] + flow.stderr[-3000:]
    summary = json.loads(flow.stdout.split("SUMMARY", 1)[1].strip().splitlines()[0])
    assert summary == {"failures": {}, "cells": 1}
    assert (data / ".cdc" / "mlflow.db").is_file() and list((data / "grid").rglob("model.safetensors"))


def _answers(url: str, body: bytes | None = None, timeout_s: float = 180) -> bytes:
    """The first successful response of ``url`` (POST ``body`` when given) within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def test_image_runs_the_compose_services(image, data):
    """compose's ``mlflow``, ``prefect-server`` and ``worker`` services, each started from the image with
    its compose command; SQLite and a folder stand in for PostgreSQL and MinIO, whose images only exist
    on public registries."""
    mlflow, prefect = free_port(), free_port()
    api = f"http://127.0.0.1:{prefect}/api"
    names = [f"cdc-test-{service}-{os.getpid()}" for service in ("mlflow", "prefect", "worker")]
    commands = [
        ("mlflow", "server", "--host", "127.0.0.1", "--port", str(mlflow), "--backend-store-uri",
         "sqlite:////data/mlflow.db", "--artifacts-destination", "/data/artifacts"),
        ("prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect)),
        ("worker", "cdc-process"),
    ]
    env = ["-e", "PREFECT_SERVER_ANALYTICS_ENABLED=false", "-e", "PREFECT_HOME=/data/prefect",
           "-e", f"PREFECT_API_URL={api}", "-e", f"MLFLOW_TRACKING_URI=http://127.0.0.1:{mlflow}"]
    try:
        for name, command in zip(names, commands, strict=True):
            if command[0] == "worker":  # compose starts it once the servers are healthy
                assert json.loads(_answers(f"{api}/health")) is True
                assert _answers(f"http://127.0.0.1:{mlflow}/health") == b"OK"
            started = podman("run", "-d", "--name", name, "--network", "host", "-v", f"{data}:/data", *env, image,
                             *command)
            assert started.returncode == 0, started.stderr
        deadline = time.monotonic() + 120
        while not (workers := json.loads(_answers(f"{api}/work_pools/cdc-process/workers/filter", b"{}"))):
            assert time.monotonic() < deadline, "no worker joined the pool cdc-process"
            time.sleep(2)
        assert workers[0]["status"] == "ONLINE"
    finally:
        logs = {name: podman("logs", name).stderr[-1500:] for name in names}
        podman("rm", "--force", *names)
    assert (data / "mlflow.db").is_file(), logs
