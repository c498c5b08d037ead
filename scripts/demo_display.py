"""The demo's console: one line per stage, updated in place, while everything else (Prefect, MLflow,
the trainings' progress bars) goes to a log file.

The stages are read from what the grid writes (manifest, cell metrics, results files), so the
display needs no hook in the flows and shows the same thing whether a stage runs or is skipped.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path


def _steps(cells: Path) -> int:
    """Optimizer steps logged so far by every cell (each ``metrics.jsonl`` row carries its step)."""
    total = 0
    for metrics in cells.glob("*/metrics.jsonl"):
        lines = metrics.read_text().splitlines()
        total += json.loads(lines[-1])["step"] if lines else 0
    return total


class Stages:
    """What the grid in ``out`` has done: ``(name, done, detail)`` per stage."""

    def __init__(self, out: Path, cells: int, steps: int, baselines: int) -> None:
        self.out, self.cells, self.steps, self.baselines = out, cells, steps, baselines

    def now(self) -> list[tuple[str, bool, str]]:
        out = self.out
        manifest = out / "shards" / "manifest.json"
        trained = len(list(out.glob("cells/*/train_summary.json")))
        results = [p.name for p in (out / "eval").glob("*.json") if not p.name.endswith(".per-image.json")]
        evaluated = sum(name.startswith("CDC_") for name in results)
        classical = sum(not name.startswith(("CDC_", "grid-")) for name in results)  # grid-*: family curves
        sources = out / "corpus" / "sources.txt"
        photos = len(sources.read_text().splitlines()) if sources.is_file() else 0
        return [
            ("photo corpus", photos > 0, f"{photos} photos fetched and verified" if photos else
             "fetching the packages, verifying every SHA-1"),
            ("shards", manifest.is_file(), "held-out split of the photo corpus"),
            ("training", trained >= self.cells, f"{trained}/{self.cells} cells, "
                                                f"{min(_steps(out / 'cells'), self.cells * self.steps)}"
                                                f"/{self.cells * self.steps} steps"),
            ("evaluation", evaluated >= self.cells and classical >= self.baselines,
             f"{evaluated}/{self.cells} cells, {classical}/{self.baselines} classical codecs"),
            ("registry and summary", (out / "summary.json").is_file(), "MLflow registry, RD plots, checks"),
        ]


@contextmanager
def quiet_console(log: Path, stages: Stages, every: float = 2.0):
    """Send this process's (and its children's) stdout and stderr to ``log``; show ``stages`` on the
    terminal, one line per stage. Yields a function that prints a line to the terminal."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    term = os.fdopen(os.dup(1), "w", buffering=1)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1), os.dup2(fd, 2)
    os.close(fd)
    stop = threading.Event()
    start = time.time()
    shown: list[str] = []  # stages already finished on the terminal
    live = term.isatty()
    clear = "\r\033[K" if live else ""  # back to the line's start, erase it

    def draw(final: bool = False) -> None:
        for name, done, detail in stages.now():
            if name in shown:
                continue
            clock = f"{(time.time() - start) / 60:4.1f} min"
            if done:
                term.write(f"{clear}✓ {name:<22} {detail}  [{clock}]\n")
                shown.append(name)
                continue
            if live and not final:  # a log file or a pipe gets the finished stages only
                term.write(f"{clear}… {name:<22} {detail}  [{clock}]")
            break

    def watch() -> None:
        while not stop.wait(every):
            draw()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield lambda line: term.write(f"{clear}{line}\n")
    finally:
        stop.set()
        thread.join()
        draw(final=True)
        sys.stdout.flush(), sys.stderr.flush()
        # a library may have left its own stream in sys.stdout (the demo's summary once vanished)
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        term.write(clear)
        term.close()
