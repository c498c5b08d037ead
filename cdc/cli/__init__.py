"""The ``cdc`` command line (also ``python -m cdc``): the outermost layer, which may import every other
package of ``cdc`` (lazily, so that light commands stay light) and nothing of ``pipelines``.

Subcommands::

    cdc init --preset tiny|small|paper -o MODEL        an untrained codec checkpoint
    cdc compress IMG... -m MODEL -o OUT                 images -> .cdc files
    cdc decompress FILE.cdc... -m MODEL -o OUT          .cdc files -> PNG
    cdc info FILE.cdc...                                header as JSON (no model needed)
    cdc models list                                     registered models (MLflow registry)
    cdc eval | plot | bdrate                            evaluation harness (see cdc/cli/eval_commands.py)
    cdc serve -m MODEL [-p 5001]                        the codec over HTTP (MLflow scoring server)

MODEL is a checkpoint path, ``models:/NAME@ALIAS`` or ``best:bpp<=0.2,objective=perception``.

Every failure prints one line ``cdc: error: <file>: <problem>`` and the exit status is non-zero;
other files in the same call are still processed, and no partial output file is left behind.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from cdc.allocator import keep_freed_memory
from cdc.cli.common import EXIT_FAILED, CLIError, say


def build_parser() -> argparse.ArgumentParser:
    """The ``cdc`` argument parser with every subcommand."""
    from cdc.cli import codec_commands, eval_commands, serve_commands

    parser = argparse.ArgumentParser(prog="cdc", description="Conditional-diffusion image codec.")
    sub = parser.add_subparsers(dest="command", required=True)
    codec_commands.add_commands(sub)
    eval_commands.add_commands(sub)
    serve_commands.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cdc`` console script; returns the exit status."""
    keep_freed_memory()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as exc:
        say("error", str(exc))
        return EXIT_FAILED
    except BrokenPipeError:  # `cdc info f.cdc | head -1`: the reader left; no traceback, no second error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except KeyboardInterrupt:
        say("error", "interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
