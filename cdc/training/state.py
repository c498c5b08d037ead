"""Training-state checkpoints: save with retention, resume the latest valid one, preemption.

A checkpoint is ``OUT/checkpoints/step-NNNNNNNN/``: everything ``accelerator.save_state`` writes
(model, optimizer, scheduler, EMA, every rank's RNG states) plus ``meta.json``, written last by
the main process. A directory without ``meta.json`` (killed mid-save) is never used; one that
fails to load is skipped with a warning in favour of the previous one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

from cdc.training.outputs import CHECKPOINTS, META, checkpoint_dirs


def save_checkpoint(accelerator, output_dir: Path, step: int, meta: dict, keep: int) -> Path:
    """``save_state`` into ``step-N.tmp``, then (main process) write meta, rename, prune old ones."""
    root = output_dir / CHECKPOINTS
    final = root / f"step-{step:08d}"
    tmp = root / f"step-{step:08d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=False)  # empty CDF buffers look "shared" to safetensors
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / META).write_text(json.dumps({"step": step, **meta}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoint_dirs(output_dir)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume(accelerator, output_dir: Path, which: str) -> dict | None:
    """Restore ``which`` (``latest`` or a checkpoint path); returns its meta, or None to start fresh.

    ``latest`` with no checkpoint starts fresh; a corrupt checkpoint falls back to the previous one.
    """
    candidates = checkpoint_dirs(output_dir) if which == "latest" else [Path(which)]
    if which != "latest" and not (Path(which) / META).is_file():
        raise FileNotFoundError(f"{which}: not a complete training checkpoint (no {META})")
    for ckpt in candidates:
        try:
            accelerator.load_state(str(ckpt))
            return json.loads((ckpt / META).read_text())
        except Exception as exc:
            if which != "latest":
                raise
            warnings.warn(f"checkpoint {ckpt} is unusable ({exc.__class__.__name__}: {exc}); "
                          f"falling back to the previous one", stacklevel=2)
    return None


class Preemption:
    """Remembers SIGTERM/SIGINT so the loop can checkpoint and exit at a step boundary.

    ``requested(accelerator, step)`` agrees across ranks (one signalled rank stops them all); with
    several ranks it asks them every ``SYNC_EVERY`` steps, since the question is a collective with a
    host sync that would stall a GPU's queue every step. A second SIGINT (Ctrl-C twice) exits at once
    (the loop may be stuck outside a step, e.g. waiting for data): the last periodic checkpoint is
    what ``--resume latest`` continues from. A repeated SIGTERM changes nothing: schedulers deliver
    it more than once (Slurm signals every process of a job step, and torchrun's agent passes its
    own on to the workers) and follow it with SIGKILL when their grace period ends.
    """

    def __init__(self) -> None:
        self._flag = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, frame) -> None:
        if self._flag and signum == signal.SIGINT:
            print("cdc train: error: SIGINT again: stopping now; --resume latest continues from the last "
                  "checkpoint", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self._flag = True

    SYNC_EVERY = 10

    def requested(self, accelerator, step: int) -> bool:
        """True once SIGTERM/SIGINT reached any rank (on several ranks: a collective, every
        ``SYNC_EVERY`` steps; the same steps on every rank, so none waits for another)."""
        if accelerator.num_processes == 1:
            return self._flag
        if step % self.SYNC_EVERY:
            return False
        flag = torch.tensor([1.0 if self._flag else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


class DataWatchdog:
    """Ends the process when the loader delivers no batch for ``timeout_s`` seconds.

    A stalled mount or object store would otherwise hang a run forever, deaf to its step-boundary
    signal handling. Call ``fed`` after every batch; 0 disables the watchdog.
    """

    def __init__(self, timeout_s: float, what: str) -> None:
        self.timeout_s, self.what = timeout_s, what
        self._last = time.monotonic()
        self._done = threading.Event()
        if timeout_s > 0:
            threading.Thread(target=self._watch, name="data-watchdog", daemon=True).start()

    def fed(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(min(self.timeout_s, 5.0)):
            if time.monotonic() - self._last > self.timeout_s:
                print(f"cdc train: error: {self.what}: no training batch for {self.timeout_s:g} s "
                      "(train.data_timeout_s); --resume latest continues from the last checkpoint",
                      file=sys.stderr, flush=True)
                os._exit(3)
