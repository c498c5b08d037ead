"""What every ``cdc`` subcommand shares: the one-line error, output-path rules, model loading."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CLIError(Exception):
    """A fatal, user-facing error (printed as one line)."""


def say(kind: str, message: str) -> None:
    """Print ``cdc: <kind>: <message>`` on stderr (one line)."""
    from tqdm import tqdm

    tqdm.write(f"cdc: {kind}: {message}", file=sys.stderr)  # does not tear an active progress bar


def load_coder(ref: str, device: str = "cpu", compile: bool = False):
    """A ``Coder`` for a model reference on ``device`` (``auto``: CUDA when available), its U-Net
    compiled for decoding when asked; failures become a one-line ``CLIError``."""
    path = resolve(ref)  # a registry that is down or a wrong name fails here, before PyTorch loads
    import torch

    from cdc.coding.coder import Coder
    from cdc.zoo.checkpoint import CheckpointError, load_codec

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError as exc:
        raise CLIError(f"--device {device}: {exc}") from None
    if kind not in ("cpu", "cuda"):
        raise CLIError(f"--device {device}: not supported (cpu, cuda, cuda:N or auto)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {device}: no CUDA device on this machine")
    try:
        return Coder(load_codec(path, device).compile_decoder(compile))
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None


def resolve(ref: str) -> Path:
    """``cdc.registry.resolve.resolve_model`` with its error as a ``CLIError``."""
    from cdc.registry.resolve import ModelNotFoundError, resolve_model

    try:
        return resolve_model(ref)
    except ModelNotFoundError as exc:
        raise CLIError(str(exc)) from None


def output_paths(inputs: list[str], out: str, suffix: str) -> list[Path]:
    """Output paths: OUT itself for one input with the right suffix, else OUT/<stem><suffix>."""
    target = Path(out)
    if len(inputs) == 1 and target.suffix == suffix and not target.is_dir():
        return [target]
    if target.suffix and not target.is_dir():
        raise CLIError(f"{out}: an output file must end in {suffix} (one input), otherwise give a directory")
    if target.exists() and not target.is_dir():
        raise CLIError(f"{out}: exists and is not a directory (give a directory, or one input and a {suffix} name)")
    names = [Path(p).stem + suffix for p in inputs]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise CLIError(f"inputs would overwrite each other in {out}: {', '.join(sorted(duplicates))}")
    return [target / n for n in names]


def refuse_existing(path: Path, overwrite: bool) -> None:
    """Never replace a file the user did not name for replacement (e.g. the original photo)."""
    if path.exists() and not overwrite:
        raise CLIError(f"{path}: exists; pass --overwrite to replace it")


def for_each(items: list[str], work: Callable[[int, str], None], label: str) -> int:
    """Run ``work(i, item)`` for every item; a failing item prints its one line and the rest go on."""
    from tqdm import tqdm

    failed = 0
    for i, item in enumerate(tqdm(items, desc=label, unit="file", disable=True if len(items) < 2 else None,
                                file=sys.stderr)):
        try:
            work(i, item)
        except CLIError as exc:
            say("error", str(exc))
            failed += 1
        except OSError as exc:  # e.g. an unwritable, missing or clashing output path: one line, next file
            say("error", f"{exc.filename or item}: {exc.strerror or exc}")
            failed += 1
    return EXIT_FAILED if failed else EXIT_OK
