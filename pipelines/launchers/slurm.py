"""The ``slurm`` launcher: ``infra/slurm/train.sbatch`` submitted with ``sbatch``, followed to its end.

The template is submitted as it is, by the launcher and by hand alike: the job's resources are
``sbatch`` options, the run's arguments travel in the environment (``TRAIN_ARGS``, ``CDC_OUTPUT_DIR``).

A job's state comes from the controller (``scontrol show job``), which answers on every cluster,
and from accounting (``sacct``) only once the controller has forgotten the job (``MinJobAge``,
300 s by default): many small clusters run without accounting storage, where ``sacct`` exits 1.
Nothing waits for ever: every Slurm command has a time bound; a job that can never start as asked
(more CPUs than a node has, a partition's limits) is cancelled at once; a job waits in the queue at
most ``pending_timeout_s`` each time it is queued; a controller that does not answer for
``unreachable_timeout_s`` fails the launch; a job that neither the controller nor accounting knows
is lost. Each failure is a ``LaunchFailed`` with the job's log tail.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.launchers.base import REPO, LaunchFailed, TrainJob, log_tail, run_command

TEMPLATE = REPO / "infra" / "slurm" / "train.sbatch"

FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                          "BOOT_FAIL", "DEADLINE"})
"""Job states after which a job never runs again (a requeued job passes REQUEUED, then PENDING)."""

NEVER_STARTS = {
    "PartitionConfig": "asks more than the partition's nodes have (CPUs, memory, GPUs per node)",
    "PartitionNodeLimit": "asks more nodes than the partition allows or has",
    "PartitionTimeLimit": "asks a longer time limit than the partition allows",
    "BadConstraints": "its constraints match no node",
    "InvalidAccount": "the account does not exist",
    "InvalidQOS": "the QOS does not exist",
    "AccountNotAllowed": "the account may not use the partition",
    "QOSNotAllowed": "the QOS may not use the partition",
}
"""Pending reasons that no amount of waiting changes: the job is cancelled and reported at once."""


@dataclass(frozen=True)
class JobInfo:
    """What the cluster says of a job: ``state`` (``PENDING``, ``RUNNING``, ``COMPLETED``, ...),
    the pending ``reason``, ``exit_code`` (``status:signal``) and how often it was requeued."""

    state: str
    reason: str = ""
    exit_code: str = ""
    restarts: int = 0


class ControllerUnavailable(OSError):
    """A Slurm command could not answer (controller down or unreachable, command missing or slow)."""


def _fields(line: str) -> dict[str, str]:
    """``Key=Value`` pairs of one ``scontrol -o`` line (values without spaces are all we read)."""
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


def job_info(job_id: str, timeout_s: float = 30.0) -> JobInfo | None:
    """The job's state from the controller, else from accounting; None when neither knows it.

    Raises:
        ControllerUnavailable: the controller did not answer (no decision can be taken).
    """
    try:
        r = run_command(["scontrol", "-o", "show", "job", job_id], timeout_s)
    except OSError as exc:
        raise ControllerUnavailable(str(exc)) from exc
    if r.returncode == 0 and r.stdout.strip():
        f = _fields(r.stdout.splitlines()[0])
        return JobInfo(f.get("JobState", "UNKNOWN"), f.get("Reason", ""), f.get("ExitCode", ""),
                       int(f.get("Restarts", "0") or 0))
    if "invalid job id" not in (r.stderr + r.stdout).lower():
        raise ControllerUnavailable(f"scontrol show job {job_id}: {(r.stderr or r.stdout).strip()}")
    try:  # forgotten by the controller: accounting, where the cluster keeps it
        r = run_command(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State,ExitCode"], timeout_s)
    except OSError:
        return None
    rows = [line.split("|") for line in r.stdout.splitlines() if line.strip()] if r.returncode == 0 else []
    if not rows:
        return None  # "Slurm accounting storage is disabled", or purged there too
    state, exit_code = (rows[-1] + [""])[:2]
    return JobInfo(state.split()[0].rstrip("+"), "", exit_code)


def cancel(job_id: str, timeout_s: float = 30.0) -> None:
    """``scancel`` the job; a controller that cannot be reached is ignored (nothing else to do)."""
    with contextlib.suppress(OSError):
        run_command(["scancel", job_id], timeout_s)


@dataclass
class SlurmLauncher:
    """Submit ``infra/slurm/train.sbatch`` for a training run and follow the job until it ends.

    The run's output directory must be on a filesystem shared with the compute nodes, and the
    nodes run this checkout (``CDC_REPO``) with this environment's Python.

    Attributes:
        nodes: nodes of the job, one ``accelerate launch`` each (>= 1).
        gpus_per_node: GPUs per node, and training processes per node; 0 omits ``--gpus-per-node``
            (CPU partitions, clusters without GRES) and runs one gloo process per node.
        cpus_per_task: CPUs per node for the run's processes (None: the cluster's default, 1).
        mem: memory per node as ``sbatch --mem`` takes it (``"64G"``; None: the cluster's default).
        partition: the partition the job runs in ("" leaves the cluster's default).
        account: the account it is charged to ("" leaves the cluster's default).
        qos: its quality of service ("" leaves the cluster's default).
        time_limit: the job's time limit (``sbatch --time``); the run checkpoints and requeues
            itself 180 s before it.
        sbatch_args: further ``sbatch`` options as given, e.g. ``["--constraint=a100", "--exclusive"]``.
        poll_seconds: how often the job's state is read.
        pending_timeout_s: how long the job may wait in the queue, each time it is queued (a requeue
            starts the clock again), before it is cancelled.
        unreachable_timeout_s: how long the controller may go unanswered before the launch fails.
        command_timeout_s: the bound of each Slurm command.
    """

    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None
    mem: str | None = None
    partition: str = ""
    account: str = ""
    qos: str = ""
    time_limit: str = "7-00:00:00"
    sbatch_args: list[str] = field(default_factory=list)
    poll_seconds: float = 30.0
    pending_timeout_s: float = 86400.0
    unreachable_timeout_s: float = 600.0
    command_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 0 or (self.cpus_per_task is not None and self.cpus_per_task < 1):
            raise ValueError(f"slurm launcher: nodes >= 1, gpus_per_node >= 0 and cpus_per_task >= 1 "
                             f"(got {self.nodes}, {self.gpus_per_node}, {self.cpus_per_task})")
        if min(self.poll_seconds, self.pending_timeout_s, self.unreachable_timeout_s, self.command_timeout_s) <= 0:
            raise ValueError("slurm launcher: poll_seconds and the timeouts must be > 0")

    def command(self, job: TrainJob) -> list[str]:
        """The ``sbatch`` command line that submits ``job`` (resources as options)."""
        out = Path(job.output_dir)
        argv = ["sbatch", "--parsable", f"--job-name={job.name}", f"--nodes={self.nodes}",
                f"--time={self.time_limit}", f"--output={out / 'slurm-%j.out'}"]
        optional = {"--gpus-per-node": self.gpus_per_node or None, "--cpus-per-task": self.cpus_per_task,
                    "--mem": self.mem, "--partition": self.partition, "--account": self.account, "--qos": self.qos}
        argv += [f"{flag}={value}" for flag, value in optional.items() if value]
        return [*argv, *self.sbatch_args, str(TEMPLATE)]

    def environment(self, job: TrainJob) -> dict[str, str]:
        """What the job's environment adds to the submitter's (``sbatch`` exports it all)."""
        venv = Path(sys.executable).parent
        return {"TRAIN_ARGS": shlex.join(["--job", str(job.spec_file)]), "CDC_OUTPUT_DIR": job.output_dir,
                "CDC_REPO": str(REPO), "ACCELERATE": str(venv / "accelerate"),
                "PATH": f"{venv}{os.pathsep}{os.environ.get('PATH', '')}", **job.env}

    def run(self, job: TrainJob, log: Callable[[str], None]) -> None:
        """Submit the job and follow it to its end; ``LaunchFailed`` unless the run finished."""
        job.write_spec()
        try:
            submitted = run_command(self.command(job), self.command_timeout_s, cwd=REPO,
                                    env={**os.environ, **self.environment(job)})
        except OSError as exc:
            raise LaunchFailed(f"{job.name}: {exc}") from exc
        if submitted.returncode != 0:
            raise LaunchFailed(f"{job.name}: sbatch refused the job: {submitted.stderr.strip()}")
        job_id = submitted.stdout.strip().split(";")[0]
        log(f"[{job.name}] submitted Slurm job {job_id} ({' '.join(self.command(job)[2:-1])})")
        try:
            info = self.follow(job, job_id, log)
        except BaseException:
            cancel(job_id, self.command_timeout_s)  # a failed or cancelled launch leaves no job behind
            raise
        if info.state != "COMPLETED" or not job.finished():
            raise self._failed(job, job_id, f"ended {info.state} (exit code {info.exit_code or '?'})")

    def follow(self, job: TrainJob, job_id: str, log: Callable[[str], None]) -> JobInfo:
        """Poll the job until it reaches a final state; raise ``LaunchFailed`` when it can never
        start, waits in the queue too long, is lost, or the controller stops answering."""
        pending_since = unanswered_since = None
        last = None
        while True:
            now = time.monotonic()
            try:
                info = job_info(job_id, self.command_timeout_s)
                unanswered_since = None
            except ControllerUnavailable as exc:
                unanswered_since = unanswered_since or now
                if now - unanswered_since > self.unreachable_timeout_s:
                    raise self._failed(job, job_id, f"the Slurm controller did not answer for "
                                                    f"{self.unreachable_timeout_s:g} s ({exc})") from exc
                time.sleep(self.poll_seconds)
                continue
            if info is None:  # neither the controller nor accounting knows it
                if job.finished():
                    return JobInfo("COMPLETED")
                raise self._failed(job, job_id, "is lost: neither the controller nor accounting knows it")
            if (info.state, info.reason) != last:
                waiting = (f"; waiting up to {self.pending_timeout_s:g} s for it to start"
                           if info.state == "PENDING" else "")
                restarted = f", start {info.restarts + 1}" if info.restarts else ""
                log(f"[{job.name}] Slurm job {job_id} {info.state} ({info.reason or 'None'}{restarted}){waiting}")
                last = (info.state, info.reason)
            if info.state in FINAL_STATES:
                return info
            if info.state == "PENDING":
                if info.reason in NEVER_STARTS:
                    cancel(job_id, self.command_timeout_s)
                    raise self._failed(job, job_id, f"can never start: Reason={info.reason} "
                                                    f"({NEVER_STARTS[info.reason]}); cancelled")
                pending_since = pending_since or now
                if now - pending_since > self.pending_timeout_s:
                    cancel(job_id, self.command_timeout_s)
                    requeued = f", requeued {info.restarts}x" if info.restarts else ""
                    raise self._failed(job, job_id, f"still pending after {self.pending_timeout_s:g} s "
                                                    f"(Reason={info.reason}{requeued}); cancelled")
            else:
                pending_since = None
            time.sleep(self.poll_seconds)

    @staticmethod
    def _failed(job: TrainJob, job_id: str, what: str) -> LaunchFailed:
        log_file = Path(job.output_dir) / f"slurm-{job_id}.out"
        tail = log_tail(log_file)
        return LaunchFailed(f"{job.name}: Slurm job {job_id} {what} (log {log_file}{'' if tail else ': empty'})"
                            + (f"\n{tail}" if tail else ""))
