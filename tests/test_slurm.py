"""The Slurm paths on a real two-node Slurm cluster that the tests start on this machine
(``infra/slurm/local-cluster.sh``: n1 and n2, one CPU each, no accounting storage).

* the documented by-hand ``sbatch`` of ``infra/slurm/train.sbatch`` trains on two nodes to the same
  bits as two local processes, also when the scheduler requeues it and when its time limit nears;
* the ``slurm`` launcher refuses a job that can never start, reads states without accounting,
  reports a lost job and an unanswering controller, each within a bound;
* the grid flow trains, evaluates and registers one cell per Slurm job (1 and 2 nodes), while the
  other cell's rank is killed and then its node set DOWN: retried, reported, nothing lost.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, free_port, photo, prefect_harness, tiny_codec
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

BIN = Path(sys.executable).parent
SHARD = REPO / "tests" / "assets" / "tiny-shard"
STEPS = 200  # 5-20 s of training on two nodes: time to interrupt it twice
TRAIN_ARGS = (f"--preset tiny --shards {SHARD} --max-steps {STEPS} train.sample_every=0 train.checkpoint_every=20 "
              "train.log_every=5")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "CDC_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _slurm(*args: str, timeout: float = 30) -> str:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(args)}: {r.stderr}"
    return r.stdout.strip()


def _job(job_id: str) -> dict[str, str]:
    line = _slurm("scontrol", "-o", "show", "job", job_id)
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


def _until(what: str, check, timeout: float = 180, every: float = 0.2):
    """Poll ``check()`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"waited {timeout} s for {what}")


def _step(out: Path) -> int:
    """The last step that the run logged (0 before the first)."""
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (OSError, ValueError, KeyError):
        return 0


def _fingerprint(out: Path) -> str:
    return json.loads((out / "train_summary.json").read_text())["fingerprint"]


def _submit_by_hand(out: Path, env: dict) -> str:
    """The documented command: ``sbatch --nodes=2 --export=ALL,CDC_OUTPUT_DIR=...,TRAIN_ARGS=... train.sbatch``."""
    out.mkdir(parents=True, exist_ok=True)  # Slurm opens --output before the job runs
    r = subprocess.run(["sbatch", "--parsable", "--nodes=2", f"--output={out}/slurm-%j.out",
                        f"--export=ALL,CDC_OUTPUT_DIR={out},TRAIN_ARGS={TRAIN_ARGS}", "infra/slurm/train.sbatch"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture(autouse=True)
def _empty_queue(slurm_cluster):
    """Each test starts on an idle cluster: a test that fails leaves no job behind for the next."""
    yield
    subprocess.run(["scancel", "--user", str(os.geteuid())], capture_output=True, timeout=30)
    _until("an empty queue", lambda: _slurm("squeue", "-h") == "", timeout=60, every=0.5)


def _release(job_id: str, restarts: int) -> None:
    """Start job ``job_id`` as soon as it has been requeued ``restarts`` times: Slurm holds a
    requeued job for two minutes (Reason=BeginTime). Not within the second of the requeue: the
    nodes revoke the old credential with a one-second resolution and would refuse the new one."""
    queued: list[float] = []

    def started() -> bool:
        info = _job(job_id)
        if int(info["Restarts"]) < restarts:
            return False
        if info["JobState"] == "PENDING":
            queued.append(time.monotonic())
            if queued[-1] - queued[0] >= 2:
                r = subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"],
                                   capture_output=True, text=True, timeout=30)
                # the job may have started on its own since it was read: nothing left to release
                assert r.returncode == 0 or "no longer pending" in r.stderr, r.stderr
        return info["JobState"] not in ("PENDING", "REQUEUED", "COMPLETING")

    _until(f"job {job_id} requeued {restarts} time(s) and released", started, timeout=90, every=0.5)


def test_by_hand_sbatch_trains_like_local_processes_and_resumes_after_requeue(slurm_cluster, tmp_path):
    """The documented command on two nodes, requeued by the scheduler and then near its time limit
    (what ``--signal=B:USR1@180`` sends), ends at the weights of two uninterrupted local processes."""
    env = _env(tmp_path)
    local = tmp_path / "local"
    reference = subprocess.Popen(
        [str(BIN / "accelerate"), "launch", "--config_file", "infra/accelerate/cpu.yaml", "--num_processes", "2",
         "--num_cpu_threads_per_process", "1", "--main_process_port", str(free_port()), "-m", "cdc.train",
         "--world-size", "2", *TRAIN_ARGS.split(), "--output-dir", str(local)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    out = tmp_path / "slurm"
    job = _submit_by_hand(out, env)
    log = out / f"slurm-{job}.out"
    _until("20 steps", lambda: _step(out) >= 20)
    _slurm("scontrol", "requeue", job)
    _release(job, 1)
    _until("the requeued run to resume", lambda: "start 2 on" in log.read_text(errors="replace"))
    _until("40 more steps", lambda: _step(out) >= 80)
    _slurm("scancel", "--batch", "--signal=USR1", job)
    _release(job, 2)
    _until(f"job {job} to end", lambda: _job(job)["JobState"] not in ("PENDING", "RUNNING", "COMPLETING"))
    text = log.read_text(errors="replace")  # two nodes' progress bars interleave bytes
    assert _job(job)["JobState"] == "COMPLETED" and _job(job)["Restarts"] == "2", text[-3000:]
    saved = set(re.findall(r"preempted: checkpoint saved at step (\d+)", text))
    assert len(saved) == 2, text[-3000:]  # once per interruption (printed by each node's first process)
    assert "time limit near" in text and f"requeueing job {job}" in text
    assert "find_unused_parameters=True" not in text  # DDP's search ends with the recipe's joint phase
    assert reference.wait(timeout=600) == 0, reference.stderr.read()[-3000:]
    # two nodes of one process each, interrupted twice: the weights of two uninterrupted local processes
    assert _fingerprint(out) == _fingerprint(local)


def _cell_job(tmp_path: Path, name: str):
    from pipelines.cells import train_job

    return train_job(name, tmp_path / name, shards=str(SHARD), preset="tiny", prediction="sample", train_steps=2,
                     lmbda=0.01, rho=0.0, overrides=["train.sample_every=0"], init_from=None, tags={},
                     experiment="slurm-test")


def test_launcher_bounds_every_wait_on_a_cluster_without_accounting(slurm_cluster, tmp_path, monkeypatch):
    from pipelines.launchers import LaunchFailed, SlurmLauncher
    from pipelines.launchers.slurm import job_info

    logs: list[str] = []
    # a job that can never start (16 CPUs per task on 1-CPU nodes) is cancelled and named at once
    start = time.monotonic()
    with pytest.raises(LaunchFailed, match=r"can never start: Reason=PartitionConfig \(asks more than"):
        SlurmLauncher(cpus_per_task=16, poll_seconds=0.5).run(_cell_job(tmp_path, "never"), logs.append)
    assert time.monotonic() - start < 30 and _slurm("squeue", "-h") == ""

    # no accounting storage: sacct cannot answer, the controller's state is used
    sacct = subprocess.run(["sacct", "-j", "1"], capture_output=True, text=True, timeout=30)
    assert sacct.returncode != 0 and "accounting storage is disabled" in sacct.stderr
    job = _slurm("sbatch", "--parsable", f"--output={tmp_path}/wrap-%j.out", "--wrap", "true")
    assert _until("a finished job's state", lambda: (i := job_info(job)) and i.state == "COMPLETED" and i, timeout=60)
    assert job_info("4999999") is None

    # a job that neither the controller nor accounting knows is lost: an error, not a wait
    lost = _cell_job(tmp_path, "lost")
    lost.write_spec()
    (tmp_path / "lost" / "slurm-4999999.out").write_text("line 1\nthe last words\n")
    with pytest.raises(LaunchFailed, match=r"4999999 is lost: neither the controller.*\nline 1\nthe last words"):
        SlurmLauncher(poll_seconds=0.2).follow(lost, "4999999", logs.append)

    # a controller that does not answer: bounded, and the error says what was waited for
    dead = tmp_path / "dead.conf"
    conf = Path(slurm_cluster).read_text()
    dead.write_text(re.sub(r"^SlurmctldPort=\d+", f"SlurmctldPort={free_port()}", conf, flags=re.M))
    monkeypatch.setenv("SLURM_CONF", str(dead))
    start = time.monotonic()
    with pytest.raises(LaunchFailed, match=r"the Slurm controller did not answer for 3 s"):
        SlurmLauncher(poll_seconds=0.5, unreachable_timeout_s=3, command_timeout_s=10).follow(lost, job, logs.append)
    assert time.monotonic() - start < 60


def _training_pid(cell: str, rank: int) -> int | None:
    """The training process of ``rank`` for grid cell ``cell`` (its job spec's path names the cell)."""
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"cdc.train" in cmd and any(f"/{cell}-".encode() in a for a in cmd) and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


def _two_node_jobs() -> list[tuple[str, str]]:
    """(job id, state) of the cluster's 2-node jobs."""
    lines = _slurm("squeue", "-h", "-o", "%i %D %T").splitlines()
    return [(i, s) for i, n, s in (line.split() for line in lines) if n == "2"]


def test_grid_on_slurm_retries_reports_and_keeps_what_finished(slurm_cluster, tmp_path):
    """train-grid with launcher="slurm": one cell per job (1 and 2 nodes). The 2-node cell's rank 1 is
    killed with SIGKILL, then on its retry node n2 goes DOWN: reported with the job's log; the other
    cell is trained, evaluated and registered; nothing is lost."""
    from cdc.zoo.checkpoint import save_codec

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        Image.fromarray(photo(name)).save(corpus / f"{name}.png")
    base = save_codec(tiny_codec(), tmp_path / "base")
    out = tmp_path / "grid"
    params = {"lmbdas": [0.01, 0.05], "rhos": [0], "preset": "tiny", "cell_train_steps": 150, "base": str(base),
              "corpus": [str(corpus)], "patch_size": 256, "split_val": 0.3, "eval_limit": 1, "baselines": ["jpeg"],
              "metrics": "psnr-rgb", "output_dir": str(out), "experiment": "slurm-grid", "retries": 1,
              "launcher": "slurm", "launcher_options": {"poll_seconds": 1, "pending_timeout_s": 20},
              "cell_launcher_options": {"0.05/0": {"nodes": 2}},
              "overrides": ["train.checkpoint_every=10", "train.log_every=5", "train.sample_every=0"]}
    env = {**_env(tmp_path), "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    code = ("import json, sys; from pipelines.grid_params import grouped; from pipelines.train_grid import train_grid; "
            "train_grid(**grouped(**json.loads(sys.argv[1])))")
    flow = subprocess.Popen([sys.executable, "-c", code, json.dumps(params)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(flow.stdout), daemon=True)
    reader.start()
    try:
        # the 2-node cell's first job: SIGKILL its rank 1 once it trains
        first = _until("the 2-node cell's job", lambda: [j for j, s in _two_node_jobs() if s == "RUNNING"],
                       timeout=300)[0]
        pid = _until("its rank-1 training process", lambda: _training_pid("lmbda0.05-rho0", 1), timeout=120)
        cell = next((out / "cells").glob("lmbda0.05-rho0-*"))
        _until("20 steps (two checkpoints)", lambda: _step(cell) >= 20, timeout=120)
        os.kill(pid, 9)
        # its retry (a new job resuming from the checkpoints): node n2 goes DOWN under it
        _until("the retry's job", lambda: [j for j, s in _two_node_jobs() if s == "RUNNING" and j != first],
               timeout=300)
        _until("the retry's training", lambda: _training_pid("lmbda0.05-rho0", 1), timeout=120)
        _slurm("scontrol", "update", "nodename=n2", "state=down", "reason=test")
        assert flow.wait(timeout=600) == 0, "".join(output)[-5000:]
    finally:
        flow.kill()
        subprocess.run(["scontrol", "update", "nodename=n2", "state=resume"], capture_output=True, timeout=30)
    reader.join(timeout=10)
    text = "".join(output)
    summary = (out / "summary.md").read_text()
    assert "| lmbda0.01-rho0 | 0.01 | 0 | registered" in summary, summary
    assert "| lmbda0.05-rho0 | 0.05 | 0 | failed:" in summary and "still pending after 20 s" in summary, summary
    assert "failed after 2 attempt(s)" in text and "ended FAILED" in text  # the kill, then the DOWN node
    job = re.search(r"lmbda0\.05-rho0: Slurm job (\d+) still pending", summary)[1]
    tail = [line for line in (cell / f"slurm-{job}.out").read_text(errors="replace").splitlines() if line.strip()][-1]
    assert tail.strip() in summary  # the failure carries the job's log tail (its last line in the table)
    assert sorted(cell.glob("slurm-*.out")) and any((cell / "checkpoints").iterdir())  # nothing lost
    registered = subprocess.run([sys.executable, "-c", "from cdc.registry.catalog import list_versions; "
                                 "print([(v.name, v.tags['lmbda']) for v in list_versions()])"],
                                env=env, capture_output=True, text=True, timeout=120)
    assert registered.stdout.strip().endswith("[('cdc-x-rho0', '0.01')]"), registered.stderr[-2000:]


def test_shard_flow_with_dask_workers_as_slurm_jobs(slurm_cluster, tmp_path):
    """``shard-corpus`` with ``runner="slurm"``: its tasks run on Dask workers that are Slurm jobs
    (dask-jobqueue), and the shards are the single-process build's, byte for byte."""
    from test_shard_flow import _reference

    from pipelines.shard_corpus import shard_corpus

    corpus, reference = _reference(tmp_path)
    with prefect_harness():
        result = shard_corpus([str(corpus)], str(tmp_path / "out"), max_count=4, split_val=0.2, chunk_size=3,
                              runner="slurm", workers=2,
                              slurm_options={"memory": "1GB", "walltime": "00:10:00",
                                             "log_directory": str(tmp_path / "dask-logs")})
    assert result["fingerprint"] == reference.fingerprint
    for info in reference.shards:
        assert (tmp_path / "out" / info.name).read_bytes() == (tmp_path / "ref" / info.name).read_bytes()
    jobs = _slurm("squeue", "--states=all", "-h", "-o", "%j %T").splitlines()  # finished jobs stay listed 300 s
    assert sum(line.startswith("cdc-shards") for line in jobs) == 2, jobs
