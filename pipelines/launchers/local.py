"""The ``local`` launcher: ``cdc/train.py`` as a subprocess of the flow, one process or
``accelerate launch`` of several, its log streamed into the flow's."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipelines.launchers.base import REPO, LaunchFailed, TrainJob, cpu_share, free_port


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
