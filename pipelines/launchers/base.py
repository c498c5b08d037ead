"""What every launcher shares: the training job it runs, its failure, and bounded waiting.

A launcher takes a ``TrainJob`` (a name and the run's ``cdc.training.run_spec.RunSpec``, whose
output directory the flow reads afterwards), writes the spec to ``<output_dir>/job.json``, runs
``python -m cdc.train --job job.json --world-size N`` with the number of processes it starts, and
returns when the job has finished, raising ``LaunchFailed`` with the tail of its log otherwise.
Configuration flows one way: the grid cell's config becomes the spec; secrets come from the
environment, never from files in the repository.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from cdc.training.run_spec import RunSpec

REPO = Path(__file__).resolve().parents[2]
TRAIN_MODULE = ("-m", "cdc.train")  # for python and accelerate launch alike


class LaunchFailed(RuntimeError):
    """A training job did not finish successfully (the message ends with its log's tail)."""


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
        """``-m cdc.train`` and its arguments (the spec file is written by ``write_spec``)."""
        return [*TRAIN_MODULE, "--job", str(self.spec_file), "--world-size", str(world_size)]

    def write_spec(self) -> Path:
        """Write the spec where ``argv`` points (into the run's output directory)."""
        self.spec_file.parent.mkdir(parents=True, exist_ok=True)
        return self.spec.save(self.spec_file)

    def finished(self) -> bool:
        """True once the run has exported its model (``train_summary.json`` is written last)."""
        return (Path(self.output_dir) / "train_summary.json").is_file()


def cpu_share() -> int:
    """Threads for each of a local grid's two CPU consumers, which run at the same time: the
    training subprocess and the flow's evaluations. Half the cores each: two 2-thread OpenMP pools
    on 2 cores made the demo's training steps 12x slower (threads wait at every op's barrier for a
    descheduled sibling)."""
    return max(1, len(os.sched_getaffinity(0)) // 2)


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        with path.open(errors="replace") as f:
            return "\n".join(line.rstrip("\n") for line in deque(f, maxlen=lines))
    except OSError:
        return ""


def run_command(argv: list[str], timeout_s: float, **kwargs) -> subprocess.CompletedProcess:
    """Run a scheduler command (``sbatch``, ``kubectl``, ...) with a time bound; a missing program or
    a command past its bound becomes an ``OSError`` that names it."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, **kwargs)
    except FileNotFoundError as exc:
        raise OSError(f"{argv[0]}: not found on PATH") from exc
    except subprocess.TimeoutExpired as exc:
        raise OSError(f"{' '.join(argv[:3])}: no answer within {timeout_s:g} s") from exc
