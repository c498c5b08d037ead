"""The ``k8s`` launcher: a Kubeflow ``PyTorchJob`` (``infra/k8s/pytorchjob.yaml``) applied with
``kubectl`` and followed until it succeeds or fails, within stated bounds."""

from __future__ import annotations

import json
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipelines.launchers.base import REPO, LaunchFailed, TrainJob, run_command


def render(template: str | Path, **values: str) -> str:
    """Fill ``${name}`` placeholders of an infra template (unknown placeholders stay as they are)."""
    return string.Template(Path(template).read_text()).safe_substitute(**values)


@dataclass
class KubernetesLauncher:
    """Render ``infra/k8s/pytorchjob.yaml``, ``kubectl apply`` it, poll its status until it ends.

    The output directory must live on the shared volume mounted into the job (``pvc``).

    Attributes:
        namespace: the Kubernetes namespace the job runs in.
        image: the container image it runs.
        pvc: the persistent volume claim with data and outputs.
        workers: worker replicas besides the master (nodes - 1).
        gpus_per_node: GPUs (and training processes) per replica.
        poll_seconds: how often the job's status is read.
        max_wait_s: how long the job may take in all (queued and running) before it is deleted.
        command_timeout_s: the bound of each ``kubectl`` call; the API server unanswered for
            ``unreachable_timeout_s`` fails the launch.
    """

    template: str = str(REPO / "infra" / "k8s" / "pytorchjob.yaml")
    namespace: str = "cdc"
    image: str = "ghcr.io/cdc-pipeline/cdc:latest"
    workers: int = 0
    gpus_per_node: int = 8
    pvc: str = "cdc-data"
    poll_seconds: float = 30.0
    max_wait_s: float = 7 * 86400
    command_timeout_s: float = 60.0
    unreachable_timeout_s: float = 600.0

    def manifest(self, job: TrainJob) -> str:
        """The rendered PyTorchJob manifest of ``job``."""
        world = (self.workers + 1) * self.gpus_per_node
        args = ", ".join(json.dumps(a) for a in job.argv(world))  # a YAML flow sequence of JSON strings
        return render(self.template, JOB_NAME=job.name, NAMESPACE=self.namespace, IMAGE=self.image,
                      WORKERS=str(self.workers), GPUS_PER_NODE=str(self.gpus_per_node), PVC=self.pvc,
                      NUM_MACHINES=str(self.workers + 1), WORLD_SIZE=str(world), TRAIN_ARGS=args)

    def _kubectl(self, *args: str, **kwargs):
        return run_command(["kubectl", *args, "-n", self.namespace], self.command_timeout_s, **kwargs)

    def run(self, job: TrainJob, log: Callable[[str], None]) -> None:
        """Apply the job and wait for its end; ``LaunchFailed`` unless it succeeded."""
        job.write_spec()  # the output directory is on the volume the job mounts
        try:
            applied = self._kubectl("apply", "-f", "-", input=self.manifest(job))
        except OSError as exc:
            raise LaunchFailed(f"{job.name}: {exc}") from exc
        if applied.returncode != 0:
            raise LaunchFailed(f"{job.name}: kubectl apply failed: {applied.stderr.strip()}")
        log(f"[{job.name}] {applied.stdout.strip()}; waiting up to {self.max_wait_s:g} s for it to end")
        start = time.monotonic()
        unanswered_since = None
        last = None
        while True:
            try:
                r = self._kubectl("get", "pytorchjob", job.name, "-o", "jsonpath={.status.conditions[-1].type}")
                if r.returncode != 0:
                    raise OSError(r.stderr.strip() or f"kubectl exit status {r.returncode}")
                unanswered_since = None
                state = {"Succeeded": "COMPLETED", "Failed": "FAILED"}.get(r.stdout.strip(), "RUNNING")
            except OSError as exc:
                unanswered_since = unanswered_since or time.monotonic()
                if time.monotonic() - unanswered_since > self.unreachable_timeout_s:
                    raise LaunchFailed(f"{job.name}: no status of PyTorchJob {job.name} for "
                                       f"{self.unreachable_timeout_s:g} s: {exc}") from exc
                state = last or "RUNNING"
            if state != last:
                log(f"[{job.name}] {state}")
                last = state
            if state != "RUNNING":
                break
            if time.monotonic() - start > self.max_wait_s:
                self._kubectl("delete", "pytorchjob", job.name)
                raise LaunchFailed(f"{job.name}: PyTorchJob still running after {self.max_wait_s:g} s "
                                   "(max_wait_s): deleted")
            time.sleep(self.poll_seconds)
        if state != "COMPLETED" or not job.finished():
            raise LaunchFailed(f"{job.name}: PyTorchJob ended {state}; "
                               f"kubectl logs -n {self.namespace} {job.name}-master-0")
