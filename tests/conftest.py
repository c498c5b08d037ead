"""Shared fixtures: tiny seeded codecs, real photos shipped inside scikit-image's wheel."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

# pytest-xdist runs several workers, each running PyTorch itself and in the subprocesses it starts. At
# PyTorch's default every one of them starts a thread per core, and OpenMP threads that wait at each op's
# barrier for a descheduled sibling are slow: two tiled 6000x4000 decodes side by side on 2 cores took
# 271 s at the default and 99 s at one thread each. So the cores are shared out before torch loads;
# subprocesses inherit the share, and an OMP_NUM_THREADS the caller set wins.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _WORKERS)))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).with_name("golden")
REGENERATE = os.environ.get("CDC_REGENERATE_GOLDEN") == "1"
# Tests never read or fill the user's baseline results cache (subprocesses inherit this).
os.environ["CDC_EVAL_CACHE"] = tempfile.mkdtemp(prefix="cdc-eval-cache-")
atexit.register(shutil.rmtree, os.environ["CDC_EVAL_CACHE"], ignore_errors=True)


# The slow end-to-end files, longest first (measured wall times on a 2-core host, two files at a time:
# science 700 s, pipeline 530 s, slurm 440 s, train 440 s (760 s when its compiled step misses the inductor
# cache), then 90-270 s each). ``make test`` runs them with
# ``--dist loadfile --no-loadscope-reorder``, so xdist hands files out in this order: the longest start first
# and no long file runs alone at the end (by default xdist starts the files with the most tests first).
LONGEST_FIRST = ("test_science.py", "test_pipeline.py", "test_slurm.py", "test_train.py", "test_serve.py",
                 "test_learning.py", "test_image.py", "test_eval.py", "test_reliability.py", "test_adversarial.py")


def pytest_collection_modifyitems(config, items):
    """Order the collected tests by ``LONGEST_FIRST`` (stable: other files keep their order, after these)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def prefect_harness():
    """Prefect's test server and database (``prefect_test_harness``), given 180 s to start.

    Prefect's own bound is 30 s, which a 2-core machine running another test file beside this one
    (``pytest -n 2``) can exceed while the server imports and migrates its database.
    """
    from prefect.testing.utilities import prefect_test_harness

    return prefect_test_harness(server_startup_timeout=180)


def free_port() -> int:
    """A TCP port free on the loopback interface now (for servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo(name: str = "astronaut", size: tuple[int, int] | None = None) -> np.ndarray:
    """A real RGB photo from scikit-image's bundled data (uint8 H x W x 3), optionally cropped."""
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if size is not None:
        img = img[: size[0], : size[1]]
    return np.ascontiguousarray(img[..., :3])


def photo_tensor(name: str = "astronaut", size: tuple[int, int] | None = None) -> torch.Tensor:
    return torch.from_numpy(photo(name, size)).permute(2, 0, 1)[None].float() / 255


def tiny_codec(seed: int = 0, overrides: tuple[str, ...] = ()):
    from cdc.config import load_config
    from cdc.models.codec import CDCCodec

    torch.manual_seed(seed)
    codec = CDCCodec(load_config("tiny", overrides)).eval()
    codec.update(force=True)
    return codec


@pytest.fixture
def codec():
    return tiny_codec()


@pytest.fixture
def model_dir(tmp_path):
    """A saved tiny checkpoint directory."""
    from cdc.zoo.checkpoint import save_codec

    return save_codec(tiny_codec(), tmp_path / "model")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m cdc ARGS`` in a real subprocess (``timeout`` seconds: a hang fails the test)."""
    return subprocess.run(
        [sys.executable, "-m", "cdc", *map(str, args)], cwd=cwd, capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=timeout,
    )


# Linux copies the exec-ing process's old peak into the child's ``ru_maxrss`` (``exec_mmap``), and a
# vfork'd child execs from pytest's own address space: measured directly, a CLI run reports pytest's
# peak. A small Python in between absorbs that inheritance; its child's peak is the command's own.
_MEASURE = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[2:]); _, s, u = os.wait4(p.pid, 0); "
            "open(sys.argv[1], 'w').write(f'{os.waitstatus_to_exitcode(s)} {u.ru_maxrss}')")


def peak_rss_mb(args: list, tmp_path: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``python -m cdc ARGS``; its result and its own peak resident set in MB (from ``wait4``)."""
    usage = tmp_path / "rusage"
    r = subprocess.run([sys.executable, "-c", _MEASURE, str(usage), sys.executable, "-m", "cdc", *map(str, args)],
                       capture_output=True, text=True, timeout=900)
    code, kib = usage.read_text().split()
    return subprocess.CompletedProcess(args, int(code), r.stdout, r.stderr), int(kib) / 1024


def _free_port_run(count: int) -> int:
    """The first of ``count`` consecutive TCP ports free on the loopback interface now."""
    import random

    for _ in range(200):
        base = random.randint(20000, 40000)
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} consecutive free ports")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real two-node Slurm cluster on this machine (``infra/slurm/local-cluster.sh``: munged,
    slurmctld, slurmd n1 and n2, one CPU each, no accounting storage), with ``SLURM_CONF`` set for
    the session; stopped at the end. Skipped, with the reason, where it cannot run."""
    import shutil

    if os.geteuid() != 0:
        pytest.skip("a local Slurm cluster needs root (slurmd, munged, /etc/hosts)")
    missing = [t for t in ("munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(t)]
    if missing:
        pytest.skip(f"needs Debian's slurm-wlm and munge ({', '.join(missing)} missing; .ci/run installs them)")
    script = REPO / "infra" / "slurm" / "local-cluster.sh"
    env = {**os.environ, "CDC_SLURM_DIR": str(tmp_path_factory.mktemp("slurm")),
           "CDC_SLURM_PORT": str(_free_port_run(3))}
    started = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    conf = started.stdout.strip().split("=", 1)[1]
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield conf
    finally:
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before
        subprocess.run([str(script), "stop"], env=env, capture_output=True, timeout=180)
