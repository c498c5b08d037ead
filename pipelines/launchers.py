"""How a grid runs ``cdc/train.py``: a local subprocess, a Slurm job, or a Kubernetes job.

Every launcher takes a :class:`TrainJob` (a name and the run's :class:`cdc.run_spec.RunSpec`, whose
output directory the flow reads afterwards), writes the spec to ``<output_dir>/job.json``, runs
``python -m cdc.train --job job.json --world-size N`` with the number of processes it starts, and returns
when the job has finished, raising :class:`LaunchFailed` with the tail of its log otherwise.
Configuration flows one way: the grid cell's config becomes the spec; secrets come from the
environment, never from files in the repository.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import string
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cdc.run_spec import RunSpec

REPO = Path(__file__).resolve().parents[1]
TRAIN_MODULE = ("-m", "cdc.train")  # for python and accelerate launch alike


def cpu_share() -> int:
    """Threads for each of a local grid's two CPU consumers, which run at the same time: the
    training subprocess and the flow's evaluations. Half the cores each: two 2-thread OpenMP pools
    on 2 cores made the demo's training steps 12x slower (threads wait at every op's barrier for a
    descheduled sibling)."""
    return max(1, len(os.sched_getaffinity(0)) // 2)


class LaunchFailed(RuntimeError):
    """A training job did not finish successfully."""


@dataclass(frozen=True)
class TrainJob:
    """One ``cdc/train.py`` run.

    Attributes:
        name: short unique name (used for job names and logs).
        spec: everything the run needs; its ``output_dir`` must be visible to the flow afterwards.
        env: extra environment (e.g. ``MLFLOW_TRACKING_URI``); never secrets from files.
    """

    name: str
    spec: RunSpec
    env: dict[str, str] = field(default_factory=dict)

    @property
    def output_dir(self) -> str:
        return self.spec.output_dir

    @property
    def spec_file(self) -> Path:
        return Path(self.output_dir) / "job.json"

    def argv(self, world_size: int) -> list[str]:
        """``-m cdc.train`` and its arguments (the spec file is written by :meth:`write_spec`)."""
        return [*TRAIN_MODULE, "--job", str(self.spec_file), "--world-size", str(world_size)]

    def write_spec(self) -> Path:
        """Write the spec where :meth:`argv` points (into the run's output directory)."""
        self.spec_file.parent.mkdir(parents=True, exist_ok=True)
        return self.spec.save(self.spec_file)

    def finished(self) -> bool:
        return (Path(self.output_dir) / "train_summary.json").is_file()


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalLauncher:
    """``python cdc/train.py`` (one process) or ``accelerate launch --config_file ...`` as a subprocess;
    the log is streamed line by line into ``log``."""

    accelerate_config: str | None = None
    num_processes: int | None = None

    def world_size(self) -> int:
        """Processes this launcher starts: ``num_processes``, else its accelerate config's, else 1."""
        if self.num_processes:
            return self.num_processes
        if not self.accelerate_config:
            return 1
        config = yaml.safe_load((REPO / self.accelerate_config).read_text()) or {}
        return int(config.get("num_processes", 1))

    def command(self, job: TrainJob) -> list[str]:
        argv = job.argv(self.world_size())
        if not self.accelerate_config:
            return [sys.executable, *argv]
        launch = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
                  self.accelerate_config, "--main_process_port", str(free_port())]
        if self.num_processes:
            launch += ["--num_processes", str(self.num_processes)]
        return [*launch, *argv]

    def run(self, job: TrainJob, log: Callable[[str], None]) -> None:
        job.write_spec()
        env = {"OMP_NUM_THREADS": str(cpu_share()), **os.environ, **job.env, "PYTHONUNBUFFERED": "1"}
        tail: deque[str] = deque(maxlen=40)
        shown = -10
        with subprocess.Popen(self.command(job), cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
            for raw in proc.stdout:
                for line in raw.replace("\r", "\n").splitlines():
                    if not line.strip():
                        continue
                    if line.startswith("train:"):  # progress-bar frames: pass on one per 10 %
                        percent = int(line.split("%")[0].split()[-1]) if "%" in line else 0
                        if percent < shown + 10:
                            continue
                        shown = percent
                    else:
                        tail.append(line)
                    log(f"[{job.name}] {line.strip()}")
        if proc.returncode != 0 or not job.finished():
            raise LaunchFailed(f"{job.name}: exit status {proc.returncode}\n" + "\n".join(tail))


def render(template: str | Path, **values: str) -> str:
    """Fill ``${name}`` placeholders of an infra template (unknown placeholders stay as they are)."""
    return string.Template(Path(template).read_text()).safe_substitute(**values)


@dataclass
class SlurmLauncher:
    """Render ``infra/slurm/train.sbatch``, submit it with ``sbatch``, poll ``sacct`` until it ends.

    The output directory must be on a filesystem shared with the compute nodes.
    """

    template: str = str(REPO / "infra" / "slurm" / "train.sbatch")
    nodes: int = 1
    gpus_per_node: int = 8
    partition: str = ""
    time_limit: str = "7-00:00:00"
    poll_seconds: float = 30.0

    def script(self, job: TrainJob) -> str:
        """The rendered sbatch script of ``job``."""
        # launch-node.sh adds --world-size (nodes x GPUs per node) on every node
        return render(self.template, JOB_NAME=job.name, NODES=str(self.nodes), GPUS_PER_NODE=str(self.gpus_per_node),
                      TIME_LIMIT=self.time_limit, OUTPUT_DIR=job.output_dir, REPO=str(REPO),
                      TRAIN_ARGS=shlex.join(["--job", str(job.spec_file)]))

    def run(self, job: TrainJob, log: Callable[[str], None]) -> None:
        out = Path(job.output_dir)
        job.write_spec()
        script = out / "job.sbatch"
        script.write_text(self.script(job))
        extra = ["--partition", self.partition] if self.partition else []
        submitted = subprocess.run(["sbatch", "--parsable", *extra, str(script)], capture_output=True, text=True,
                                   env={**os.environ, **job.env})
        if submitted.returncode != 0:
            raise LaunchFailed(f"{job.name}: sbatch failed: {submitted.stderr.strip()}")
        job_id = submitted.stdout.strip().split(";")[0]
        log(f"[{job.name}] submitted Slurm job {job_id}")
        state = _poll(lambda: _sacct_state(job_id), self.poll_seconds, log, job.name)
        if state != "COMPLETED" or not job.finished():
            raise LaunchFailed(f"{job.name}: Slurm job {job_id} ended {state}; see {out}/slurm-{job_id}.out")


def _sacct_state(job_id: str) -> str:
    r = subprocess.run(["sacct", "-j", job_id, "-X", "--noheader", "--format=State"], capture_output=True, text=True)
    return (r.stdout.split() or ["PENDING"])[0].rstrip("+")


@dataclass
class KubernetesLauncher:
    """Render ``infra/k8s/pytorchjob.yaml``, ``kubectl apply`` it, poll its status until it ends.

    The output directory must live on the shared volume mounted into the job (``PVC``).
    """

    template: str = str(REPO / "infra" / "k8s" / "pytorchjob.yaml")
    namespace: str = "cdc"
    image: str = "ghcr.io/cdc-pipeline/cdc:latest"
    workers: int = 0
    gpus_per_node: int = 8
    pvc: str = "cdc-data"
    poll_seconds: float = 30.0

    def manifest(self, job: TrainJob) -> str:
        """The rendered PyTorchJob manifest of ``job``."""
        world = (self.workers + 1) * self.gpus_per_node
        args = ", ".join(json.dumps(a) for a in job.argv(world))  # a YAML flow sequence of JSON strings
        return render(self.template, JOB_NAME=job.name, NAMESPACE=self.namespace, IMAGE=self.image,
                      WORKERS=str(self.workers), GPUS_PER_NODE=str(self.gpus_per_node), PVC=self.pvc,
                      NUM_MACHINES=str(self.workers + 1), WORLD_SIZE=str(world), TRAIN_ARGS=args)

    def run(self, job: TrainJob, log: Callable[[str], None]) -> None:
        job.write_spec()  # the output directory is on the volume the job mounts
        applied = subprocess.run(["kubectl", "apply", "-n", self.namespace, "-f", "-"], input=self.manifest(job),
                                 capture_output=True, text=True)
        if applied.returncode != 0:
            raise LaunchFailed(f"{job.name}: kubectl apply failed: {applied.stderr.strip()}")
        log(f"[{job.name}] {applied.stdout.strip()}")

        def state() -> str:
            r = subprocess.run(["kubectl", "get", "pytorchjob", job.name, "-n", self.namespace, "-o",
                                "jsonpath={.status.conditions[-1].type}"], capture_output=True, text=True)
            return {"Succeeded": "COMPLETED", "Failed": "FAILED"}.get(r.stdout.strip(), "RUNNING")

        final = _poll(state, self.poll_seconds, log, job.name)
        if final != "COMPLETED" or not job.finished():
            raise LaunchFailed(f"{job.name}: PyTorchJob ended {final}; "
                               f"kubectl logs -n {self.namespace} {job.name}-master-0")


_RUNNING = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}


def _poll(state: Callable[[], str], every: float, log: Callable[[str], None], name: str) -> str:
    last = None
    while True:
        current = state()
        if current != last:
            log(f"[{name}] {current}")
            last = current
        if current not in _RUNNING:
            return current
        time.sleep(every)


def make_launcher(kind: str, options: dict | None = None):
    """``local``, ``slurm`` or ``k8s`` with keyword options from the flow's parameters."""
    classes = {"local": LocalLauncher, "slurm": SlurmLauncher, "k8s": KubernetesLauncher}
    if kind not in classes:
        raise ValueError(f"unknown launcher {kind!r} ({', '.join(classes)})")
    return classes[kind](**(options or {}))
