"""A training run's output directory: where its checkpoints are, and when it may be written.

Light on purpose (no PyTorch): ``python -m cdc.train`` runs these checks before it loads the
trainer, so a run pointed at the wrong directory is refused in about a second, not after the
seconds PyTorch, compressai and accelerate take to import.
"""

from __future__ import annotations

from pathlib import Path

from cdc.zoo.layout import CONFIG_NAME, WEIGHTS_NAME, CheckpointError

CHECKPOINTS = "checkpoints"
META = "meta.json"


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints under ``output_dir/checkpoints``, newest first (``step-N`` with ``meta.json``)."""
    root = output_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    dirs = [d for d in root.glob("step-*") if d.is_dir() and (d / META).is_file() and not d.name.endswith(".tmp")]
    return sorted(dirs, key=lambda d: int(d.name.split("-")[1]), reverse=True)


def check_output_dir(out: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse an output directory that holds an exported model, unless this run resumes the run that
    made it (``--resume`` with its checkpoints there) or ``--overwrite`` is given.

    Raises:
        CheckpointError: ``out`` holds ``config.json`` or ``model.safetensors`` and neither applies.
    """
    exported = (out / CONFIG_NAME).is_file() or (out / WEIGHTS_NAME).is_file()
    if exported and not overwrite and not (resume and checkpoint_dirs(out)):
        raise CheckpointError(f"{out}: holds an exported model; pass --overwrite to replace it "
                              "(or --resume latest to continue the run that made it)")
